"""The English suite's report: per-row test scores, paired comparisons with intervals and
verdicts (:mod:`benchmarks.stats`), weight trajectories, and the check against published
findings, written as ``results/mtl_suite.{json,md,png}``, ``mtl_suite_weights.png`` and
``findings.md``."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks import stats
from benchmarks.common import CONFIGS, DELTA_M_FLOOR, ROOT, delta_m, write_result
from benchmarks.recorder import STILL_TOLERANCE, plot_trajectories

PRIMARY = {"trec": "accuracy", "bbc_topic": "accuracy", "sentiment": "pearson"}
FLOOR = DELTA_M_FLOOR
#: Rows whose weights are constant by design (not flagged when they never move).
FIXED = {"weighting/equal", "weighting/static", "budget/equal"}
#: Row prefixes without a weighting method: the single-task rows, the budget check (rows
#: trained again with more steps, see :func:`budget_check`) and the sampling rows.
UNWEIGHTED = ("single/", "budget/", "sampling/")
Runs = Mapping[str, list[dict[str, Any]]]


def _scores(runs: list[dict[str, Any]], task: str) -> dict[int, float]:
    return {r["seed"]: r["test"][task][PRIMARY[task]] for r in runs if task in r["test"]}


def _mean_score(runs: list[dict[str, Any]], tasks: list[str]) -> dict[int, float]:
    return {r["seed"]: statistics.fmean(r["test"][t][PRIMARY[t]] for t in tasks) for r in runs}


def late_gain(curve: list[tuple[int, float]], steps: int) -> float | None:
    """How much the validation metric still rose in the second half of a run: the best value
    of the whole curve minus the best up to ``steps / 2`` (about 0 for a run that reached its
    plateau by mid-run; ``None`` without a validation in the first half)."""
    early = [v for step, v in curve if step <= steps / 2]
    return max(v for _, v in curve) - max(early) if early else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _single(results: Runs) -> dict[str, dict[int, float]]:
    """Each task's single-task test score by seed."""
    return {t: _scores(results[f"single/{t}"], t) for t in PRIMARY if f"single/{t}" in results}


def versus_single(runs: list[dict[str, Any]], single: dict[str, dict[int, float]]) -> dict:
    """Paired against the single-task rows on the same seeds: the mean primary metric's
    absolute difference and Δm% (per seed against that seed's baselines), each with an
    interval; tasks whose single-task score is below :data:`FLOOR` are flagged."""
    tasks = list(single)
    seeds = [r["seed"] for r in runs if all(r["seed"] in single[t] for t in tasks)]
    by_seed = {r["seed"]: r for r in runs}
    row_mean = {
        s: statistics.fmean(by_seed[s]["test"][t][PRIMARY[t]] for t in tasks) for s in seeds
    }
    base_mean = {s: statistics.fmean(single[t][s] for t in tasks) for s in seeds}
    deltas = {
        s: delta_m(
            {t: by_seed[s]["test"][t][PRIMARY[t]] for t in tasks}, {t: single[t][s] for t in tasks}
        )
        for s in seeds
    }
    low = [t for t in tasks if statistics.fmean(single[t].values()) < FLOOR]
    out = {"absolute": stats.paired(row_mean, base_mean).as_dict(), "below_floor": low}
    if None not in deltas.values():
        out["delta_m"] = stats.paired(deltas, dict.fromkeys(seeds, 0.0)).as_dict()
    return out


def summarise(results: Runs) -> dict[str, dict[str, Any]]:
    """Per row: test primary metric per task and their mean (mean ± std over seeds), steps used
    and best step, the largest weight move, and paired comparisons against the single-task rows
    and (weighting rows) against equal weighting."""
    single = _single(results)
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        tasks = [t for t in PRIMARY if t in runs[0]["test"]]
        entry: dict[str, Any] = {
            "tasks": {t: _mean_std(list(_scores(runs, t).values())) for t in tasks},
            "mean": _mean_std(list(_mean_score(runs, tasks).values())),
            "steps": statistics.fmean(r["steps"] for r in runs),
            "best_step": statistics.fmean(r["best_step"] or 0 for r in runs),
            "max_steps": runs[0]["max_steps"],
            "late_gain": _mean_or_none([late_gain(r["val_curve"], r["steps"]) for r in runs]),
            "max_weight_move": max(r["max_weight_move"] for r in runs),
            "seconds": statistics.fmean(r["seconds"] for r in runs),
        }
        multi = len(tasks) > 1
        entry["weights_still"] = (
            multi and name not in FIXED and (entry["max_weight_move"] < STILL_TOLERANCE)
        )
        if multi and set(single) == set(tasks):
            entry["vs_single"] = versus_single(runs, single)
        equal = results.get("weighting/equal")
        if name.startswith("weighting/") and name != "weighting/equal" and equal:
            entry["vs_equal"] = stats.paired(
                _mean_score(runs, tasks), _mean_score(equal, tasks)
            ).as_dict()
        summary[name] = entry
    for name, twins in identical_rows(results).items():
        summary[name]["same_as"] = twins
    for task, comparison in budget_check(results).items():
        summary[f"budget/{task}"]["vs_budget"] = comparison
    return summary


def budget_check(results: Runs) -> dict[str, dict[str, Any]]:
    """Per ``budget/<name>`` row: its test score (more steps) minus that of the row it trains
    again (``single/<task>``, or ``weighting/<method>`` for a multi-task row: the mean primary
    metric), paired by seed. A budget that reaches the plateau shows no gain: the interval
    holds 0 or lies below it."""
    out = {}
    for name, runs in results.items():
        if not name.startswith("budget/"):
            continue
        key = name.split("/", 1)[1]
        base = results.get(f"single/{key}" if key in PRIMARY else f"weighting/{key}")
        if base:
            tasks = [t for t in PRIMARY if t in runs[0]["test"]]
            out[key] = stats.paired(_mean_score(runs, tasks), _mean_score(base, tasks)).as_dict()
    return out


def _mean_or_none(values: list[float | None]) -> float | None:
    return None if None in values else statistics.fmean(values)


def identical_rows(results: Runs) -> dict[str, list[str]]:
    """Rows whose every seed scored exactly what another row's did on every task and metric
    (e.g. a dynamic method that reduced to a fixed one): row -> the rows it equals."""

    def fingerprint(runs: list[dict[str, Any]]) -> str:
        return repr(sorted((r["seed"], sorted(r["test"].items())) for r in runs))

    groups: dict[str, list[str]] = {}
    for name, runs in results.items():
        groups.setdefault(fingerprint(runs), []).append(name)
    return {n: [m for m in g if m != n] for g in groups.values() if len(g) > 1 for n in g}


def _cell(value: tuple[float, float] | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _interval(c: Mapping[str, Any] | None, digits: int = 3, verdict: bool = True) -> str:
    """``+0.012 [-0.004, +0.028] no difference`` (``-`` when absent)."""
    if not c:
        return "-"
    text = f"{c['mean']:+.{digits}f}"
    if c["low"] is not None:
        text += f" [{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]"
    return text + (f" {c['verdict']}" if verdict else "")


def task_steps(settings: Mapping[str, Any], task: str) -> int:
    """The single-task budget of ``task``: ``steps`` times the mode's ``task_budget`` factor."""
    return settings["steps"] * settings.get("task_budget", {}).get(task, 1)


def _budgets(settings: Mapping[str, Any]) -> str:
    """``100 (trec 200)``: the steps per task, and the tasks with another budget."""
    other = ", ".join(
        f"{t} {task_steps(settings, t)}"
        for t in PRIMARY
        if task_steps(settings, t) != settings["steps"]
    )
    return f"{settings['steps']}" + (f" ({other})" if other else "")


def encoder_text(settings: Mapping[str, Any]) -> str:
    """The suite's encoder in words: MiniLM-L6, the layers kept, what stays frozen and how
    mixed batches run it, e.g. ``MiniLM-L6 (layers [0, 1, 2]; embeddings and the lowest layer
    frozen; one encoder pass per task in mixed batches)``."""
    layers, lowest = settings.get("keep_layers"), settings.get("frozen_layers", 0)
    frozen = ["embeddings"] if settings.get("freeze_embeddings") else []
    if lowest:
        frozen.append("the lowest layer" if lowest == 1 else f"the lowest {lowest} layers")
    parts = [f"layers {layers}"] if layers else []
    if frozen:
        parts.append(" and ".join(frozen) + " frozen")
    if settings.get("stack_tasks") is False:
        parts.append("one encoder pass per task in mixed batches")
    return "MiniLM-L6" + (f" ({'; '.join(parts)})" if parts else "")


def markdown(summary: dict[str, dict[str, Any]], settings: dict[str, Any]) -> str:
    head = " | ".join(f"{t} {m}" for t, m in PRIMARY.items())
    lines = [
        f"| row | {head} | mean | vs single: Δ mean | Δm% | vs equal: Δ mean | steps (best) "
        "| 2nd-half gain | weights |",
        "|" + "---|" * (len(PRIMARY) + 8),
    ]
    for name, e in summary.items():
        cells = [_cell(e["tasks"].get(t)) for t in PRIMARY]
        vs = e.get("vs_single", {})
        weights = (
            "fixed"
            if name in FIXED or name.startswith(UNWEIGHTED)
            else "**never moved**"
            if e["weights_still"]
            else f"moved {e['max_weight_move']:.3g}"
        )
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_cell(e['mean'])} "
            f"| {_interval(vs.get('absolute'))} | {_interval(vs.get('delta_m'), 1, False)} "
            f"| {_interval(e.get('vs_equal'))} | {e['steps']:.0f} ({e['best_step']:.0f}) "
            f"| {'-' if e.get('late_gain') is None else format(e['late_gain'], '+.3f')} "
            f"| {weights} |"
        )
    floors = sorted(
        {t for e in summary.values() for t in e.get("vs_single", {}).get("below_floor", [])}
    )
    lines.append(
        f"\n{encoder_text(settings)}; TEST split (at most "
        f"{settings['max_eval']} examples per task) scored with the checkpoint of the best "
        f"validation `val/mean`; validation every {settings['eval_every']} steps per task "
        f"(multi-task rows about every {settings['eval_every'] * len(PRIMARY)} steps), early "
        f"stopping after {settings['patience']} validations without improvement, at most "
        f"{_budgets(settings)} steps of 16 per task (multi-task rows their sum, "
        f"{sum(task_steps(settings, t) for t in PRIMARY)}); `steps (best)`: steps trained and "
        "the selected step, mean over seeds; `2nd-half gain`: how much validation `val/mean` "
        "still rose after half the steps a run trained (its best minus its best by mid-run, "
        "mean over seeds; about 0 once a run has reached its plateau). "
        f"{settings['seeds']} seeds; scores mean ± std. Comparisons are "
        "paired by seed (same data order and initial heads): mean difference with its 95 % "
        "Student t interval; a verdict `better`/`worse` only when the interval excludes 0. "
        "`Δ mean`: change of the mean primary metric (absolute); Δm%: mean relative change "
        "against the single-task rows (Maninis et al. 2019). `weights`: the largest move of any "
        f"task weight from its start; **never moved** (< {STILL_TOLERANCE}) flags a dynamic "
        "method that acted as a fixed one."
    )
    budget = {n.split("/", 1)[1]: e for n, e in summary.items() if "vs_budget" in e}
    single = {t: e for t, e in budget.items() if t in PRIMARY}
    if single:
        lines.append(
            f"\nBudget check (`budget/` rows): single-task test score with more steps minus "
            f"with {_budgets(settings)}, paired by seed: {_budget_marks(single)}. "
            + _budget_verdict(single, "task", "single-task")
        )
    multi = {t: e for t, e in budget.items() if t not in PRIMARY}
    if multi:
        lines.append(
            "\nMulti-task budget check: the mean primary metric with more steps minus "
            f"the row's own ({sum(task_steps(settings, t) for t in PRIMARY)} steps), paired by "
            f"seed: {_budget_marks(multi)}. " + _budget_verdict(multi, "row", "multi-task")
        )
    skipped = settings.get("skip") or {}
    if skipped:
        lines.append(
            "\nNot trained in this mode (the same as another row seed by seed): "
            + "; ".join(f"{n} = {same}" for n, same in skipped.items())
            + "."
        )
    twins = sorted(
        {" = ".join(sorted([n, *e["same_as"]])) for n, e in summary.items() if e.get("same_as")}
    )
    if twins:
        lines.append(
            f"\nIdentical seed by seed (one row reduced to the other): {'; '.join(twins)}."
        )
    if floors:
        lines.append(
            f"\nΔm% is unstable for {', '.join(floors)}: single-task score below {FLOOR}; "
            "read the absolute differences."
        )
    return "\n".join(lines) + "\n"


def _budget_marks(budget: Mapping[str, Mapping[str, Any]]) -> str:
    return "; ".join(
        f"{t} ({e['max_steps']} steps) {_interval(e['vs_budget'])}" for t, e in budget.items()
    )


def _budget_verdict(budget: Mapping[str, Mapping[str, Any]], what: str, kind: str) -> str:
    still = [t for t, e in budget.items() if e["vs_budget"].get("verdict") == "better"]
    if still:
        return (
            f"Still gaining ({', '.join(still)}): the budget stops short of that {what}'s "
            f"{kind} plateau."
        )
    return f"No {what} gains from more steps: the budget reaches the {kind} plateau."


def plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    """Δm% per row with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = {
        n: e["vs_single"]["delta_m"]
        for n, e in summary.items()
        if "delta_m" in e.get("vs_single", {})
    }
    names = list(entries)
    means = [entries[n]["mean"] for n in names]
    errors = [
        [
            m - (entries[n]["low"] if entries[n]["low"] is not None else m)
            for n, m in zip(names, means, strict=True)
        ],
        [
            (entries[n]["high"] if entries[n]["high"] is not None else m) - m
            for n, m in zip(names, means, strict=True)
        ],
    ]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.barh(names, means, xerr=errors, color=["tab:blue" if m >= 0 else "tab:red" for m in means])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("Δm% against single-task (paired by seed, 95 % t interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(
    records: Mapping[str, dict[str, Any]],
    mode: str,
    settings: dict[str, Any],
    overrides: Mapping[str, dict[str, Any]],
    for_readme: bool,
) -> Path:
    """Writes ``results/mtl_suite.*``, the weight-trajectory plot and ``findings.md``."""
    from benchmarks import findings

    results = {n: r["runs"] for n, r in records.items()}
    summary = summarise(results)
    verdicts = findings.check(results)
    rows = {
        n: {
            "overrides": {k: str(v) for k, v in overrides[n].items()},
            **{k: v for k, v in r.items() if k != "runs"},
        }
        for n, r in records.items()
    }
    payload = {
        "mode": mode,
        "settings": settings,
        "base_config": str((CONFIGS / "quickstart.yaml").relative_to(ROOT)),
        "rows": rows,
        "runs": results,
        "summary": summary,
        "findings": verdicts,
        "train_seconds_total": round(sum(r["seconds"] for v in results.values() for r in v), 1),
    }
    path = write_result("mtl_suite", payload, markdown(summary, settings), for_readme)
    plot(summary, path.with_suffix(".png"))
    trajectories = {n: v[0]["weights"] for n, v in results.items() if n.startswith("weighting/")}
    plot_trajectories(trajectories, path.parent / "mtl_suite_weights.png")
    (path.parent / "findings.md").write_text(findings.markdown(verdicts))
    return path
