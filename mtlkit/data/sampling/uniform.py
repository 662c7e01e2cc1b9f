"""Uniform task sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtlkit.data.sampling.base import SamplingStrategy


class Uniform(SamplingStrategy):
    """``p_i = 1 / K``: every task equally likely, whatever its size."""

    def probabilities(self, sizes: Sequence[int], progress: float) -> np.ndarray:
        return np.full(len(sizes), 1.0 / len(sizes))
