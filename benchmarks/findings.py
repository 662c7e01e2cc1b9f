"""The English suite checked against two published findings, with the verdicts of
:mod:`benchmarks.stats` (paired by seed, 95 % t interval):

1. Temperature sampling helps the smallest task relative to proportional mixing (Arivazhagan et
   al. 2019, "Massively Multilingual Neural Machine Translation in the Wild", section 4; Raffel
   et al. 2020, T5, Table 11: temperature-scaled mixing lifts the low-resource tasks that
   examples-proportional mixing starves).
2. Equal weighting is within noise of the specialised weighting methods (Kurin et al. 2022, "In
   Defense of the Unitary Scalarization for Deep Multi-Task Learning"; Xin et al. 2022, "Do
   Current Multi-Task Optimization Methods in Deep Learning Even Help?").

Each finding gets ``consistent`` / ``contradicted`` / ``not resolved`` from the comparisons, and
the README paragraph is generated from them (:func:`markdown`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from benchmarks import stats
from benchmarks.suite_report import PRIMARY

TEMPERATURE_ROWS = ("sampling/t2", "sampling/t5")


def _task_scores(runs: list[dict[str, Any]], task: str) -> dict[int, float]:
    return {r["seed"]: r["test"][task][PRIMARY[task]] for r in runs}


def _mean_scores(runs: list[dict[str, Any]]) -> dict[int, float]:
    return {r["seed"]: statistics.fmean(r["test"][t][PRIMARY[t]] for t in PRIMARY) for r in runs}


def smallest_task(results: Mapping[str, list[dict[str, Any]]]) -> str:
    """The task with the fewest training examples (as the runs recorded them)."""
    sizes = next(
        r["train_sizes"] for runs in results.values() for r in runs if len(r["train_sizes"]) > 1
    )
    return min(sizes, key=sizes.__getitem__)


def temperature_finding(results: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Smallest task's test score, each temperature row minus proportional sampling."""
    base = results.get("sampling/proportional")
    rows = [r for r in TEMPERATURE_ROWS if r in results]
    if base is None or not rows:
        return None
    task = smallest_task(results)
    comparisons = {
        r: stats.paired(_task_scores(results[r], task), _task_scores(base, task)).as_dict()
        for r in rows
    }
    verdicts = {c["verdict"] for c in comparisons.values()}
    status = (
        "consistent"
        if "better" in verdicts and "worse" not in verdicts
        else "contradicted"
        if "worse" in verdicts and "better" not in verdicts
        else "not resolved"
    )
    return {"task": task, "comparisons": comparisons, "status": status}


def equal_weighting_finding(results: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Mean primary metric, each weighting method minus equal weighting."""
    equal = results.get("weighting/equal")
    methods = [n for n in results if n.startswith("weighting/") and n != "weighting/equal"]
    if equal is None or not methods:
        return None
    comparisons = {
        n: stats.paired(_mean_scores(results[n]), _mean_scores(equal)).as_dict() for n in methods
    }
    better = sorted(n for n, c in comparisons.items() if c["verdict"] == "better")
    resolved = any(c["low"] is not None for c in comparisons.values())
    status = "contradicted" if better else "consistent" if resolved else "not resolved"
    return {"comparisons": comparisons, "better_than_equal": better, "status": status}


def check(results: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Both findings' comparisons and status (``None`` where the rows are missing)."""
    return {
        "temperature_sampling": temperature_finding(results),
        "equal_weighting": equal_weighting_finding(results),
    }


def _interval(c: Mapping[str, Any]) -> str:
    if c["low"] is None:
        return f"{c['mean']:+.3f} ({c['verdict']})"
    return f"{c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] ({c['verdict']})"


def markdown(verdicts: Mapping[str, Any]) -> str:
    """The README paragraph: each finding, what the suite measured, and the verdict."""
    parts = []
    temp = verdicts.get("temperature_sampling")
    if temp:
        measured = "; ".join(
            f"{r.split('/')[1]} {_interval(c)}" for r, c in temp["comparisons"].items()
        )
        parts.append(
            "**Temperature sampling helps the smallest task** (Arivazhagan et al. 2019; Raffel et "
            f"al. 2020, T5 Table 11). Smallest task here: {temp['task']}; its test "
            f"{PRIMARY[temp['task']]} against proportional mixing, paired by seed: {measured}. "
            f"Verdict: **{temp['status']}**."
        )
    equal = verdicts.get("equal_weighting")
    if equal:
        counts = {
            v: sum(c["verdict"] == v for c in equal["comparisons"].values())
            for v in ("better", "no difference", "worse", "too few seeds")
        }
        listed = ", ".join(
            f"{n.split('/')[1]} {_interval(c)}" for n, c in equal["comparisons"].items()
        )
        parts.append(
            "**Equal weighting is within noise of specialised methods** (Kurin et al. 2022; Xin "
            "et al. 2022; here equal weighting is not tuned). Mean primary metric of each method "
            f"minus equal weighting, paired by seed: {listed}. Better than equal: "
            f"{counts['better']}, no difference: {counts['no difference']}, worse: "
            f"{counts['worse']}. Verdict: **{equal['status']}**."
        )
    if not parts:
        return "(the rows these findings need were not run)\n"
    return "\n\n".join(parts) + (
        "\n\nA verdict needs the 95 % interval of the paired difference to exclude 0; "
        "`not resolved` means the seeds cannot tell.\n"
    )
