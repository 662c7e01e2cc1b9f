"""Optimizer and learning-rate schedule defaults (each overridable from the config)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR


def adamw(params: Iterable[Any]) -> Optimizer:
    """AdamW with the usual fine-tuning defaults (lr 5e-5, weight decay 0.01)."""
    return AdamW(params, lr=5e-5, weight_decay=0.01)


class LinearWarmupDecay(LambdaLR):
    """Linear warm-up to the base learning rate, then linear decay (BERT's schedule).

    Args:
        optimizer: The optimizer.
        total_steps: Number of optimisation steps of the run (filled in by the model).
        warmup: Warm-up length: a fraction of ``total_steps`` if < 1, else a number of steps.
        final_fraction: Learning rate at the end, as a fraction of the base rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup: float = 0.06,
        final_fraction: float = 0.0,
    ) -> None:
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup * self.total_steps) if warmup < 1 else int(warmup)
        self.final_fraction = final_fraction
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(self.total_steps - self.warmup_steps, 1)
        done = min((step - self.warmup_steps) / span, 1.0)
        return 1.0 - (1.0 - self.final_fraction) * done


class ConstantWithWarmup(LinearWarmupDecay):
    """Linear warm-up, then a constant learning rate."""

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup: float = 0.06) -> None:
        super().__init__(optimizer, total_steps, warmup, final_fraction=1.0)
