"""Per-task losses under DDP: every process ends up with the global batch's mean losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def global_mean_losses(
    losses: dict[str, Tensor], counts: dict[str, float], task_names: list[str], strategy: Any
) -> dict[str, Tensor]:
    """Rescales each process's per-task mean loss so that DDP's gradient average equals the
    gradient of the mean over the *global* batch, even when processes hold different numbers of
    a task's examples (mixed batches).

    Args:
        losses: This process's mean loss per present task.
        counts: How many targets each of those losses averages over (``Task.loss_count``).
        task_names: Every task, in the same order on every process.
        strategy: Lightning's strategy (its ``reduce`` all-reduces across processes).

    Returns:
        A loss per task present on any process. Averaged over processes, each present task's
        gradient is the global-batch mean's; a task present only on other processes enters as a
        constant with the global value, so every process hands the weighting method the same
        tasks and values, and stateful methods (DWA, FAMO, GradNorm, ...) stay in step.
    """
    device = next(iter(losses.values())).device
    world = strategy.world_size
    local = torch.tensor([counts.get(t, 0.0) for t in task_names], device=device)
    totals = strategy.reduce(local.clone(), reduce_op="sum")
    factor = local * world / totals.clamp_min(1.0)
    index = {t: i for i, t in enumerate(task_names)}
    scaled = {t: loss * factor[index[t]] for t, loss in losses.items()}
    values = torch.zeros(len(task_names), device=device)
    for t, loss in scaled.items():
        values[index[t]] = loss.detach().float()
    values = strategy.reduce(values, reduce_op="mean")
    out = {}
    for t, i in index.items():
        if t in scaled:
            # the global value, with this process's (rescaled) gradient
            out[t] = scaled[t] - scaled[t].detach() + values[i].to(scaled[t].dtype)
        elif totals[i] > 0:
            out[t] = values[i]
    return out
