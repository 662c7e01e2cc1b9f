"""Examples-proportional task sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtlkit.data.sampling.base import (
    SamplingStrategy,
    check_size_cap,
    temperature_probabilities,
)


class Proportional(SamplingStrategy):
    """``p_i ∝ min(n_i, cap)``: every example equally likely (T5's examples-proportional mixing).

    Args:
        size_cap: Optional artificial dataset size limit ``K`` (Raffel et al. 2020).
    """

    def __init__(self, size_cap: int | None = None) -> None:
        check_size_cap(size_cap)
        self.size_cap = size_cap

    def probabilities(self, sizes: Sequence[int], progress: float) -> np.ndarray:
        return temperature_probabilities(sizes, 1.0, self.size_cap)
