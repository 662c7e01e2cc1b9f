"""``make bench``: single-task baselines, sampling strategies and weighting methods on real data.

    python -m benchmarks.run                  # the default CPU suite (see below for its time)
    python -m benchmarks.run --full           # more steps, evaluation and seeds (for a GPU)
    python -m benchmarks.run --only mtl       # one part: mtl, throughput, chinese
    python -m benchmarks.run --rows single,sampling/t2 --seeds 1 --steps 10   # a quick check

The English suite is ``configs/quickstart.yaml`` (MiniLM-L6 shared by TREC, BBC topic and the
sentiment-rating regression) plus one small override per row, trained in-process through the
CLI. Budget: a single-task run gets ``steps`` steps; a multi-task run gets the sum over its tasks
(``3 * steps``), so every task could see as many examples as alone. Every multi-task row reports
per-task validation metrics (the tasks' primary metrics: accuracy, accuracy, Pearson r), their
mean, and Δm% (Maninis et al. 2019, as LibMTL and Nash-MTL report it): the mean over tasks of the
relative change against the single-task baseline, in percent (all three metrics are
higher-is-better), as mean ± std over seeds. Writes ``results/mtl_suite.{json,md,png}``;
``--only throughput`` and ``--only chinese`` run :mod:`benchmarks.throughput` and
:mod:`benchmarks.chinese`. The README tables are filled from the markdown files afterwards.

Measured on the 2-core CPU (one torch thread per process): the English suite's 66 runs took
5,168 s of training and evaluation in all (86 min of one core; two processes share the rows via
the row files, as `make bench` does with --workers 2: ~45 min wall), the Chinese suite 296 s,
throughput ~4 min.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import CONFIGS, RESULTS, ROOT, delta_m, write_result
from mtlkit.testing.methods import MethodConfig, weighting_methods

BASE = CONFIGS / "quickstart.yaml"
PRIMARY = {"trec": "accuracy", "bbc_topic": "accuracy", "sentiment": "pearson"}
MODES: dict[str, dict[str, Any]] = {
    # CPU budget: BBC articles cut to 64 tokens (topic is clear from the start of an article),
    # and gradient methods aggregate on the shared representation (on this CPU per-parameter
    # gradients, one backward per task over 22M parameters, cost 3-5x a step).
    "default": {
        "steps": 20,
        "seeds": 3,
        "max_eval": 100,
        "max_length": {"bbc_topic": 64},
        "gradient_on": "representation",
    },
    # Each config's own settings.
    "full": {"steps": 400, "seeds": 5, "max_eval": None, "max_length": {}, "gradient_on": None},
}
SAMPLING = {
    "proportional": "mtlkit.data.sampling.Proportional",
    "uniform": "mtlkit.data.sampling.Uniform",
    "t2": ("mtlkit.data.sampling.Temperature", 2.0),
    "t5": ("mtlkit.data.sampling.Temperature", 5.0),
}


def _weighting_order(method: MethodConfig) -> tuple[bool, bool, str]:
    """Equal weighting first, then the loss-level and the gradient methods, each by name."""
    return method.is_gradient_method, method.name != "equal", method.name


def rows() -> dict[str, dict[str, Any]]:
    """Row name -> what it overrides on the base config."""
    table: dict[str, dict[str, Any]] = {f"single/{t}": {"single": t} for t in PRIMARY}
    for name, spec in SAMPLING.items():
        cls, temperature = spec if isinstance(spec, tuple) else (spec, None)
        sampling: dict[str, Any] = {"class_path": cls}
        if temperature is not None:
            sampling["init_args"] = {"temperature": temperature}
        table[f"sampling/{name}"] = {"data": {"init_args": {"sampling": sampling}}}
    # Weighting rows (every config of configs/weighting/) all use mixed batches, equal weighting
    # included, so they differ from each other only in the method.
    for method in sorted(weighting_methods().values(), key=_weighting_order):
        row: dict[str, Any] = {"config": method.path, "mixed": True}
        if method.is_gradient_method:
            # Where a mode's ``gradient_on`` (MODES) applies: the default CPU suite aggregates
            # on the shared representation, as MGDA-UB does; --full keeps the config's choice.
            row["gradient_on"] = "representation"
        table[f"weighting/{method.name}"] = row
    return table


def _mode_of(max_length: dict[str, int]) -> str:
    """The mode whose BBC cut ``max_length`` is (for callers that pass only that)."""
    return next(m for m, s in MODES.items() if s["max_length"] == max_length)


def _override_files(
    row: dict[str, Any], tmp: Path, max_length: dict[str, int], mode: str | None = None
) -> list[str]:
    """``--config`` arguments for one row: its tasks (with the mode's ``max_length`` cuts), its
    data and weighting overrides, and the mode's ``gradient_on`` for gradient methods."""
    gradient_on = MODES[mode or _mode_of(max_length)]["gradient_on"]
    files: list[str] = []
    base = yaml.safe_load(BASE.read_text())
    tasks = [
        t
        for t in base["data"]["init_args"]["tasks"]
        if row.get("single") in (None, t["init_args"]["name"])
    ]
    for task in tasks:
        name = task["init_args"]["name"]
        task["init_args"]["max_length"] = max_length.get(name, task["init_args"].get("max_length"))
    path = tmp / "tasks.yaml"
    path.write_text(yaml.safe_dump({"data": {"init_args": {"tasks": tasks}}}))
    files.append(str(path))
    if "data" in row:
        path = tmp / "override.yaml"
        path.write_text(yaml.safe_dump({"data": row["data"]}))
        files.append(str(path))
    if "config" in row:
        files.append(str(row["config"]))
    if "gradient_on" in row and gradient_on is not None:
        path = tmp / "gradient_on.yaml"
        weighting = {"weighting": {"init_args": {"works_on": gradient_on}}}
        path.write_text(yaml.safe_dump({"model": {"init_args": weighting}}))
        files.append(str(path))
    return [arg for f in files for arg in ("--config", f)]


def run_one(row: dict[str, Any], seed: int, mode: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Trains one row with one seed under ``mode``'s ``settings`` (:data:`MODES`, with the
    command line's seeds/steps); returns validation metrics and wall time."""
    from mtlkit.callbacks import metric_rows
    from mtlkit.cli import cli_main
    from mtlkit.testing.trainer import quiet_cli_args

    max_eval = settings["max_eval"]
    n_tasks = 1 if "single" in row else len(PRIMARY)
    total = settings["steps"] * n_tasks
    with tempfile.TemporaryDirectory() as tmp:
        overrides = _override_files(row, Path(tmp), settings["max_length"], mode)
        args = ["fit", "--config", str(BASE), *overrides, *quiet_cli_args()]
        args += [
            f"--seed_everything={seed}",
            "--trainer.callbacks=[]",
            f"--trainer.max_steps={total}",
            "--trainer.max_epochs=1",
            f"--data.init_args.steps_per_epoch={total}",
            f"--data.init_args.seed={seed}",
        ]
        if max_eval is not None:
            args.append(f"--data.init_args.max_eval_examples={max_eval}")
        if row.get("mixed"):
            args.append("--data.init_args.batch_mode=mixed")
        start = time.perf_counter()
        cli = cli_main(args)
        seconds = time.perf_counter() - start
    metrics = metric_rows(cli.trainer.callback_metrics, "val")
    return {"seed": seed, "steps": total, "seconds": round(seconds, 1), "val": metrics}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per row: primary metric per task and their mean (mean ± std over seeds), and Δm% against
    the single-task baselines (computed per seed against the baselines' mean over seeds)."""
    single = {
        t: statistics.fmean(r["val"][t][m] for r in results[f"single/{t}"])
        for t, m in PRIMARY.items()
        if f"single/{t}" in results
    }
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        tasks = [t for t in PRIMARY if t in runs[0]["val"]]
        per_task = {t: _mean_std([r["val"][t][PRIMARY[t]] for r in runs]) for t in tasks}
        means = [statistics.fmean(r["val"][t][PRIMARY[t]] for t in tasks) for r in runs]
        entry: dict[str, Any] = {"tasks": per_task, "mean": _mean_std(means)}
        if not name.startswith("single/") and set(single) == set(tasks):
            deltas = [delta_m({t: r["val"][t][PRIMARY[t]] for t in tasks}, single) for r in runs]
            if None not in deltas:
                entry["delta_m"] = _mean_std(deltas)
        entry["seconds"] = statistics.fmean(r["seconds"] for r in runs)
        summary[name] = entry
    return summary


def _cell(value: tuple[float, float] | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def markdown(summary: dict[str, dict[str, Any]], settings: dict[str, Any]) -> str:
    head = "| row | " + " | ".join(f"{t} {m}" for t, m in PRIMARY.items()) + " | mean | Δm% |"
    lines = [head, "|" + "---|" * (len(PRIMARY) + 3)]
    for name, entry in summary.items():
        cells = [_cell(entry["tasks"].get(t)) for t in PRIMARY]
        delta = _cell(entry.get("delta_m"), 2) if "delta_m" in entry else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(entry['mean'])} | {delta} |")
    lines.append(
        f"\nMiniLM-L6, validation split (at most {settings['max_eval']} examples per task; "
        f"max_length overrides {settings['max_length'] or 'none'}), "
        f"{settings['seeds']} seeds (mean ± std). Single-task runs: {settings['steps']} steps of "
        f"16; multi-task runs: {settings['steps'] * len(PRIMARY)} steps of 16. `sampling/*` rows: "
        "equal weights, one task per batch; `weighting/*` rows: temperature sampling (T=2), every "
        "task in every batch. Δm%: mean relative change of the primary metrics against the "
        "single-task rows (higher is better)."
    )
    lines.append(sampling_verdict(summary))
    return "\n".join(lines) + "\n"


def sampling_verdict(summary: dict[str, dict[str, Any]]) -> str:
    """Does temperature sampling help the small tasks without hurting the large ones? Answered
    from the numbers: each task's change against proportional sampling."""
    ref = summary.get("sampling/proportional")
    if ref is None:
        return ""
    parts = []
    for row in ("sampling/t2", "sampling/t5", "sampling/uniform"):
        if row in summary:
            changes = ", ".join(
                f"{t} {summary[row]['tasks'][t][0] - ref['tasks'][t][0]:+.3f}"
                for t in PRIMARY
                if t in ref["tasks"]
            )
            parts.append(f"{row.split('/')[1]}: {changes}")
    return (
        "\nChange of each task's primary metric against proportional sampling: "
        + "; ".join(parts)
        + "."
    )


def plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, e in summary.items() if "delta_m" in e]
    means = [summary[n]["delta_m"][0] for n in names]
    stds = [summary[n]["delta_m"][1] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.barh(names, means, xerr=stds, color=["tab:blue" if m >= 0 else "tab:red" for m in means])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("Δm% against single-task (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _row_file(name: str, settings: dict[str, Any]) -> Path:
    """Where one row's finished runs are kept, so an interrupted suite resumes and several
    processes can share the rows (keyed by the settings, so other settings start afresh)."""
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return ROOT / ".mtlkit_cache" / "bench_rows" / key / f"{name.replace('/', '__')}.json"


def mtl_suite(
    mode: str,
    only_rows: list[str] | None,
    seeds: int | None,
    steps: int | None,
    write: bool = True,
) -> Path | None:
    """Trains every selected row (skipping rows already finished with the same settings) and,
    with ``write``, summarises all rows into ``results/mtl_suite.*``."""
    settings = dict(MODES[mode])
    settings.update({k: v for k, v in {"seeds": seeds, "steps": steps}.items() if v is not None})
    table = rows()
    unknown = sorted(set(only_rows or []) - set(table))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows are {list(table)}")
    selected = {n: table[n] for n in only_rows} if only_rows else table  # in the order given
    start = time.perf_counter()
    for name, row in selected.items():
        path = _row_file(name, settings)
        if path.exists():
            continue
        runs = []
        for seed in range(settings["seeds"]):
            out = run_one(row, seed, mode, settings)
            runs.append(out)
            print(f"[bench] {name} seed {seed}: {out['seconds']} s", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(runs))
    if not write:
        return None
    results = {
        n: json.loads(_row_file(n, settings).read_text())
        for n in table
        if _row_file(n, settings).exists()
    }
    summary = summarise(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(summary, RESULTS / "mtl_suite.png")
    payload = {
        "mode": mode,
        "settings": settings,
        "base_config": str(BASE.relative_to(ROOT)),
        "rows": {n: {k: str(v) for k, v in table[n].items()} for n in results},
        "runs": results,
        "summary": summary,
        "train_seconds_total": round(
            sum(r["seconds"] for runs in results.values() for r in runs), 1
        ),
        "wall_seconds_this_call": round(time.perf_counter() - start, 1),
    }
    return write_result("mtl_suite", payload, markdown(summary, settings))


def _train_rows_in_workers(workers: int, mode: str, seeds: int | None, steps: int | None):
    """Trains the English rows in ``workers`` processes of one thread each (on a small CPU
    that beats one process with several threads); each takes every ``workers``-th row."""
    import os
    import subprocess
    import sys

    names = list(rows())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    extra = [f"--{k}={v}" for k, v in (("seeds", seeds), ("steps", steps)) if v is not None]
    extra += ["--full"] if mode == "full" else []
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.run", "--only", "mtl", "--no-summary", "--workers=1"]
            + [f"--rows={','.join(names[i::workers])}", *extra],
            env=env,
            cwd=ROOT,
        )
        for i in range(workers)
    ]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a benchmark worker failed")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="the large version (for a GPU)")
    parser.add_argument("--only", choices=["mtl", "throughput", "chinese"], action="append")
    parser.add_argument("--rows", help="comma-separated rows of the English suite")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int, help="steps per task")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes sharing the rows (1 torch thread each)"
    )
    parser.add_argument(
        "--no-summary", action="store_true", help="only train the rows (another call summarises)"
    )
    args = parser.parse_args()
    mode = "full" if args.full else "default"
    parts = args.only or ["throughput", "chinese", "mtl"]
    start = time.perf_counter()
    if "throughput" in parts:
        from benchmarks import throughput

        throughput.run(mode)
    if "chinese" in parts:
        from benchmarks import chinese

        chinese.run(mode)
    if "mtl" in parts:
        selected = args.rows.split(",") if args.rows else None
        if args.workers > 1 and selected is None:
            _train_rows_in_workers(args.workers, mode, args.seeds, args.steps)
        print(mtl_suite(mode, selected, args.seeds, args.steps, write=not args.no_summary))
    from benchmarks import update_readme

    update_readme.main()
    print(f"[bench] done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
