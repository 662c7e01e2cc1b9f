"""FAMO: weights that make all task losses decrease at the same rate, in O(1) per step."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting


class FAMO(Weighting):
    """Fast Adaptive Multitask Optimization (Liu, Liu, Jin, Stone & Liu, NeurIPS 2023).

    With task logits ``xi``, ``z = softmax(xi)`` and ``D_i = L_i - min_i + eps``, the model
    minimises ``sum_i z_i log D_i / c`` with ``c = sum_j z_j / D_j`` held constant (Algorithm 1
    and the official code). Its gradient is ``sum_i w_i grad L_i`` with
    ``w_i = (z_i / D_i) / c``, so this module returns ``sum_i w_i L_i`` with ``w_i`` detached:
    the same gradient, a loss value on the scale of the task losses, and weights summing to 1.

    The logits are updated by their own Adam (``lr``, L2 ``weight_decay`` as ``torch.optim.Adam``)
    on the gradient ``J_softmax(xi)^T delta`` with ``delta_i = log D_i(prev) - log D_i(curr)``; a
    task whose loss fell faster loses weight. The paper computes ``D(curr)`` with an extra
    forward pass on the same batch after the model update; to avoid that pass, the update for
    step ``t-1`` runs at the start of step ``t`` with the losses of step ``t``'s batch (a noisier
    estimate of the same rate, applied with the same timing: step ``t`` uses the updated logits).
    Only tasks present in both steps take part in an update, and Adam's moments and step counts
    are kept per task. Logits and Adam state are buffers: checkpointed, and outside the model's
    optimizer.

    Args:
        lr: Learning rate of the logits (0.025 in the paper).
        weight_decay: Weight decay ``gamma`` of the logits (1e-3 here and in the official QM9
            run; the official code's default is 1e-2).
        betas: Adam's betas for the logits.
        min_losses: Known lower bounds of task losses (default 0).
        eps: Added to ``L_i - min_i`` before the log and the division.
    """

    needs_all_tasks = True
    logits: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_steps: Tensor
    min_losses: Tensor
    prev_log_losses: Tensor
    prev_present: Tensor

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        min_losses: Mapping[str, float] | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.min_loss_values, self.eps = dict(min_losses or {}), eps

    def setup(self, task_names: Sequence[str]) -> None:
        unknown = sorted(set(self.min_loss_values) - set(task_names))
        if unknown:
            raise ConfigError(f"FAMO min_losses names unknown tasks {unknown}; tasks: {task_names}")
        super().setup(task_names)
        n = len(task_names)
        mins = [float(self.min_loss_values.get(t, 0.0)) for t in task_names]
        for name in ("logits", "exp_avg", "exp_avg_sq", "adam_steps", "prev_log_losses"):
            self.register_buffer(name, torch.zeros(n))
        self.register_buffer("min_losses", torch.tensor(mins))
        self.register_buffer("prev_present", torch.zeros(n, dtype=torch.bool))

    @torch.no_grad()
    def _update_logits(self, log_losses: Tensor, present: Tensor) -> None:
        both = self.prev_present & present
        if int(both.sum()) < 2:
            return
        delta = torch.where(both, self.prev_log_losses - log_losses, 0.0)
        z = torch.softmax(self.logits.masked_fill(~both, float("-inf")), dim=0)
        grad = z * (delta - (z * delta).sum()) + self.weight_decay * self.logits
        beta1, beta2 = self.betas
        self.adam_steps += both.float()
        exp_avg = beta1 * self.exp_avg + (1 - beta1) * grad
        exp_avg_sq = beta2 * self.exp_avg_sq + (1 - beta2) * grad.square()
        steps = self.adam_steps.clamp_min(1)  # 1 - beta^t, accurate in float32
        correction1 = -torch.expm1(steps * math.log(beta1))
        correction2 = -torch.expm1(steps * math.log(beta2))
        denom = (exp_avg_sq / correction2).sqrt() + 1e-8
        logits = self.logits - self.lr * (exp_avg / correction1) / denom
        self.exp_avg.copy_(torch.where(both, exp_avg, self.exp_avg))
        self.exp_avg_sq.copy_(torch.where(both, exp_avg_sq, self.exp_avg_sq))
        self.logits.copy_(torch.where(both, logits, self.logits))

    def forward(self, losses: Mapping[str, Tensor], ctx: StepContext) -> WeightedLoss:
        index = torch.tensor([self.task_names.index(t) for t in losses], device=self.logits.device)
        present = torch.zeros_like(self.prev_present).index_fill(0, index, True)
        values = torch.ones_like(self.logits).index_copy(
            0, index, torch.stack([loss.detach().float() for loss in losses.values()])
        )
        gap = (values - self.min_losses).clamp_min(0) + self.eps
        self._update_logits(gap.log(), present)
        self.prev_log_losses.copy_(gap.log())
        self.prev_present.copy_(present)
        scores = torch.softmax(self.logits[index], dim=0) / gap[index]
        weights = dict(zip(losses, (scores / scores.sum()).unbind(), strict=True))
        return WeightedLoss(self.weighted_sum(losses, weights), weights)
