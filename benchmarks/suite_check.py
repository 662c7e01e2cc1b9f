"""Do the CPU suite's conclusions hold for the whole model? A subset of the English suite's rows
retrained with all six MiniLM-L6 layers and trainable embeddings (``whole`` mode: everything
else, sequences, learning rates, budget and selection, as the default CPU mode), compared with
the default mode's results (``results/mtl_suite.json``) on the same seeds: each row's verdicts
against single-task and against equal weighting, and the two published findings.

    python -m benchmarks.suite_check        # ~33 min on two cores (3 seeds, 8 rows)

The reference file must be clean and for the README, and its library (``mtlkit/``, configs,
pins) identical to ``HEAD``'s, so both sides measure the same code. Writes
``results/suite_check.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks import findings, suite_report, suite_rows
from benchmarks.common import RESULTS, require_clean, train_in_workers, write_result
from benchmarks.run import _settings, train_row
from benchmarks.suite_report import _interval
from benchmarks.suite_rows import MODES, longest_first, row_cost
from benchmarks.update_readme import library_changes

#: Single-task baselines, proportional against T = 5 mixing (the first finding), equal
#: weighting against a gradient method and a loss-level one (the second).
ROWS = [
    "single/trec",
    "single/bbc_topic",
    "single/sentiment",
    "sampling/proportional",
    "sampling/t5",
    "weighting/equal",
    "weighting/pcgrad",
    "weighting/famo",
]
Runs = Mapping[str, list[dict[str, Any]]]


def reference(path: Path, rows: list[str], seeds: set[int]) -> tuple[dict, str]:
    """The default mode's runs of ``rows`` on ``seeds`` and their commit; ``SystemExit`` when the
    file is missing, dirty, not for the README, of another mode, lacks a row or a seed, or
    measured another library than ``HEAD``'s."""
    if not path.exists():
        raise SystemExit(f"{path}: no default-mode suite to compare with; run benchmarks.run")
    payload = json.loads(path.read_text())
    if payload.get("dirty") or payload.get("for_readme") is not True:
        raise SystemExit(f"{path}: a dirty or partial suite (for_readme: false)")
    if payload.get("mode") != "default":
        raise SystemExit(f"{path}: mode {payload.get('mode')!r}, not the default CPU mode")
    changed = library_changes(payload["commit"], "HEAD")
    if changed:
        raise SystemExit(f"{path}: the library changed since {payload['commit'][:10]}: {changed}")
    runs = {}
    for row in rows:
        chosen = [r for r in payload["runs"].get(row, []) if r["seed"] in seeds]
        if {r["seed"] for r in chosen} != seeds:
            raise SystemExit(f"{path}: row {row!r} lacks seeds {sorted(seeds)}")
        runs[row] = chosen
    return runs, payload["commit"]


def verdicts(results: Runs) -> dict[str, dict[str, Any]]:
    """Per row: the mean primary metric, and the paired comparisons against single-task and
    against equal weighting (:func:`benchmarks.suite_report.summarise`)."""
    summary = suite_report.summarise(results)
    return {
        name: {
            "mean": e["mean"],
            "vs_single": e.get("vs_single", {}).get("absolute"),
            "vs_equal": e.get("vs_equal"),
        }
        for name, e in summary.items()
    }


def compare(cpu: Runs, whole: Runs) -> dict[str, Any]:
    """Both sides' verdicts and findings, and which verdicts agree (a verdict is ``better``,
    ``worse`` or ``no difference``; rows without a comparison are left out)."""
    sides = {"cpu": verdicts(cpu), "whole": verdicts(whole)}
    agree: dict[str, bool] = {}
    for name in sides["whole"]:
        for kind in ("vs_single", "vs_equal"):
            a, b = sides["cpu"][name][kind], sides["whole"][name][kind]
            if a is not None and b is not None:
                agree[f"{name} {kind}"] = a["verdict"] == b["verdict"]
    found = {"cpu": findings.check(cpu), "whole": findings.check(whole)}
    statuses = {
        k: (found["cpu"][k] or {}).get("status") == (found["whole"][k] or {}).get("status")
        for k in found["cpu"]
    }
    return {"rows": sides, "agree": agree, "findings": found, "findings_agree": statuses}


def markdown(result: Mapping[str, Any], seeds: int) -> str:
    cpu, whole = result["rows"]["cpu"], result["rows"]["whole"]
    kept = MODES["default"]["keep_layers"]
    layers = f"{len(kept)} layers"
    lines = [
        f"| row | mean, {layers} | vs single | vs equal | mean, 6 layers | vs single | vs equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in whole:
        a, b = cpu[name], whole[name]
        lines.append(
            f"| {name} | {suite_report._cell(a['mean'])} | {_interval(a['vs_single'])} "
            f"| {_interval(a['vs_equal'])} | {suite_report._cell(b['mean'])} "
            f"| {_interval(b['vs_single'])} | {_interval(b['vs_equal'])} |"
        )
    agree = result["agree"]
    differ = [k for k, same in agree.items() if not same]
    lines.append(
        f"\n{seeds} seeds (the same seeds on both sides), paired 95 % t intervals. {layers}: "
        f"the CPU suite ({suite_report.encoder_text(MODES['default'])}); 6 layers: the whole "
        "encoder, embeddings trained; sequences, learning rates, budget and model selection "
        f"as the CPU suite. Verdicts that agree: {sum(agree.values())} of {len(agree)}"
        + (f"; they differ for {', '.join(differ)}." if differ else ".")
    )
    for key, title in (
        ("temperature_sampling", "Temperature sampling helps the smallest task"),
        ("equal_weighting", "Equal weighting within noise of specialised methods"),
    ):
        a, b = result["findings"]["cpu"][key], result["findings"]["whole"][key]
        lines.append(
            f"\n{title}: {layers} **{(a or {}).get('status')}**, "
            f"6 layers **{(b or {}).get('status')}**."
        )
    return "\n".join(lines) + "\n"


def run(rows: list[str] = ROWS, mode: str = "whole", for_readme: bool = True) -> Path:
    """Trains ``rows`` in ``mode`` (cached per row like the suite) and writes the comparison."""
    settings = _settings(mode, None, None)
    records = {name: train_row(name, mode, settings) for name in rows}
    whole = {name: r["runs"] for name, r in records.items()}
    seeds = {r["seed"] for runs in whole.values() for r in runs}
    cpu, reference_commit = reference(RESULTS / "mtl_suite.json", rows, seeds)
    result = compare(cpu, whole)
    payload = {
        "mode": mode,
        "settings": settings,
        "reference": {"file": "benchmarks/results/mtl_suite.json", "commit": reference_commit},
        "rows": {n: {k: v for k, v in r.items() if k != "runs"} for n, r in records.items()},
        "runs": whole,
        **result,
    }
    return write_result("suite_check", payload, markdown(result, len(seeds)), for_readme)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="processes (1 thread each)")
    parser.add_argument("--rows", help="(internal) the rows one worker trains")
    parser.add_argument("--allow-dirty", action="store_true")
    args = parser.parse_args(argv)
    clean = require_clean(args.allow_dirty, "benchmarks.suite_check")
    if args.rows:  # a worker: train its rows into the row cache
        settings = _settings("whole", None, None)
        for name in args.rows.split(","):
            train_row(name, "whole", settings)
        return
    extra = ["--allow-dirty"] if args.allow_dirty else []
    settings, table = _settings("whole", None, None), suite_rows.rows()
    order = longest_first({n: row_cost(table[n], settings) for n in ROWS})
    train_in_workers("benchmarks.suite_check", order, args.workers, extra)
    print(run(for_readme=clean))


if __name__ == "__main__":
    main()
