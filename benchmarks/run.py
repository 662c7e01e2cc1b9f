"""``make bench``: single-task baselines, sampling strategies and weighting methods on real data.

    python -m benchmarks.run                  # the default CPU suite (see below for its time)
    python -m benchmarks.run --full           # the whole MiniLM-L6, longer budgets (for a GPU)
    python -m benchmarks.run --only mtl       # one part: mtl, throughput, chinese, generation,
                                              # distillation (not in the default set)
    python -m benchmarks.run --rows single/trec,weighting/dwa --seeds 2 --steps 10 --allow-dirty
    python -m benchmarks.run --only mtl --budget-check   # the suite and its budget check

The English suite is ``configs/quickstart.yaml`` (MiniLM shared by TREC, BBC topic and the
sentiment-rating regression) plus one small override per row, trained in-process through the CLI.
Every row trains under validation model selection: validation every ``eval_every`` steps per task
(a multi-task row, one task's batch per step on average, about every ``3 * eval_every``, on a
divisor of its budget), early stopping on ``val/mean`` (the mean of the tasks' primary metrics; a
single task's own metric) after ``patience`` validations without improvement, within a budget of
``steps`` steps per task times the mode's ``task_budget`` factor (a multi-task row gets the sum of
its tasks' budgets), and is scored on the TEST split with the best checkpoint; the steps each run
used and its best step are recorded. The budget check (``--budget-check``; its rows are then
reported by every later run of the same commit) trains each single-task row again with twice the
steps (``budget/<task>``), and equal weighting's multi-task row (``budget/equal``): the report
says whether the budgets reach the single-task and the multi-task plateau. Rows are
compared seed by seed (:mod:`benchmarks.stats`, :mod:`benchmarks.suite_report`): against the
single-task rows and against equal weighting, absolute differences and Δm%, with 95 % intervals and
verdicts.

Provenance: a row's finished runs are cached under a key of the commit, the row's resolved
config (the CLI's ``--print_config`` text, hashed) and the settings; the suite refuses a dirty
tree unless ``--allow-dirty`` (then, like any partial run, the results are ``for_readme:
false`` and the README is left alone).

Default mode (CPU): MiniLM-L6's lower three layers (``HFEncoder(keep_layers=[0, 1, 2])``) with
the embeddings and the lowest layer frozen, mixed batches encoded one task at a time at each
task's own width (``stack_tasks=False``), short sequences, peak learning rates 3e-4 / 3e-3
(heads), at most 100 steps per task and 200 for TREC (400 in a multi-task row), validation every
25 steps per task; the MGDA-UB row is skipped (on the shared representation it is MGDA). One step
costs ~0.09 s (TREC alone), ~0.19 s (BBC alone), ~0.15 s (sentiment alone) and ~0.16 s (mixed
batches) of one core (process CPU time, which :class:`benchmarks.recorder.RunRecorder` records
for every run); a validation or test pass over 3 x 200 examples ~2 s. Earlier defaults: at
8a558b6 (multi-task rows validated every 25 steps, no budget rows) 5 seeds took 81 min on two
cores (``--workers 2``; 9,093 s of training); at 5ef84c8 (every 75 steps, with the budget rows)
74 min (8,284 s of training, ~600 s of it the budget rows); at bb0961c (TREC 200 steps,
multi-task rows 400, no MGDA-UB row, layer 0 trained, tasks stacked in one encoder pass) 88 min
(10,376 s of training and testing, ~650 s of it the budget rows); at ce6537b (two layers,
sentiment cut to 32 tokens, with ``budget/equal``, rows dealt to the workers by cost) 68 min,
short of the plateaus (``results/experiments/suite_2layers_ce6537b.md``); at 5027f80 (this
default, two long-lived worker processes, without the budget check) 71 min (8,262 s), the
budget check 19 min more, and sentiment and equal weighting still gained from twice the steps.
The table's ``2nd-half gain`` column and the budget check show whether rows reach their plateau.
``--full`` keeps the whole model, the configs' lengths and learning rates and 1,000 steps per
task (for a GPU); ``python -m benchmarks.suite_check`` retrains a subset on the whole model with
this mode's other settings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import (
    ROOT,
    config_hash,
    digest,
    git_state,
    machine,
    require_clean,
    write_json_atomic,
)
from benchmarks.suite_rows import (
    MODES,
    cli_args,
    is_budget_check,
    longest_first,
    row_cost,
    rows,
    seed_args,
    suite_rows,
)

CACHE = ROOT / ".mtlkit_cache" / "bench_rows"


def resolved_config(args: list[str], tmp: Path) -> str:
    """The resolved config of ``args`` (:func:`benchmarks.common.resolved_config`) with the
    run's temporary folder written as ``<tmp>``, so the text names the row, not the run."""
    return common.resolved_config(args).replace(str(tmp), "<tmp>")


def run_one(row: dict[str, Any], seed: int, mode: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Trains one row with one seed under validation model selection and scores the selected
    checkpoint on the test split; returns test metrics, steps used, the best step, the
    validation curve, the weight trajectories and wall times."""
    from benchmarks.recorder import RunRecorder
    from mtlkit.callbacks import metric_rows
    from mtlkit.cli import cli_main

    with tempfile.TemporaryDirectory() as tmp:
        args = cli_args(row, mode, settings, Path(tmp)) + seed_args(seed)
        start = time.perf_counter()
        cli = cli_main(args)
        fit_seconds = time.perf_counter() - start
        trainer = cli.trainer
        (recorder,) = [c for c in trainer.callbacks if isinstance(c, RunRecorder)]
        start = time.perf_counter()
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
        test_seconds = time.perf_counter() - start
        test = metric_rows(trainer.callback_metrics, "test")
        sizes = {t: len(split["train"]) for t, split in cli.datamodule.splits.items()}
    return {
        "seed": seed,
        "max_steps": trainer.max_steps,
        "steps": trainer.global_step,
        "seconds": round(fit_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "test": test,
        "train_sizes": sizes,
        **recorder.summary(),
    }


def row_provenance(name: str, mode: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What a row's results depend on: commit, the resolved config's hash, settings, machine;
    ``key`` (their digest) names the row's cache file."""
    row = rows()[name]
    with tempfile.TemporaryDirectory() as tmp:
        text = resolved_config(cli_args(row, mode, settings, Path(tmp)), Path(tmp))
    state = git_state()
    provenance = {
        "commit": state["commit"],
        "dirty": state["dirty"],
        "changes": state.get("changes"),  # what the dirty tree changed (None when clean)
        "config_hash": config_hash(text),
        "settings": settings,
        "machine": machine(),
    }
    keyed = {k: provenance[k] for k in ("commit", "changes", "config_hash", "settings")}
    return {**provenance, "key": digest(keyed)}


def _row_file(name: str, key: str) -> Path:
    """Where one row's finished runs are kept (an interrupted suite resumes; several processes
    share the rows); a new commit, config or setting gives a new key, so the row runs again."""
    return CACHE / key / f"{name.replace('/', '__')}.json"


def train_row(name: str, mode: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The row's record (provenance, wall time, runs), trained now unless cached."""
    provenance = row_provenance(name, mode, settings)
    path = _row_file(name, provenance["key"])
    if path.exists():
        return json.loads(path.read_text())
    start, runs = time.perf_counter(), []
    for seed in range(settings["seeds"]):
        out = run_one(rows()[name], seed, mode, settings)
        runs.append(
            {**out, "commit": provenance["commit"], "config_hash": provenance["config_hash"]}
        )
        print(f"[bench] {name} seed {seed}: {out['steps']} steps, {out['seconds']} s", flush=True)
    record = {**provenance, "wall_seconds": round(time.perf_counter() - start, 1), "runs": runs}
    write_json_atomic(path, record)
    return record


def _settings(mode: str, seeds: int | None, steps: int | None) -> dict[str, Any]:
    settings = dict(MODES[mode])
    settings.update({k: v for k, v in {"seeds": seeds, "steps": steps}.items() if v is not None})
    return settings


def mtl_suite(
    mode: str,
    only_rows: list[str] | None,
    seeds: int | None,
    steps: int | None,
    write: bool = True,
    for_readme: bool = True,
    budget_check: bool = False,
) -> Path | None:
    """Trains every selected row (skipping rows cached under the same key) and, with ``write``,
    reports every row of the table into ``results/mtl_suite.*``."""
    from benchmarks import suite_report

    settings = _settings(mode, seeds, steps)
    table = suite_rows(mode)
    unknown = sorted(set(only_rows or []) - set(table))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows are {list(table)}")
    selected = only_rows or default_rows(mode, settings, budget_check)  # in the order given
    records = {name: train_row(name, mode, settings) for name in selected}
    if not write:
        return None
    # A partial table (some rows, other seeds or budgets) is never for the README.
    for_readme = for_readme and only_rows is None and seeds is None and steps is None
    return suite_report.write(records, mode, settings, {n: table[n] for n in records}, for_readme)


def default_rows(mode: str, settings: dict[str, Any], budget_check: bool) -> list[str]:
    """The rows of a whole suite: every row of the mode, the budget check's only with
    ``budget_check`` or when they are already cached under this commit and config."""
    table = suite_rows(mode)
    return [
        n
        for n, row in table.items()
        if budget_check
        or not is_budget_check(row)
        or _row_file(n, row_provenance(n, mode, settings)["key"]).exists()
    ]


def _train_rows_in_workers(
    workers: int,
    mode: str,
    seeds: int | None,
    steps: int | None,
    allow_dirty: bool,
    budget_check: bool = False,
) -> None:
    """Trains the English rows, one process each and ``workers`` at a time, costliest first
    (:func:`common.train_in_workers`, :func:`benchmarks.suite_rows.longest_first`)."""
    settings = _settings(mode, seeds, steps)
    table = suite_rows(mode)
    costs = {n: row_cost(table[n], settings) for n in default_rows(mode, settings, budget_check)}
    extra = [f"--{k}={v}" for k, v in (("seeds", seeds), ("steps", steps)) if v is not None]
    extra += ["--full"] if mode == "full" else []
    extra += ["--allow-dirty"] if allow_dirty else []
    extra += ["--only", "mtl", "--no-summary", "--workers=1"]
    common.train_in_workers("benchmarks.run", longest_first(costs), workers, extra)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="the large version (for a GPU)")
    parser.add_argument(
        "--only",
        choices=["mtl", "throughput", "chinese", "generation", "distillation"],
        action="append",
    )
    parser.add_argument("--rows", help="comma-separated rows of the English suite")
    parser.add_argument(
        "--budget-check",
        action="store_true",
        help="also train the budget check's rows (budget/: other rows with twice the steps)",
    )
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int, help="most steps per task (early stopping)")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes sharing the rows (1 torch thread each)"
    )
    parser.add_argument(
        "--no-summary", action="store_true", help="only train the rows (another call summarises)"
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run from a tree with uncommitted changes (results marked for_readme: false)",
    )
    args = parser.parse_args(argv)
    clean = require_clean(args.allow_dirty, "make bench")
    mode = "full" if args.full else "default"
    parts = args.only or ["throughput", "chinese", "generation", "mtl"]
    start = time.perf_counter()
    if "throughput" in parts:
        from benchmarks import throughput

        throughput.run(mode)
    if "chinese" in parts:
        from benchmarks import chinese

        chinese.run(mode)
    if "generation" in parts:
        from benchmarks import generation

        generation.run(mode)
    if "distillation" in parts:
        from benchmarks import distillation

        distillation.run(mode)
    if "mtl" in parts:
        selected = args.rows.split(",") if args.rows else None
        if args.workers > 1 and selected is None:
            _train_rows_in_workers(
                args.workers, mode, args.seeds, args.steps, args.allow_dirty, args.budget_check
            )
        summary = not args.no_summary
        print(mtl_suite(mode, selected, args.seeds, args.steps, summary, clean, args.budget_check))
    if not args.no_summary:
        from benchmarks import update_readme

        try:
            update_readme.main()
        except SystemExit as refusal:  # the results are kept; only the README is not updated
            print(f"[bench] README not updated: {refusal}")
    print(f"[bench] done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
