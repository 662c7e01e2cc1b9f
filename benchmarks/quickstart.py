"""Runs ``configs/quickstart.yaml`` (what ``make demo`` runs) and records time and metrics.

python -m benchmarks.quickstart            # writes benchmarks/results/quickstart.{json,md}

Records the config's path and the hash of its resolved text (the CLI's ``--print_config``), and
refuses a dirty tree unless ``--allow-dirty`` (results then not for the README).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import config_hash, require_clean, resolved_config, write_result
from mtlkit.callbacks import metric_rows
from mtlkit.cli import cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def markdown(rows: dict[str, dict[str, float]], seconds: float, mean: float) -> str:
    lines = [
        "| task | kind | metric | validation |",
        "|---|---|---|---|",
    ]
    for task, values in sorted(rows.items()):
        for metric in sorted(values):
            if metric != "loss":
                lines.append(f"| {task} | | {metric} | {values[metric]:.3f} |")
    lines.append(
        f"\nMean of the primary metrics: {mean:.3f}. Wall time of the run: {seconds:.0f} s."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument(
        "--allow-dirty", action="store_true", help="run from uncommitted changes (not for README)"
    )
    args = parser.parse_args()
    require_clean(args.allow_dirty, "benchmarks.quickstart")
    resolved = resolved_config(["fit", "--config", args.config])
    start = time.perf_counter()
    cli = cli_main(["fit", "--config", args.config])
    seconds = time.perf_counter() - start
    metrics = cli.trainer.callback_metrics
    rows = metric_rows(metrics, "val")
    kinds = {t.name: type(t).__name__ for t in cli.datamodule.tasks}
    text = markdown(rows, seconds, float(metrics["val/mean"]))
    for task, kind in kinds.items():
        text = text.replace(f"| {task} | |", f"| {task} | {kind} |")
    payload = {
        "config": Path(args.config).name,
        "config_hash": config_hash(resolved),
        "wall_seconds": round(seconds, 1),
        "global_steps": cli.trainer.global_step,
        "val": rows,
        "val_mean": float(metrics["val/mean"]),
        "task_types": kinds,
    }
    print(write_result("quickstart", payload, text))


if __name__ == "__main__":
    main()
