"""What a benchmark run records besides its scores: the task weights at every step and the
validation curve (for model selection), and whether a weighting method's weights ever moved."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor

from mtlkit.weighting import StepContext, StepObserver, WeightedLoss

#: A dynamic method whose weights never moved further than this from their start is flagged.
STILL_TOLERANCE = 1e-3


class RunRecorder(L.Callback, StepObserver):
    """Records each training step's task weights (what the weighting method returned, the values
    logged as ``train/<task>/weight``), the monitored validation metric at every validation, and
    the process CPU time of each training step and validation (robust to other load on the
    machine, unlike wall time; the suite's time estimate comes from it).

    Args:
        monitor: The validation metric of the validation curve (``val/mean``).
    """

    def __init__(self, monitor: str = "val/mean") -> None:
        self.monitor = monitor
        self.weights: dict[str, list[tuple[int, float]]] = {}
        self.curve: list[tuple[int, float]] = []
        self.step_cpu: list[float] = []
        self.val_cpu: list[float] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._started = time.process_time()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.step_cpu.append(time.process_time() - self._started)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.process_time()

    def on_weighted_step(
        self, trainer: Any, losses: Mapping[str, Tensor], ctx: StepContext, result: WeightedLoss
    ) -> None:
        for task, weight in result.weights.items():
            self.weights.setdefault(task, []).append((ctx.step, float(weight)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_cpu.append(time.process_time() - self._started)
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking:
            self.curve.append((trainer.global_step, float(value)))

    def best_step(self) -> int | None:
        """The step of the best (highest) validation value: the selected checkpoint's."""
        return max(self.curve, key=lambda point: point[1])[0] if self.curve else None

    def summary(self, points: int = 50) -> dict[str, Any]:
        """JSON-ready: the validation curve, the best step, each task's weight trajectory
        thinned to at most ``points`` points, and the largest move of any weight."""
        return {
            "val_curve": self.curve,
            "best_step": self.best_step(),
            "weights": {t: thin(v, points) for t, v in self.weights.items()},
            "max_weight_move": max_move(self.weights),
            "step_cpu_seconds": statistics.median(self.step_cpu) if self.step_cpu else None,
            "val_cpu_seconds": statistics.median(self.val_cpu) if self.val_cpu else None,
        }


def thin(series: list[tuple[int, float]], points: int) -> list[tuple[int, float]]:
    """At most ``points`` evenly spaced entries of ``series``, the first and last included."""
    if len(series) <= points:
        return list(series)
    step = (len(series) - 1) / (points - 1)
    return [series[round(i * step)] for i in range(points)]


def max_move(weights: Mapping[str, list[tuple[int, float]]]) -> float:
    """``max over tasks and steps of |w_t - w_0|`` (0 when nothing was recorded)."""
    return max(
        (abs(w - series[0][1]) for series in weights.values() for _, w in series), default=0.0
    )


def plot_trajectories(trajectories: Mapping[str, Mapping[str, list]], path: Path) -> None:
    """One panel per row: each task's weight over the steps (seed 0's run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(trajectories)
    cols = 4
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for task, series in trajectories[name].items():
            ax.plot([s for s, _ in series], [w for _, w in series], label=task)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if names:
        axes.flat[0].legend(fontsize=7)
    fig.supxlabel("step")
    fig.supylabel("task weight")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
