"""The two sides timed by :mod:`benchmarks.throughput`: a Lightning fit and a plain loop.

Both run the given precomputed batches, one per step, and return per-step times (wall clock and
the process's CPU time, which other load on a shared machine disturbs less), the loop's wall time
per step after the warm-up, and a fingerprint of every batch trained on.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtlkit.testing.trainer import quiet_trainer

Batch = dict[str, Any]

# Precomputed batches need no workers, and the smoke run is shorter than log_every_n_steps.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")


def sync(device: torch.device) -> None:
    """Waits for queued GPU work, so that a timer reads the time the step really took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fingerprint(batch: Batch) -> list[tuple[Any, ...]]:
    """A cheap content key of a collated batch: task, shape and sums of ids and mask."""
    return [
        (n, tuple(s["input_ids"].shape), int(s["input_ids"].sum()), int(s["attention_mask"].sum()))
        for n, s in batch["tasks"].items()
    ]


class _Clock:
    """Per-step wall and CPU times, when each step ended, and the batches seen."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.ends: list[float] = []
        self.fingerprints: list[list[tuple[Any, ...]]] = []
        self._start = (0.0, 0.0)

    def start(self, device: torch.device) -> None:
        sync(device)
        self._start = (time.perf_counter(), time.process_time())

    def stop(self, device: torch.device, batch: Batch) -> None:
        sync(device)
        self.ends.append(time.perf_counter())
        self.wall.append(self.ends[-1] - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])
        self.fingerprints.append(fingerprint(batch))  # after the clock: not part of the step

    def result(self, warmup: int) -> dict[str, Any]:
        measured = len(self.ends) - warmup
        return {
            "step": sum(self.wall[warmup:]) / measured,
            "cpu": sum(self.cpu[warmup:]) / measured,
            "loop": (self.ends[-1] - self.ends[warmup - 1]) / measured,
            "fingerprints": self.fingerprints,
        }


class StepTimer(L.Callback):
    """Starts the clock in ``on_train_batch_start`` and stops it in ``on_train_batch_end``."""

    def __init__(self) -> None:
        self.clock = _Clock()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.clock.start(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self.clock.stop(pl_module.device, batch)


def _identity(batch: Batch) -> Batch:
    return batch


class LightningSide:
    """Fits a LightningModule with a fresh ``Trainer`` on precomputed batches, one per step.

    Args:
        model: The module (kept across rounds; each fit builds a fresh optimizer).
        logdir: Where TensorBoard files go.
        tensorboard: Log to TensorBoard every 10 steps (as the quickstart config).
        progress_bar: Show Lightning's default progress bar (as the quickstart config).
        mute_log: Replace the module's ``self.log`` by a no-op (what logging costs).
    """

    def __init__(
        self,
        model: L.LightningModule,
        logdir: str,
        tensorboard: bool = False,
        progress_bar: bool = False,
        mute_log: bool = False,
    ) -> None:
        self.model, self.logdir, self.mute_log = model, logdir, mute_log
        self.tensorboard, self.progress_bar = tensorboard, progress_bar

    def run(self, batches: list[Batch], warmup: int) -> dict[str, Any]:
        timer = StepTimer()
        trainer = quiet_trainer(
            accelerator="auto",
            devices=1,
            max_steps=len(batches),
            logger=TensorBoardLogger(self.logdir) if self.tensorboard else False,
            log_every_n_steps=10,
            enable_progress_bar=self.progress_bar,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[timer],
        )
        loader = DataLoader(batches, batch_size=None, collate_fn=_identity)  # type: ignore[arg-type]
        if self.mute_log:
            self.model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
        try:
            trainer.fit(self.model, train_dataloaders=loader)
        finally:
            self.model.__dict__.pop("log", None)
        return timer.clock.result(warmup)


class ModuleLoop:
    """mtlkit's ``training_step`` in a hand-written loop (no Trainer; ``self.log`` muted, since
    it needs one): what the module costs before Lightning's loop adds its own."""

    def __init__(self, model: L.LightningModule) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model

    def run(self, batches: list[Batch], warmup: int) -> dict[str, Any]:
        model = self.model.to(self.device).train()
        optimizer = model.configure_optimizers()  # the module's own parameter groups
        clock = _Clock()
        model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
        try:
            for i, batch in enumerate(batches):
                batch = _to(batch, self.device)
                clock.start(self.device)
                model.training_step(batch, i).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                clock.stop(self.device, batch)
        finally:
            model.__dict__.pop("log", None)
        return clock.result(warmup)


def _to(batch: Batch, device: torch.device) -> Batch:
    subs = batch["tasks"].items()
    return {"tasks": {n: {k: v.to(device) for k, v in s.items()} for n, s in subs}}


class PlainLoop:
    """The hand-written loop: ``AutoModel`` forward, mean pooling, head, loss, AdamW.

    Args:
        model: ``ModuleDict`` with ``encoder`` (an ``AutoModel``) and ``heads`` (one per task).
        scales: Regression tasks and the divisor of their targets (MSE on the scaled target);
            every other task is a classification (cross-entropy).
        optimizer: Builds the optimizer from parameters (a fresh one every run, as Lightning).
    """

    def __init__(self, model: nn.Module, scales: dict[str, float], optimizer: Any) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).train()
        self.scales, self.optimizer = scales, optimizer

    def step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> Tensor:
        ((name, sub),) = batch["tasks"].items()
        mask = sub["attention_mask"]
        hidden = self.model["encoder"](
            input_ids=sub["input_ids"],
            attention_mask=mask,
            token_type_ids=sub.get("token_type_ids"),
        ).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        out = self.model["heads"][name](pooled)
        if name in self.scales:
            loss = F.mse_loss(out.squeeze(-1), sub["labels"] / self.scales[name])
        else:
            loss = F.cross_entropy(out, sub["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def run(self, batches: list[Batch], warmup: int) -> dict[str, Any]:
        optimizer = self.optimizer(self.model.parameters())
        clock = _Clock()
        for batch in batches:
            batch = _to(batch, self.device)
            clock.start(self.device)
            self.step(batch, optimizer)
            clock.stop(self.device, batch)
        return clock.result(warmup)
