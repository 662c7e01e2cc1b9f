"""Annealed task sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtlkit.data.sampling.base import (
    SamplingStrategy,
    check_size_cap,
    temperature_probabilities,
)
from mtlkit.errors import ConfigError


class Annealed(SamplingStrategy):
    """Temperature sampling whose exponent moves linearly over training.

    Stickland & Murray (2019, "BERT and PALs") sample ``p_i ∝ n_i^alpha`` with
    ``alpha = 1 - 0.8 (e - 1) / (E - 1)``: proportional at the start, closer to uniform at the
    end. Here ``alpha = 1/T`` goes linearly from ``1/start_temperature`` to ``1/end_temperature``
    with the fraction of training done, so the defaults (1 -> 5) reproduce that schedule.

    Args:
        start_temperature: Temperature at the first step.
        end_temperature: Temperature at the last step.
        size_cap: Optional per-task size cap.
    """

    def __init__(
        self,
        start_temperature: float = 1.0,
        end_temperature: float = 5.0,
        size_cap: int | None = None,
    ) -> None:
        if not (start_temperature > 0 and end_temperature > 0):  # NaN compares False
            raise ConfigError(
                "annealed sampling temperatures must be > 0, got "
                f"{start_temperature} and {end_temperature}"
            )
        check_size_cap(size_cap)
        self.start_temperature = start_temperature
        self.end_temperature = end_temperature
        self.size_cap = size_cap

    def temperature_at(self, progress: float) -> float:
        """The temperature at a fraction of training."""
        progress = min(max(progress, 0.0), 1.0)
        a0, a1 = 1.0 / self.start_temperature, 1.0 / self.end_temperature
        return 1.0 / (a0 + (a1 - a0) * progress)

    def probabilities(self, sizes: Sequence[int], progress: float) -> np.ndarray:
        return temperature_probabilities(sizes, self.temperature_at(progress), self.size_cap)
