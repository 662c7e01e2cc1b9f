"""Equal weighting: the plain sum of task losses."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting


class EqualWeighting(Weighting):
    """``L = sum_i L_i``: every task weighted 1 (the usual multi-task baseline)."""

    def forward(self, losses: Mapping[str, Tensor], ctx: StepContext) -> WeightedLoss:
        weights = {t: torch.ones((), device=loss.device) for t, loss in losses.items()}
        return WeightedLoss(self.weighted_sum(losses, weights), weights)
