"""GradNorm: learnable task weights that balance per-task gradient norms on a shared layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting
from mtlkit.weighting.layers import select_shared_layer

_MIN_WEIGHT = 1e-4  # floor before renormalising: a weight never turns negative
_BETAS, _EPS = (0.9, 0.999), 1e-8


class GradNorm(Weighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018, arXiv:1711.02257).

    With ``W`` the chosen shared layer, ``T`` the number of tasks present in the step:

    * ``G_i = || grad_W (w_i L_i) ||_2 = w_i || grad_W L_i ||_2`` and ``Gbar = mean_j G_j``;
    * ``r_i = (L_i(t) / L_i(0)) / mean_j (L_j(t) / L_j(0))`` (inverse training rate);
    * ``L_grad = sum_i | G_i - Gbar * r_i ** alpha |``, the target held constant;
    * ``w <- w - lr * step(dL_grad / dw)``, then ``w <- w * T_all / sum(w)``.

    The returned objective is ``sum_i w_i L_i`` with the pre-update weights detached, so the
    model's backward is the ordinary one; the weights live in buffers and are updated inside
    :meth:`forward` by their own Adam (or SGD) step, never by the model's optimizer. As
    ``|| grad_W L_i ||`` does not depend on ``w``, it is taken without ``create_graph`` (no
    double backward): ``dL_grad/dw_i = ||grad_W L_i|| * sign(G_i - target_i)`` exactly.

    Only the tasks present in a step take part; ``L_i(0)`` is each task's loss at the first
    step it is seen. Norms and ratios are computed in float32; a step whose ``G_i`` or weight
    gradient is not finite (e.g. an fp16 overflow step the gradient scaler will skip) leaves
    the weights and optimizer state unchanged. The gradients ``grad_W L_i`` are taken through
    the step's :class:`~mtlkit.weighting.TaskGradients` (so the gradient diagnostics reuse them) of
    the losses times the fp16 gradient scaler's scale, unscaled in float32. Under DDP, buffers are
    broadcast from rank 0 before each forward, so every rank uses rank 0's weights.

    Args:
        alpha: Restoring-force strength (the paper's asymmetry ``alpha``).
        lr: Learning rate of the task weights.
        shared_layer: Substring or regular expression (``re.search``) selecting ``W`` among
            the encoder's parameter names, e.g. ``layer.11.output.dense.weight``. Default: the
            last 2-D parameter whose name contains neither ``pooler`` (mtlkit never uses the
            pooler) nor ``embed`` (BERT: ``model.encoder.layer.<last>.output.dense.weight``).
        optimizer: ``adam`` (scale free; default) or ``sgd`` for the task weights.
    """

    needs_all_tasks: ClassVar[bool] = True

    def __init__(
        self,
        alpha: float = 1.5,
        lr: float = 0.025,
        shared_layer: str | None = None,
        optimizer: Literal["adam", "sgd"] = "adam",
    ) -> None:
        super().__init__()
        if alpha < 0 or lr <= 0:
            raise ConfigError(f"GradNorm needs alpha >= 0 and lr > 0, got {alpha=}, {lr=}")
        if optimizer not in ("adam", "sgd"):
            raise ConfigError(f"GradNorm optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.alpha, self.lr, self.shared_layer, self.optimizer = alpha, lr, shared_layer, optimizer

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        n = len(self.task_names)
        self.register_buffer("task_weights", torch.ones(n))
        self.register_buffer("initial_losses", torch.zeros(n))
        self.register_buffer("has_initial", torch.zeros(n, dtype=torch.bool))
        for name in ("exp_avg", "exp_avg_sq", "opt_steps"):
            self.register_buffer(name, torch.zeros(n))

    def parameter_groups(self) -> list[dict]:
        return []  # the weights follow their own update rule, not the model's optimizer

    def select_parameters(self, named: Sequence[tuple[str, nn.Parameter]]) -> list[tuple]:
        """The shared layer ``W``: parameters chosen by ``shared_layer`` or the default rule."""
        return select_shared_layer(named, self.shared_layer, "GradNorm")

    def forward(self, losses: Mapping[str, Tensor], ctx: StepContext) -> WeightedLoss:
        index = {t: i for i, t in enumerate(self.task_names)}
        present = list(losses)
        idx = torch.tensor([index[t] for t in present], device=self.task_weights.device)
        values = torch.stack([losses[t].detach().float() for t in present]).to(idx.device)
        new = ~self.has_initial[idx]
        self.initial_losses[idx[new]] = values[new]
        self.has_initial[idx] = True
        w_now = self.task_weights.clone()
        weights = {t: w_now[index[t]] for t in present}
        combined = self.weighted_sum(
            losses, {t: w.to(losses[t].device) for t, w in weights.items()}
        )
        if len(present) > 1 and any(loss.requires_grad for loss in losses.values()):
            self._update(losses, ctx, idx, values)
        return WeightedLoss(combined, weights)

    def _update(
        self, losses: Mapping[str, Tensor], ctx: StepContext, idx: Tensor, values: Tensor
    ) -> None:
        names, params = zip(*self.select_parameters(ctx.named_shared_parameters()), strict=True)
        # Same shape on every process (zero rows for tasks absent here), then averaged: the norms
        # are those of the global batch's gradients under DDP.
        rows = ctx.gradients.of_parameters(losses, list(params), self.task_names, ctx.loss_scale)
        for task, loss in losses.items():
            unused = [
                n for n, p in zip(names, params, strict=True) if ctx.gradients.is_unused(task, p)
            ]
            if loss.requires_grad and unused:
                raise ConfigError(f"GradNorm layer {unused} gets no gradient from task {task!r}")
        full = ctx.all_reduce_mean(rows)
        norms = full[idx.to(full.device)].norm(dim=1).to(idx.device)
        with torch.enable_grad():
            w = self.task_weights[idx].detach().requires_grad_()
            g_norm = w * norms  # G_i = || grad_W (w_i L_i) ||
            ratio = values / self.initial_losses[idx]
            target = (g_norm.mean() * (ratio / ratio.mean()).pow(self.alpha)).detach()
            (grad,) = torch.autograd.grad((g_norm - target).abs().sum(), w)
        if not (torch.isfinite(norms).all() and torch.isfinite(grad).all()):
            return  # skipped step: weights and optimizer state unchanged
        if self.optimizer == "sgd":
            step = grad
        else:
            b1, b2 = _BETAS
            self.opt_steps[idx] += 1
            self.exp_avg[idx] = b1 * self.exp_avg[idx] + (1 - b1) * grad
            self.exp_avg_sq[idx] = b2 * self.exp_avg_sq[idx] + (1 - b2) * grad**2
            m_hat = self.exp_avg[idx] / (1 - b1 ** self.opt_steps[idx])
            v_hat = self.exp_avg_sq[idx] / (1 - b2 ** self.opt_steps[idx])
            step = m_hat / (v_hat.sqrt() + _EPS)
        updated = (self.task_weights[idx] - self.lr * step).clamp_min(_MIN_WEIGHT)
        self.task_weights[idx] = updated
        self.task_weights.mul_(len(self.task_names) / self.task_weights.sum())
