"""The loss-weighting contract.

A weighting method turns the per-task losses of one training step into the objective that is
back-propagated. Methods differ in what they need; everything reaches them through one explicit
:class:`StepContext` argument, never as attributes injected by the trainer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlkit.weighting.task_gradients import TaskGradients


@dataclass
class StepContext:
    """What a weighting method may look at in one training step.

    Attributes:
        step: Global optimisation step (0-based).
        task_names: All task names of the model, in a fixed order.
        shared_parameters: Returns the shared (encoder) parameters that require grad.
        named_shared_parameters: The same with their names (``model.encoder.layer.5...``), for
            methods that work on one chosen shared layer (GradNorm).
        loss_scale: The fp16 gradient scaler's current scale (1 without one): methods that take
            gradients themselves scale the losses by it and unscale before any arithmetic.
        all_reduce_mean: Averages a tensor over the training processes (identity in a single
            process); every process must call it with tensors of the same shape.
        representations: Per-task shared representation (the encoder output the head receives),
            for methods that work on the representation (MGDA-UB, ...).
        shared_module: The shared encoder module (``gramian="autogram"`` and ``"one_pass"``
            hook it), or None.
        other_parameters: The trainable parameters outside the shared module (the task
            heads), for methods that take the step's whole gradient themselves
            (``gramian="one_pass"``); None (unknown) keeps the step's own backward pass.
        encoder_rows: Task -> its rows ``(start, stop)`` of the batch the shared module ran
            over in this step (``gramian="one_pass"``).
        gradients: The step's per-task gradients (:class:`TaskGradients`), taken at most once:
            methods ask it for their rows, and :class:`StepObserver` callbacks (the gradient
            diagnostics) read the same rows instead of taking them again.
    """

    step: int
    task_names: Sequence[str]
    shared_parameters: Callable[[], list[nn.Parameter]] = field(default=lambda: [])
    representations: Mapping[str, Tensor] = field(default_factory=dict)
    named_shared_parameters: Callable[[], list[tuple[str, nn.Parameter]]] = field(
        default=lambda: []
    )
    loss_scale: float = 1.0
    all_reduce_mean: Callable[[Tensor], Tensor] = field(default=lambda t: t)
    gradients: TaskGradients = field(default_factory=TaskGradients)
    shared_module: nn.Module | None = None
    encoder_rows: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    other_parameters: Callable[[], list[nn.Parameter]] | None = None


@dataclass
class WeightedLoss:
    """The combined objective and the weight each present task received."""

    loss: Tensor
    weights: dict[str, Tensor]


class StepObserver(ABC):
    """A callback that sees each training step's losses and context before its backward pass.

    The model calls :meth:`on_weighted_step` on every callback of the trainer that subclasses
    this, right after the weighting method has combined the losses (so the graph is alive and
    ``ctx.gradients`` holds whatever per-task gradients the method took). This is the only
    channel from the training step to such callbacks; nothing is stored on the model.
    """

    @abstractmethod
    def on_weighted_step(
        self, trainer: Any, losses: Mapping[str, Tensor], ctx: StepContext, result: WeightedLoss
    ) -> None:
        """Called once per (non-skipped) training step, before ``backward``."""


class Weighting(nn.Module, ABC):
    """Base class of loss-weighting methods.

    Learnable state (log-variances, weights, loss history) is registered on the module as
    parameters or buffers in :meth:`setup`, so it is checkpointed with the model and optimised by
    the model's optimizer.
    """

    #: True when the method needs the loss of every task in every step (``mixed`` batches).
    needs_all_tasks: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.task_names: list[str] = []

    def setup(self, task_names: Sequence[str]) -> None:
        """Called once by the model with the task names, before the optimizer is built."""
        self.task_names = list(task_names)

    @abstractmethod
    def forward(self, losses: Mapping[str, Tensor], ctx: StepContext) -> WeightedLoss:
        """Combines the losses of the tasks present in this step."""

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups of the method's learnable state (none by default).

        Methods with their own learning rate return ``[{"params": ..., "lr": ...}]``.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "name": "weighting"}] if params else []

    def weighted_sum(self, losses: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> Tensor:
        """``sum_i w_i L_i`` over the present tasks."""
        return torch.stack([weights[t] * losses[t] for t in losses]).sum()
