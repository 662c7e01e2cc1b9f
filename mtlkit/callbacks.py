"""Callbacks shipped with mtlkit's default trainer."""

from __future__ import annotations

import lightning as L

from mtlkit.run_folder import log_dir


class ValidationTable(L.Callback):
    """Prints a per-task table of the last validation metrics and names the run directory."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(format_table(trainer, "val"))
            print(f"Run directory: {run_directory(trainer)}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(format_table(trainer, "test"))


def run_directory(trainer: L.Trainer) -> str:
    """Where this run's logs and checkpoints are.

    Asked by rank 0 alone: ``trainer.log_dir`` broadcasts, a collective that the other
    processes would never join (under DDP the run crashed at its very end).
    """
    return log_dir(trainer)


def metric_rows(metrics: dict, split: str) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from ``<split>/<task>/<metric>`` keys."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == split:
            rows.setdefault(parts[1], {})[parts[2]] = float(value)
    return rows


def format_table(trainer: L.Trainer, split: str) -> str:
    """A plain-text table: one row per task, one column per metric."""
    rows = metric_rows(trainer.callback_metrics, split)
    if not rows:
        return f"(no {split} metrics logged)"
    columns = sorted({m for r in rows.values() for m in r})
    lines = [" | ".join(["task", *columns])]
    for task, values in sorted(rows.items()):
        cells = [f"{values[c]:.4f}" if c in values else "-" for c in columns]
        lines.append(" | ".join([task, *cells]))
    mean = trainer.callback_metrics.get(f"{split}/mean")
    if mean is not None:
        lines.append(f"mean of primary metrics: {float(mean):.4f}")
    width = max(len(line) for line in lines)
    return "\n".join([f"{split} metrics per task", "-" * width, *lines])
