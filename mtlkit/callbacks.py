"""Callbacks shipped with mtlkit's default trainer."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from mtlkit.run_folder import log_dir


class ValidationTable(L.Callback):
    """Prints a per-task table of the last validation metrics and names the run directory."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(format_table(trainer, "val"))
            print(f"Run directory: {run_directory(trainer)}")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # `mtlkit validate` (in a fit, the last validation is printed at the end instead)
        if trainer.state.fn == TrainerFn.VALIDATING and trainer.is_global_zero:
            print(format_table(trainer, "val"))

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


class DataSummary(L.Callback):
    """Prints one line before training: each task's train/validation size and the share of
    the first batches the sampling strategy gives it, the batch mode and steps per epoch."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            line = data_summary(trainer.datamodule)
            if line:
                print(line)


def data_summary(datamodule: Any) -> str | None:
    """``data: 2 tasks, homogeneous batches of 4, 3 steps/epoch: trec 7 train / 1 val (p=0.50),
    ...``; ``None`` for a data module without mtlkit's task splits."""
    splits = getattr(datamodule, "splits", None)
    sampling = getattr(datamodule, "sampling", None)
    if not splits or sampling is None:
        return None
    names = list(datamodule.task_names)
    sizes = [len(splits[n]["train"]) if "train" in splits[n] else 0 for n in names]
    probs = sampling.probabilities(sizes, 0.0)
    sampler = getattr(datamodule, "train_sampler", None)
    steps = getattr(sampler, "steps_per_epoch", None) or datamodule.steps_per_epoch
    parts = []
    for name, size, p in zip(names, sizes, probs, strict=True):
        val = len(splits[name]["validation"]) if "validation" in splits[name] else 0
        parts.append(f"{name} {size:,} train / {val:,} val (p={float(p):.2f})")
    head = f"data: {len(names)} task(s), {datamodule.batch_mode} batches of {datamodule.batch_size}"
    head += f", {steps} steps/epoch" if steps else ""
    return f"{head}, {type(sampling).__name__} sampling: " + ", ".join(parts)


class TaskProgressBar(RichProgressBar):
    """Rich's progress bar with each task's last training loss next to the total
    (``trec_loss``), read from what the model logs (``train/<task>/loss``)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.update(task_losses(trainer.callback_metrics))
        return metrics


def task_losses(metrics: dict[str, Any]) -> dict[str, float]:
    """``{"<task>_loss": value}`` from ``train/<task>/loss`` keys, rounded for display."""
    out = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "train" and parts[2] == "loss":
            out[f"{parts[1]}_loss"] = round(float(value), 3)
    return out
