"""``benchmarks.weighting_overhead``: the paired per-round ratio, the target's verdict from its
interval, and a smoke measurement on the tiny encoder."""

import pytest

from benchmarks import stats
from benchmarks import weighting_overhead as wo


def _row(kind, ratios, tasks=8):
    equal = {r: 1.0 for r in range(len(ratios))}
    ratio = stats.paired_ratio(dict(enumerate(ratios)), equal).as_dict()
    return {"kind": kind, "tasks": tasks, "ratio": ratio, "encoder": "tiny", "method": "m",
            "seconds": 0.01}  # fmt: skip


def test_overhead_is_the_median_of_per_round_ratios():
    # Round 2 ran under load for both methods: per-round ratios cancel it, minima would not.
    times = {"equal": [1.0, 1.0, 3.0, 1.0, 1.0], "uncertainty": [1.02, 1.01, 3.03, 1.03, 1.02]}
    result = wo.overhead(times, "uncertainty")
    assert result.mean == pytest.approx(1.02) and result.n == 5
    assert result.low >= 1.01 and result.high <= 1.03


@pytest.mark.parametrize(
    "ratios,expected",
    [
        ([1.01, 1.02, 1.03, 1.02, 1.01], "met"),  # whole interval <= 1.05
        ([1.10, 1.12, 1.09, 1.11, 1.10], "not met"),  # whole interval > 1.05
        ([1.00, 1.10, 1.02, 1.08, 1.05], "inconclusive"),  # the interval holds 1.05
    ],
)
def test_target_verdict_from_the_interval(ratios, expected):
    row = _row("loss", ratios)
    assert wo.verdict(row) == expected
    assert f"| {expected} |" in wo.markdown([row])
    assert wo.verdict(_row("representation", ratios, tasks=2)) == ""  # target is for 8 tasks
    assert wo.verdict(_row("parameters", ratios, tasks=4)) == ""
    assert wo.verdict(_row("parameters", [r + 0.45 for r in ratios])) == expected  # 1.5x
    assert wo.verdict(_row("baseline", ratios)) == ""


def test_smoke_measurement_keeps_every_round():
    times = wo.measure(
        lambda: wo.HFEncoder(config=dict(wo.TINY)), 155, 2, 2, 8, 1, 2, ["equal", "uncertainty"]
    )
    assert {k: len(v) for k, v in times.items()} == {"equal": 2, "uncertainty": 2}
    assert wo.overhead(times, "uncertainty").mean > 0


def test_one_pass_rows_for_every_gramian_method():
    one_pass = {n.split("/")[0] for n, (kind, _) in wo.METHODS.items() if kind.endswith("pass")}
    explicit = {n.split("/")[0] for n, (kind, _) in wo.METHODS.items() if kind == "parameters"}
    assert one_pass == explicit - {"nash_mtl"}  # Nash-MTL needs the gradients, not the Gramian
    assert wo.verdict(_row("parameters, one pass", [1.2, 1.3, 1.25])) == "met"


def test_gramian_smoke_measurement(tmp_path, monkeypatch):
    errors = wo.gramian_error(tasks=3, per_task=2, length=8, steps=1)
    assert errors["one_pass"] <= 5e-6 and errors["autogram"] <= 1e-5
    setup = ("tiny", lambda: wo.HFEncoder(config=dict(wo.TINY)), 155, 2, 8, 1, 2)
    times = wo.gramian_rounds(setup, 3, ["upgrad"], ["explicit", "one_pass"])
    assert {k: len(v) for k, v in times.items()} == {
        "equal": 2,
        "upgrad/explicit": 2,
        "upgrad/one_pass": 2,
    }
