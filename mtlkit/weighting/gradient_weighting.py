"""Gradient-level methods (PCGrad, CAGrad, MGDA, ...) behind the loss-weighting interface."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.weighting.autogram import AutogramGramian
from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting
from mtlkit.weighting.gradient.base import (
    AggregatedGradient,
    GradientAggregator,
    GramianAggregator,
    WorksOn,
)
from mtlkit.weighting.one_pass import OnePassGramian, precomputed_loss


class GradientWeighting(Weighting):
    """Runs a gradient aggregator and back-propagates the loss combination it implies.

    Every aggregator returns the weights ``w`` of its update ``sum_t w_t g_t``, so
    back-propagating ``sum_t w_t L_t`` (weights detached) gives the shared parameters exactly the
    aggregated direction (never formed here), and the model keeps Lightning's automatic
    optimisation, gradient scaling and DDP.

    Per-task gradients are taken of ``L_t * ctx.loss_scale`` (the fp16 gradient scaler's scale,
    1 otherwise, so small gradients do not underflow) and unscaled in float32 before any
    arithmetic. If any is non-finite (an fp16 overflow step), the aggregator is not called, its
    state is left as it was, and the step falls back to equal weights.

    ``aggregator.works_on`` picks the gradients: ``"parameters"`` takes one backward pass per
    task through the encoder; ``"representation"`` takes the gradient of each task's loss with
    respect to its own shared representation (the head input), summed over the task's examples
    and tokens, which costs only a pass through the heads (MGDA-UB, Sener & Koltun 2018).

    ``head_gradients`` says what the task heads (the task-specific parameters) receive:

    - ``"unweighted"`` (default, as LibMTL's ``AbsWeighting.backward`` and torchjd's
      ``mtl_backward``): each head gets the plain gradient of its own loss, ``grad L_t``; only
      the shared encoder gets the aggregated direction. Implemented by back-propagating
      ``sum_t L_t`` with a hook on each task's head input that multiplies the gradient flowing
      into the encoder by ``w_t``, so the encoder still receives exactly ``sum_t w_t g_t``.
    - ``"weighted"``: the heads get ``w_t grad L_t`` too (back-propagating ``sum_t w_t L_t``
      through the whole model). With weights of very different size (MGDA's, Nash-MTL's) this
      also changes each head's effective learning rate.

    Args:
        aggregator: The gradient aggregation method.
        works_on: ``"parameters"`` or ``"representation"``; default: the aggregator's own
            (parameters for all but ``MGDAUB``). On the representation every method costs about
            one extra pass through the heads instead of one backward pass per task.
        head_gradients: ``"unweighted"`` or ``"weighted"``, see above.
        gramian: ``"explicit"`` (default): the Gramian ``G G^T`` of the ``[T, P]`` per-task
            gradients. ``"one_pass"``: every task's parameter gradient from one backward pass
            (:mod:`mtlkit.weighting.one_pass`: in a mixed batch a task's loss reads only its
            own rows of the encoder's batch), the Gramian accumulated module by module; for
            encoders whose trainable parameters sit in ``nn.Linear``, ``nn.LayerNorm`` and
            ``nn.Embedding`` (BERT-style models, not LoRA or adapters). ``"autogram"``:
            straight from the task losses by torchjd's autogram engine
            (:mod:`mtlkit.weighting.autogram`; one backward pass per task, vectorised).
            Both need a Gramian-based aggregator on the parameters, a single process and an
            encoder that runs once per step; their first step (and one after the trainable set
            changes) is explicit. Measured in ``benchmarks/weighting_overhead.py --gramian``.
    """

    needs_all_tasks = True

    def __init__(
        self,
        aggregator: GradientAggregator,
        works_on: WorksOn | None = None,
        head_gradients: Literal["unweighted", "weighted"] = "unweighted",
        gramian: Literal["explicit", "one_pass", "autogram"] = "explicit",
    ) -> None:
        super().__init__()
        if works_on not in (None, "parameters", "representation"):
            raise ConfigError(
                f"works_on must be 'parameters' or 'representation', got {works_on!r}"
            )
        if head_gradients not in ("unweighted", "weighted"):
            raise ConfigError(
                f"head_gradients must be 'unweighted' or 'weighted', got {head_gradients!r}"
            )
        self.aggregator = aggregator
        self.works_on: WorksOn = works_on or aggregator.works_on
        self.head_gradients = head_gradients
        if gramian not in ("explicit", "one_pass", "autogram"):
            raise ConfigError(
                f"gramian must be 'explicit', 'one_pass' or 'autogram', got {gramian!r}"
            )
        if gramian != "explicit" and (
            not isinstance(aggregator, GramianAggregator) or self.works_on != "parameters"
        ):
            raise ConfigError(
                f"gramian={gramian!r} needs a Gramian-based aggregator (all but NashMTL) "
                "working on the parameters"
            )
        self.gramian = gramian
        self._fast = False  # this step's update was taken by the one-pass engine
        self._engine: AutogramGramian | OnePassGramian | None = (
            AutogramGramian()
            if gramian == "autogram"
            else OnePassGramian()
            if gramian == "one_pass"
            else None
        )

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        self.aggregator.setup(task_names)

    def forward(self, losses: Mapping[str, Tensor], ctx: StepContext) -> WeightedLoss:
        device = next(iter(losses.values())).device
        ones = {t: torch.ones((), device=device) for t in losses}
        result = self._aggregate(losses, ctx) if torch.is_grad_enabled() else None
        if result is None:
            return WeightedLoss(self.weighted_sum(losses, ones), ones)
        weights = {t: w.to(device) for t, w in result.weights_by_task.items() if t in losses}
        if self.head_gradients == "weighted":
            return WeightedLoss(self.weighted_sum(losses, weights), weights)
        if isinstance(self._engine, OnePassGramian) and self._fast and self._engine.has_gradients:
            # The update is taken already (no second backward pass through the encoder).
            value = self.weighted_sum(losses, ones)
            return WeightedLoss(precomputed_loss(value, self._engine.gradients(weights)), weights)
        self._hook_head_inputs(weights, ctx)
        return WeightedLoss(self.weighted_sum(losses, ones), weights)

    def _aggregate(
        self, losses: Mapping[str, Tensor], ctx: StepContext
    ) -> AggregatedGradient | None:
        """The aggregator's weights for the tasks present on any process, or None (equal
        weights) with fewer than two tasks or non-finite gradients (an fp16 overflow step)."""
        device = next(iter(losses.values())).device
        # One row per task of the model (zeros where absent), so every process all-reduces the
        # same shapes even when a task is missing from its part of the batch.
        present = torch.tensor(
            [float(t in losses and losses[t].requires_grad) for t in self.task_names],
            device=device,
        )
        values = torch.stack(
            [
                losses[t].detach().float() if t in losses else present.new_zeros(())
                for t in self.task_names
            ]
        )
        # The model rescales each process's losses so that these means over processes are the
        # global batch's gradients and losses (absent tasks contribute zero rows).
        rows = ctx.all_reduce_mean(present) > 0
        gram = self._engine_gramian(losses, ctx) if self._engine is not None else None
        if gram is None:
            grads = ctx.all_reduce_mean(self.task_gradients(losses, ctx))[rows]
        values = ctx.all_reduce_mean(values)[rows]
        if int(rows.sum()) < 2 or not torch.isfinite(grads if gram is None else gram).all():
            return None
        names = [t for t, r in zip(self.task_names, rows.tolist(), strict=True) if r]
        if gram is None:
            return self.aggregator.aggregate(grads, values.cpu(), names)
        assert isinstance(self.aggregator, GramianAggregator)
        return self.aggregator.aggregate_gramian(gram, values.cpu(), names)

    @staticmethod
    def _hook_head_inputs(weights: Mapping[str, Tensor], ctx: StepContext) -> None:
        """``head_gradients="unweighted"``: the gradient flowing from each head into the encoder
        is multiplied by the task's weight."""
        # Under DDP a task may be in `losses` only as another process's constant (no head input
        # here): hooks go on this process's head inputs.
        local = [t for t in weights if t in ctx.representations]
        if len({id(ctx.representations[t]) for t in local}) < len(local):
            raise ConfigError(
                "head_gradients='unweighted' needs one head-input tensor per task (tasks share "
                "one): use head_gradients='weighted'"
            )
        for t in local:
            representation, w = ctx.representations[t], weights[t]
            if representation.requires_grad:
                representation.register_hook(lambda grad, w=w: grad * w.to(grad.dtype))

    def _engine_gramian(self, losses: Mapping[str, Tensor], ctx: StepContext) -> Tensor | None:
        """The present tasks' Gramian from the one-pass or autogram engine (None in the step
        that builds it, or with fewer than two local tasks: then the explicit path decides)."""
        self._fast = False
        probe = torch.zeros(1)
        if ctx.all_reduce_mean(probe) is not probe:
            raise ConfigError(
                f"gramian={self.gramian!r} is single-process: under DDP the Gramian of the "
                "global gradients is not the mean of the processes' Gramians; use "
                "gramian='explicit'"
            )
        if ctx.shared_module is None:
            raise ConfigError(f"gramian={self.gramian!r} needs the shared module (StepContext)")
        self._check_trainable(ctx)
        local = [t for t in self.task_names if t in losses and losses[t].requires_grad]
        if len(local) < 2:
            return None
        scale = float(ctx.loss_scale)
        if isinstance(self._engine, OnePassGramian):
            present = {t: losses[t] for t in local}
            # With unweighted heads the same backward pass gives the heads' gradients too
            # (when the step names them: otherwise its own backward pass runs as usual).
            fast = ctx.other_parameters is not None and self.head_gradients == "unweighted"
            others = ctx.other_parameters() if fast and ctx.other_parameters else []
            rows = ctx.encoder_rows
            gram = self._engine.gramian(present, ctx.shared_module, rows, scale, others)
            self._fast = fast and gram is not None
            return gram
        assert self._engine is not None
        vector = torch.stack([losses[t] for t in local])
        return self._engine.gramian(vector, ctx.shared_module, scale)

    def _check_trainable(self, ctx: StepContext) -> list[nn.Parameter]:
        representation = self.works_on == "representation"
        params = [] if representation else ctx.shared_parameters()
        frozen = (
            not any(r.requires_grad for r in ctx.representations.values())
            if representation
            else not params
        )
        if frozen:
            raise ConfigError(
                f"{type(self.aggregator).__name__} combines per-task gradients of the shared "
                "encoder, but no encoder parameter is trainable (FreezeEncoder, cached features): "
                "use a loss-level weighting method instead"
            )
        return params

    def task_gradients(self, losses: Mapping[str, Tensor], ctx: StepContext) -> Tensor:
        """``[T, P]`` float32 unscaled per-task gradients, zero rows for absent tasks, taken
        through the step's :class:`~mtlkit.weighting.TaskGradients` (``ctx.gradients``)."""
        params = self._check_trainable(ctx)
        representation = self.works_on == "representation"
        scale = float(ctx.loss_scale)
        if representation:
            return ctx.gradients.of_representations(
                losses, ctx.representations, self.task_names, scale
            )
        return ctx.gradients.of_parameters(losses, params, self.task_names, scale)
