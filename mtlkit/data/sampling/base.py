"""The task-sampling contract: how often each task is drawn."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from mtlkit.errors import ConfigError


class SamplingStrategy(ABC):
    """Gives the probability of drawing each task at a point of training."""

    @abstractmethod
    def probabilities(self, sizes: Sequence[int], progress: float) -> np.ndarray:
        """Task probabilities.

        Args:
            sizes: Number of training examples per task.
            progress: Fraction of training done, in ``[0, 1]`` (only annealed schedules use it).
        """


def temperature_probabilities(
    sizes: Sequence[int], temperature: float, size_cap: int | None = None
) -> np.ndarray:
    """``p_i ∝ min(n_i, cap)^(1/T)``; ``T = inf`` gives uniform sampling."""
    n = np.asarray(sizes, dtype=np.float64)
    if size_cap is not None:
        n = np.minimum(n, size_cap)
    alpha = 0.0 if np.isinf(temperature) else 1.0 / temperature
    weights = n**alpha
    return weights / weights.sum()


def check_size_cap(size_cap: int | None) -> None:
    """A size cap is unset or a positive number of examples."""
    if size_cap is not None and (isinstance(size_cap, bool) or not size_cap >= 1):
        raise ConfigError(f"size_cap must be >= 1 (or unset), got {size_cap!r}")
