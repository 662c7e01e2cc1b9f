"""Static weighting: fixed, hand-chosen task weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting


class StaticWeighting(Weighting):
    """``L = sum_i w_i L_i`` with fixed weights ``w_i``.

    Args:
        weights: Task name to weight. Tasks not listed get ``default``.
        default: Weight of tasks not in ``weights``.
    """

    def __init__(self, weights: dict[str, float], default: float = 1.0) -> None:
        super().__init__()
        bad = {t: w for t, w in {**weights, "(default)": default}.items() if not math.isfinite(w)}
        if bad:
            raise ConfigError(f"static task weights must be finite numbers, got {bad}")
        if any(w < 0 for w in weights.values()) or default < 0:
            raise ConfigError(f"static task weights must be >= 0, got {weights}")
        self.weights = dict(weights)
        self.default = default

    def setup(self, task_names: Sequence[str]) -> None:
        unknown = sorted(set(self.weights) - set(task_names))
        if unknown:
            raise ConfigError(f"StaticWeighting names unknown tasks {unknown}; tasks: {task_names}")
        super().setup(task_names)
        values = [self.weights.get(t, self.default) for t in task_names]
        self.register_buffer("task_weights", torch.tensor(values, dtype=torch.float32))

    def forward(self, losses: Mapping[str, Tensor], ctx: StepContext) -> WeightedLoss:
        index = {t: i for i, t in enumerate(self.task_names)}
        weights = {t: self.task_weights[index[t]] for t in losses}
        return WeightedLoss(self.weighted_sum(losses, weights), weights)
