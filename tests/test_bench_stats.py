"""``benchmarks.stats``: the t quantile against printed tables and closed forms, the paired t
interval on a textbook example, bootstrap properties and the verdict rules."""

import math
import statistics

import pytest

from benchmarks import stats


@pytest.mark.parametrize(
    "p,df,table",  # two-sided 95 % and one-sided 95 % critical values of a printed t table
    [
        (0.975, 4, 2.776),
        (0.975, 9, 2.262),
        (0.975, 1, 12.706),
        (0.975, 29, 2.045),
        (0.95, 10, 1.812),
    ],
)
def test_t_quantile_matches_the_printed_table(p, df, table):
    assert stats.t_quantile(p, df) == pytest.approx(table, abs=5e-4)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-table, abs=5e-4)


@pytest.mark.parametrize("t", [-3.0, -0.4, 0.0, 0.7, 5.0])
def test_t_cdf_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_paired_t_interval_on_a_textbook_example():
    # Differences 0.01 .. 0.05: mean 0.03, sd 0.0158114, se 0.00707107, t_{0.975,4} = 2.776
    a = {s: 0.5 + 0.01 * (s + 1) for s in range(5)}
    b = {s: 0.5 for s in range(5)}
    b[7] = 0.1  # a seed only one side has is not paired
    result = stats.paired(a, b)
    half = 2.776 * 0.0158114 / math.sqrt(5)
    assert result.n == 5 and result.mean == pytest.approx(0.03)
    assert result.low == pytest.approx(0.03 - half, abs=1e-5)
    assert result.high == pytest.approx(0.03 + half, abs=1e-5)
    assert result.verdict == "better"
    assert stats.paired(b, a).verdict == "worse"


def test_no_verdict_when_the_interval_holds_zero():
    a = {0: 0.70, 1: 0.80, 2: 0.75}
    b = {0: 0.72, 1: 0.77, 2: 0.75}  # differences -0.02, +0.03, 0
    assert stats.paired(a, b).verdict == "no difference"
    assert stats.paired({0: 0.9}, {0: 0.1}).verdict == "too few seeds"
    with pytest.raises(ValueError, match="no common seeds"):
        stats.paired({0: 1.0}, {1: 1.0})


def test_bootstrap_sanity():
    values = [0.3, -0.1, 0.25, 0.4, 0.05, 0.2, 0.1, 0.35]
    low, high = stats.bootstrap_interval(values)
    mean = statistics.fmean(values)
    # Resample means lie inside [min, max] and the interval holds the sample mean.
    assert min(values) <= low < mean < high <= max(values)
    assert stats.bootstrap_interval(values) == (low, high)  # fixed seed: reproducible
    assert stats.bootstrap_interval([0.2] * 6) == pytest.approx((0.2, 0.2))  # no spread
    # Four times the data (same spread) roughly halves the width (1 / sqrt(n)).
    wide = stats.bootstrap_interval(values * 4)
    assert 0.35 < (wide[1] - wide[0]) / (high - low) < 0.65


def test_paired_ratio_and_target():
    fast = {r: 1.00 for r in range(6)}
    slow = {r: v for r, v in enumerate([1.10, 1.12, 1.08, 1.11, 1.09, 1.10])}
    result = stats.paired_ratio(slow, fast)
    assert result.mean == pytest.approx(1.10)  # median of the per-round ratios
    assert 1.08 <= result.low <= 1.10 <= result.high <= 1.12
    assert result.verdict == "better"  # the ratio's interval lies above 1
    assert stats.within(result, 1.15) == "met"
    assert stats.within(result, 1.05) == "not met"
    assert stats.within(result, 1.10) == "inconclusive"
