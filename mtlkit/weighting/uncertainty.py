"""Uncertainty weighting: task weights from learned homoscedastic noise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting


class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learns one log-variance ``s_i = log sigma_i^2`` per task and minimises, over the tasks present
    in the step, the per-task terms of the paper's joint likelihood:

    * regression tasks (Gaussian likelihood, eq. 7): ``0.5 * exp(-s_i) * L_i + 0.5 * s_i``, i.e.
      ``L_i / (2 sigma_i^2) + log sigma_i``;
    * all other tasks (scaled-softmax classification, eq. 10): ``exp(-s_i) * L_i + 0.5 * s_i``,
      i.e. ``L_i / sigma_i^2 + log sigma_i``.

    For fixed ``L_i`` the optimum is ``s_i* = log L_i`` (regression) and ``s_i* = log(2 L_i)``
    (classification); both give the effective weight ``1 / (2 L_i)``. The reported weights are the
    effective multipliers of ``L_i``: ``0.5 * exp(-s_i)`` or ``exp(-s_i)``. The ``s_i`` are
    parameters optimised by the model's optimizer (without weight decay); absent tasks' terms are
    left out, so homogeneous (one-task) batches work.

    Args:
        regression_tasks: Tasks that use the regression form; all others use the classification
            form.
        init: Initial log-variance of every task.
        lr: Learning rate of the log-variances (default: the optimizer's).
    """

    log_vars: nn.Parameter

    def __init__(
        self, regression_tasks: Sequence[str] = (), init: float = 0.0, lr: float | None = None
    ) -> None:
        super().__init__()
        self.regression_tasks = list(regression_tasks)
        self.init, self.lr = init, lr

    def setup(self, task_names: Sequence[str]) -> None:
        unknown = sorted(set(self.regression_tasks) - set(task_names))
        if unknown:
            raise ConfigError(
                f"UncertaintyWeighting names unknown regression tasks {unknown}; "
                f"tasks: {task_names}"
            )
        super().setup(task_names)
        self.log_vars = nn.Parameter(torch.full((len(task_names),), float(self.init)))
        scale = [0.5 if t in self.regression_tasks else 1.0 for t in task_names]
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, losses: Mapping[str, Tensor], ctx: StepContext) -> WeightedLoss:
        index = [self.task_names.index(t) for t in losses]
        s = self.log_vars[index].float()
        multipliers = self.scale[index] * torch.exp(-s)
        values = torch.stack([loss.float() for loss in losses.values()])
        loss = (multipliers * values).sum() + 0.5 * s.sum()
        weights = dict(zip(losses, multipliers.detach().unbind(), strict=True))
        return WeightedLoss(loss, weights)

    def parameter_groups(self) -> list[dict]:
        group: dict = {"params": [self.log_vars], "name": "weighting", "weight_decay": 0.0}
        if self.lr is not None:
            group["lr"] = self.lr
        return [group]
