"""Paired statistics over seeds: intervals for differences and ratios, and the verdicts drawn.

Two rows trained with the same seeds (same data order, same initial heads) are compared seed by
seed: the differences ``a_s - b_s`` are what varies, so their interval is far narrower than the
rows' own spreads. Every comparison reports the mean difference with a 95 % Student t interval
(``mean ± t_{0.975, n-1} * sd / sqrt(n)``) and a percentile bootstrap interval (a fixed seed, so
a table is reproducible); the verdict ``better`` / ``worse`` is drawn only when the t interval
excludes 0, else ``no difference`` (or ``too few seeds`` below two). No scipy: the t quantile
comes from the regularized incomplete beta function (Numerical Recipes, 3rd ed., section 6.4).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a)
    log_front += math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x)
    return 1.0 - betainc(b, a, 1.0 - x)


def t_cdf(t: float, df: int) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"need 0 < p < 1 and df >= 1, got p={p}, df={df}")
    low, high = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return 0.5 * (low + high)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student t interval of the mean of ``values`` (n >= 2)."""
    n = len(values)
    if n < 2:
        raise ValueError("a t interval needs at least two values")
    mean = statistics.fmean(values)
    half = t_quantile(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[[Sequence[float]], float] = statistics.fmean,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (Efron & Tibshirani 1993, ch. 13) from
    ``resamples`` resamples with replacement drawn by a generator seeded with ``seed``."""
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(
        statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples)
    )
    alpha = (1.0 - level) / 2
    return draws[int(alpha * resamples)], draws[min(resamples - 1, int((1 - alpha) * resamples))]


def verdict(low: float, high: float) -> str:
    """``better`` / ``worse`` only when the interval of a (higher-is-better) difference excludes
    0; ``no difference`` otherwise."""
    return "better" if low > 0 else "worse" if high < 0 else "no difference"


@dataclass(frozen=True)
class Comparison:
    """A paired comparison over the seeds both sides have.

    Attributes:
        n: Seeds compared.
        mean: Mean difference (or, for :func:`paired_ratio`, median ratio).
        low: Lower end of the 95 % t interval (ratio: bootstrap interval).
        high: Upper end.
        boot_low: Lower end of the percentile bootstrap interval.
        boot_high: Upper end of it.
        verdict: ``better``, ``worse``, ``no difference`` or ``too few seeds``.
    """

    n: int
    mean: float
    low: float | None
    high: float | None
    boot_low: float | None
    boot_high: float | None
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _common(a: Mapping[int, float], b: Mapping[int, float]) -> list[int]:
    return sorted(set(a) & set(b))


def paired(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> Comparison:
    """``a - b`` seed by seed (``{seed: score}``, higher is better) over the common seeds."""
    seeds = _common(a, b)
    if not seeds:
        raise ValueError("no common seeds to pair")
    diffs = [a[s] - b[s] for s in seeds]
    if len(diffs) < 2:
        return Comparison(len(diffs), diffs[0], None, None, None, None, "too few seeds")
    mean, low, high = t_interval(diffs, level)
    boot = bootstrap_interval(diffs, level=level)
    return Comparison(len(diffs), mean, low, high, *boot, verdict(low, high))


def paired_ratio(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> Comparison:
    """Median over paired units (seeds or timing rounds) of ``a / b`` with a percentile
    bootstrap interval of the median; the verdict says whether ``a`` is larger (``better``
    means larger here, e.g. slower for times), smaller, or neither, against a ratio of 1."""
    units = _common(a, b)
    ratios = [a[u] / b[u] for u in units]
    median = statistics.median(ratios)
    if len(ratios) < 2:
        return Comparison(len(ratios), median, None, None, None, None, "too few seeds")
    low, high = bootstrap_interval(ratios, statistics.median, level)
    return Comparison(len(ratios), median, low, high, low, high, verdict(low - 1, high - 1))


def within(comparison: Comparison, target: float) -> str:
    """A ratio against a target: ``met`` when the interval lies at or below ``target``, ``not
    met`` when it lies above, ``inconclusive`` when it straddles it."""
    if comparison.low is None or comparison.high is None:
        return "inconclusive"
    if comparison.high <= target:
        return "met"
    return "not met" if comparison.low > target else "inconclusive"
