"""Random loss weighting: fresh random task weights in every step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting


class RandomLossWeighting(Weighting):
    """Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022; arXiv:2111.10603).

    Every step draws ``lambda ~ N(0, I_T)`` and weights the tasks with ``softmax(lambda)``, the
    normal-distribution variant of the paper and LibMTL, whose weights sum to 1. The plain sum of
    ``EqualWeighting`` has weights summing to ``T``; ``scale_to_num_tasks=True`` multiplies by
    ``T`` so the two share a learning rate. Weights are drawn for all tasks and the present
    tasks' entries are used.

    The draws come from the module's own CPU generator, whose state is part of ``state_dict``
    (extra state), so a resumed run continues the same sequence. Every rank of a distributed run
    seeded alike draws the same weights.

    Args:
        seed: Seed of the generator (default: ``torch.initial_seed()``, so a run seeded with
            ``seed_everything`` is reproducible).
        scale_to_num_tasks: Multiply the weights by the number of tasks (sum ``T`` instead of 1).
    """

    needs_all_tasks = True

    def __init__(self, seed: int | None = None, scale_to_num_tasks: bool = False) -> None:
        super().__init__()
        self.seed, self.scale_to_num_tasks = seed, scale_to_num_tasks
        self.generator = torch.Generator()
        self.generator.manual_seed(torch.initial_seed() if seed is None else seed)

    def forward(self, losses: Mapping[str, Tensor], ctx: StepContext) -> WeightedLoss:
        draw = torch.randn(len(self.task_names), generator=self.generator)
        all_weights = torch.softmax(draw, dim=0)
        if self.scale_to_num_tasks:
            all_weights = all_weights * len(self.task_names)
        device = next(iter(losses.values())).device
        index = [self.task_names.index(t) for t in losses]
        weights = dict(zip(losses, all_weights[index].to(device).unbind(), strict=True))
        return WeightedLoss(self.weighted_sum(losses, weights), weights)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
