"""Regularisers of fine-tuning that act on gradients, as callbacks."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch import Tensor
from torch.optim import Optimizer

from mtlkit.errors import ConfigError


class L2SP(L.Callback):
    """L2-SP (Li, Grandvalet & Davoine 2018, "Explicit inductive bias for transfer learning with
    convolutional networks"): pulls the encoder toward its starting point instead of toward 0.

    The penalty ``alpha/2 * ||w - w0||^2`` over the encoder plus ``beta/2 * ||w||^2`` over the
    new parameters (the heads) is added through its gradient, ``alpha * (w - w0)`` and
    ``beta * w``, in ``on_before_optimizer_step``: once per optimizer step (so the same with
    gradient accumulation), after mixed precision has unscaled the gradients and before gradient
    clipping. Only parameters that received a gradient this step are pulled: frozen ones and
    skipped steps stay untouched. The penalty's value is logged as ``train/l2sp``.

    ``w0`` is taken at fit start, after the model has loaded ``init_from``, and is saved in the
    checkpoint, so a resumed run pulls toward the same weights. With AdamW the pull is rescaled
    per parameter like any gradient (the paper uses SGD); ``weight_decay`` still pulls toward 0.

    Args:
        alpha: Strength of the pull of the encoder toward its starting weights.
        beta: Plain L2 (weight decay as a loss term) on the heads.
    """

    def __init__(self, alpha: float = 0.01, beta: float = 0.0) -> None:
        if alpha < 0 or beta < 0:
            raise ConfigError(f"L2SP alpha and beta must be >= 0, got {alpha} and {beta}")
        self.alpha, self.beta = alpha, beta
        self.reference: dict[str, Tensor] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "encoder") or not hasattr(pl_module, "heads"):
            raise ConfigError("L2SP needs a mtlkit MultiTaskModule (an encoder and heads)")
        if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy | ModelParallelStrategy):
            raise ConfigError(
                "L2SP needs whole parameters and gradients; it does not work with sharding "
                f"strategies ({type(trainer.strategy).__name__})"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = dict(pl_module.encoder.named_parameters())
        if not self.reference:  # a fresh run; a resumed one has its checkpoint's reference
            self.reference = {n: p.detach().clone() for n, p in params.items()}
            return
        if set(self.reference) != set(params):
            raise ConfigError(
                "the L2SP reference weights in the checkpoint do not match this encoder's "
                f"parameters (e.g. {sorted(set(self.reference) ^ set(params))[:3]})"
            )
        self.reference = {n: w.to(params[n]) for n, w in self.reference.items()}

    @torch.no_grad()
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Optimizer
    ) -> None:
        penalty = torch.zeros((), device=pl_module.device)
        for name, p in pl_module.encoder.named_parameters():
            if p.grad is not None and self.alpha:
                diff = p - self.reference[name]
                p.grad.add_(diff, alpha=self.alpha)
                penalty += 0.5 * self.alpha * diff.float().pow(2).sum()
        for p in pl_module.heads.parameters():
            if p.grad is not None and self.beta:
                p.grad.add_(p, alpha=self.beta)
                penalty += 0.5 * self.beta * p.float().pow(2).sum()
        pl_module.log("train/l2sp", penalty, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reference = dict(state_dict["reference"])
