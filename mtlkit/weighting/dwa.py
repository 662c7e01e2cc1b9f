"""Dynamic Weight Average: weights from the recent rate of change of each task's loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting


class DynamicWeightAverage(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019).

    ``w_i(t) = T * softmax_i(r_i(t-1) / temperature)`` with ``r_i(t-1) = L_i(t-1) / L_i(t-2)``,
    where ``T`` is the number of tasks and ``L_i(t)`` the average loss of task ``i`` over period
    ``t``; the first two periods use ``w_i = 1``. The paper's period is an epoch; here a period is
    a window of ``window_steps`` optimisation steps (``ctx.step // window_steps``), because epochs
    of large multi-task corpora are long and the method cannot see epoch boundaries. Setting
    ``window_steps`` to the optimisation steps per epoch reproduces the paper. The averages are
    taken over the training losses of the steps in the window (every call in the window, so also
    accumulated micro-batches); a task absent for a whole window keeps its previous average.

    Weights are computed for all tasks and the present tasks' entries are used. The loss history
    lives in buffers, so it is checkpointed.

    Args:
        temperature: Softmax temperature (2 in the paper).
        window_steps: Optimisation steps per averaging window.
    """

    needs_all_tasks = True
    history: Tensor
    completed: Tensor
    window_sum: Tensor
    window_count: Tensor
    window_index: Tensor

    def __init__(self, temperature: float = 2.0, window_steps: int = 100) -> None:
        super().__init__()
        if temperature <= 0 or window_steps < 1:
            raise ConfigError("DWA needs temperature > 0 and window_steps >= 1")
        self.temperature, self.window_steps = temperature, window_steps

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        n = len(task_names)
        self.register_buffer("history", torch.ones(2, n))  # window averages: [L(t-2), L(t-1)]
        self.register_buffer("completed", torch.zeros((), dtype=torch.long))
        self.register_buffer("window_sum", torch.zeros(n))
        self.register_buffer("window_count", torch.zeros(n))
        self.register_buffer("window_index", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _close_window(self) -> None:
        seen = self.window_count > 0
        average = self.window_sum / self.window_count.clamp_min(1)
        latest = torch.where(seen, average, self.history[1])
        self.history.copy_(torch.stack([self.history[1], latest]))
        self.completed += 1
        self.window_sum.zero_()
        self.window_count.zero_()

    def task_weights(self) -> Tensor:
        """Weights of all tasks for the current window, in ``task_names`` order."""
        if int(self.completed) < 2:
            return torch.ones_like(self.history[1])
        ratio = self.history[1] / self.history[0].clamp_min(1e-12)
        return len(self.task_names) * torch.softmax(ratio / self.temperature, dim=0)

    def forward(self, losses: Mapping[str, Tensor], ctx: StepContext) -> WeightedLoss:
        window = ctx.step // self.window_steps
        if window != int(self.window_index):
            if bool(self.window_count.any()):
                self._close_window()
            self.window_index.fill_(window)
        all_weights = self.task_weights()
        index = [self.task_names.index(t) for t in losses]
        values = torch.stack([loss.detach().float() for loss in losses.values()])
        self.window_sum[index] += values
        self.window_count[index] += 1
        weights = dict(zip(losses, all_weights[index].unbind(), strict=True))
        return WeightedLoss(self.weighted_sum(losses, weights), weights)
