"""Gradient-conflict diagnostics: per-task gradient norms and pairwise cosine similarity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from mtlkit.weighting import StepContext, StepObserver, WeightedLoss
from mtlkit.weighting.layers import select_shared_layer
from mtlkit.weighting.task_gradients import task_gradients

__all__ = [
    "GradientDiagnostics",
    "cosine_matrix",
    "log_image",
    "matrix_image",
    "task_gradients",
]


def cosine_matrix(grads: dict[str, Tensor]) -> Tensor:
    """``[T, T]`` cosine similarity of the task gradients (0 where a gradient is zero)."""
    g = torch.stack(list(grads.values()))
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def matrix_image(matrix: np.ndarray, cell: int = 24) -> np.ndarray:
    """An ``[H, W, 3]`` float image of values in [-1, 1]: blue (-1), white (0), red (+1)."""
    m = np.clip(matrix, -1.0, 1.0)
    red = np.where(m < 0, 1.0 + m, 1.0)
    blue = np.where(m > 0, 1.0 - m, 1.0)
    green = 1.0 - np.abs(m)
    rgb = np.stack([red, green, blue], axis=-1)
    return np.kron(rgb, np.ones((cell, cell, 1)))


def log_image(logger: Logger, key: str, image: np.ndarray, step: int) -> bool:
    """Logs an ``[H, W, 3]`` float image in [0, 1] through ``logger``, where it can store one.

    TensorBoard (an image summary), Weights & Biases (``wandb.Image`` under ``key``) and MLflow
    (a step-indexed image artifact of the run) do; other loggers (CSV) store no images.

    Returns:
        Whether the image was logged.
    """
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, image, step, dataformats="HWC")
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=key, images=[image], step=step)
    elif isinstance(logger, MLFlowLogger):
        # MLflow's metric-key rules allow "/", its image keys are file names: no "/".
        name = key.replace("/", "_")
        logger.experiment.log_image(logger.run_id, image, key=name, step=step)
    else:
        return False
    return True


class GradientDiagnostics(L.Callback, StepObserver):
    """Logs per-task gradient norms and gradient conflict every ``every_n_steps`` steps.

    The model hands each training step's losses and :class:`~mtlkit.weighting.StepContext` to
    this callback before the backward pass (:class:`~mtlkit.weighting.StepObserver`). On a logging
    step it reads each task's gradient on one shared layer (by default the last one, as GradNorm)
    from the step's ``ctx.gradients``: rows the weighting method already took (a gradient method
    on the parameters, GradNorm on the same layer) are reused, otherwise they are taken there (a
    pass through the heads and that layer only). It logs ``diag/<task>/grad_norm``,
    ``diag/cos/<a>~<b>`` and an image of the cosine matrix (``diag/gradient_cosine``) through
    every logger that stores images (TensorBoard, Weights & Biases, MLflow: :func:`log_image`);
    a logger that stores none (CSV) gets one note and the scalars only. Task weights are logged
    by the model every step (``train/<task>/weight``). Only tasks present in the step (on this
    process) are compared.

    Args:
        every_n_steps: Logging interval in optimisation steps.
        shared_layer: Substring or regex of the shared parameter(s) to use (default: last layer).
    """

    def __init__(self, every_n_steps: int = 100, shared_layer: str | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.shared_layer = shared_layer
        self.last: dict[str, Any] = {}
        self._noted: set[str] = set()

    def on_weighted_step(
        self,
        trainer: L.Trainer,
        losses: Mapping[str, Tensor],
        ctx: StepContext,
        result: WeightedLoss,
    ) -> None:
        if trainer.global_step % self.every_n_steps != 0:
            return
        local = {t: loss for t, loss in losses.items() if loss.requires_grad}
        if len(local) < 2:
            return
        named = select_shared_layer(ctx.named_shared_parameters(), self.shared_layer, "diagnostics")
        rows = ctx.gradients.of_parameters(local, [p for _, p in named], scale=ctx.loss_scale)
        grads = dict(zip(local, rows, strict=True))
        cos = cosine_matrix(grads)
        names = list(grads)
        values = {f"diag/{t}/grad_norm": g.norm() for t, g in grads.items()}
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                values[f"diag/cos/{a}~{names[j]}"] = cos[i, j]
        # Written straight to the loggers: self.log would repeat the value on later steps.
        for logger in trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in values.items()}, trainer.global_step)
        self.last = {
            "tasks": names,
            "cosine": cos.detach().cpu().numpy(),
            "step": trainer.global_step,
        }
        self._log_image(trainer)

    def _log_image(self, trainer: L.Trainer) -> None:
        image = matrix_image(self.last["cosine"])
        for logger in trainer.loggers:
            if log_image(logger, "diag/gradient_cosine", image, self.last["step"]):
                continue
            kind = type(logger).__name__
            if kind not in self._noted:
                self._noted.add(kind)
                rank_zero_info(
                    f"GradientDiagnostics: {kind} stores no images; the gradient cosine matrix "
                    "is logged as the diag/cos/<a>~<b> scalars only"
                )
