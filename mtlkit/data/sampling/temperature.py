"""Temperature-scaled task sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtlkit.data.sampling.base import (
    SamplingStrategy,
    check_size_cap,
    temperature_probabilities,
)
from mtlkit.errors import ConfigError


class Temperature(SamplingStrategy):
    """``p_i ∝ min(n_i, K)^(1/T)`` (Arivazhagan et al. 2019; Raffel et al. 2020).

    ``T = 1`` is proportional sampling, ``T -> inf`` uniform; values in between up-sample small
    tasks.

    Args:
        temperature: ``T >= 1`` (values in ``(0, 1)`` sharpen toward large tasks and are allowed).
        size_cap: Optional per-task size cap ``K`` applied before the temperature.
    """

    def __init__(self, temperature: float = 2.0, size_cap: int | None = None) -> None:
        if not temperature > 0:  # also refuses NaN, which compares False with everything
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        check_size_cap(size_cap)
        self.temperature = temperature
        self.size_cap = size_cap

    def probabilities(self, sizes: Sequence[int], progress: float) -> np.ndarray:
        return temperature_probabilities(sizes, self.temperature, self.size_cap)
