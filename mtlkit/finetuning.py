"""Fine-tuning regimes as callbacks: freeze the encoder, freeze its bottom layers, unfreeze it
gradually (ULMFiT), and stop early on a named validation metric.

Freezing happens in ``setup``, before the model's ``configure_optimizers``, which leaves frozen
parameters out of the optimizer. Parameters an encoder subclass creates later (in
``prepare_tasks``, when the tasks' labels are only known after the data is set up) are not
frozen by these callbacks.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BaseFinetuning, EarlyStopping
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer

from mtlkit._compat import chained_schedulers, last_lrs
from mtlkit.errors import ConfigError


def _encoder(pl_module: L.LightningModule) -> Any:
    encoder = getattr(pl_module, "encoder", None)
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "layers"):
        raise ConfigError(
            f"{type(pl_module).__name__} has no mtlkit encoder (an `encoder` with `layers`); "
            "the fine-tuning callbacks need mtlkit.training.MultiTaskModule"
        )
    return encoder


def _set_trainable(params: Any, trainable: bool) -> None:
    for p in params:
        p.requires_grad_(trainable)


class FreezeEncoder(BaseFinetuning):
    """Trains the heads (and any weighting parameters) on a frozen encoder.

    The encoder is also kept in eval mode (dropout off) by default: it is then a fixed feature
    extractor whose training features are exactly its inference features (as with cached
    features), and no computation graph is kept for it. BERT-like encoders have no batch
    statistics, so eval mode only changes dropout.

    Args:
        train_dropout: Keep the encoder's dropout active during training (noisy features act
            as a regulariser of the heads).
    """

    def __init__(self, train_dropout: bool = False) -> None:
        super().__init__()
        self.train_dropout = train_dropout

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        _set_trainable(_encoder(pl_module).parameters(), False)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, opt: Optimizer) -> None:
        """Nothing is ever unfrozen."""

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning switches the whole module back to train mode (fit start, after validation).
        encoder = _encoder(pl_module)
        if not self.train_dropout and encoder.training:
            encoder.eval()


class FreezeLayers(BaseFinetuning):
    """Keeps the embeddings and the bottom ``n`` encoder layers frozen for the whole run.

    Lower layers hold general features that transfer as they are; freezing them saves their
    gradients and optimizer state and guards a small data set against forgetting.

    Args:
        n: Number of bottom transformer layers to freeze (0 to the encoder's layer count).
        embeddings: Freeze the embeddings too.
    """

    def __init__(self, n: int, embeddings: bool = True) -> None:
        super().__init__()
        if n < 0:
            raise ConfigError(f"FreezeLayers n must be >= 0, got {n}")
        self.n, self.embeddings = n, embeddings

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        encoder = _encoder(pl_module)
        layers = encoder.layers
        if self.n > len(layers):
            raise ConfigError(
                f"FreezeLayers(n={self.n}) but the encoder has only {len(layers)} layers"
            )
        for layer in list(layers)[: self.n]:
            _set_trainable(layer.parameters(), False)
        if self.embeddings:
            _set_trainable(encoder.embeddings.parameters(), False)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, opt: Optimizer) -> None:
        """Nothing is ever unfrozen."""


class GradualUnfreeze(BaseFinetuning):
    """Gradual unfreezing (Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text
    Classification", ULMFiT): the heads train first on a frozen encoder, then the top layer is
    unfrozen, then one more layer downwards every ``every`` steps or epochs, the embeddings last.

    Each unfrozen layer joins the optimizer as its own parameter group (``encoder.layer_<i>``,
    ``encoder.embeddings``) at ``lr_ratio`` times the base learning rate (times the model's
    ``layer_lr_decay`` factor for that layer, when set), and the learning-rate schedulers are
    extended so the new group follows the schedule from the step it joins.

    Not supported with DDP: parameters that become trainable after DDP wrapped the model would
    not have their gradients synchronised.

    Args:
        every: Steps or epochs between two unfreezings.
        unit: ``steps`` (optimizer steps) or ``epochs``.
        lr_ratio: Learning rate of an unfrozen layer relative to the optimizer's base rate.
        start_frozen: The first ``every`` steps/epochs train the heads alone; ``False`` unfreezes
            the top layer from the start.
    """

    def __init__(
        self,
        every: int = 1,
        unit: Literal["steps", "epochs"] = "epochs",
        lr_ratio: float = 1.0,
        start_frozen: bool = True,
    ) -> None:
        super().__init__()
        if every < 1:
            raise ConfigError(f"GradualUnfreeze every must be >= 1, got {every}")
        if unit not in ("steps", "epochs"):
            raise ConfigError(f"GradualUnfreeze unit must be 'steps' or 'epochs', got {unit!r}")
        if lr_ratio <= 0:
            raise ConfigError(f"GradualUnfreeze lr_ratio must be > 0, got {lr_ratio}")
        self.every, self.unit, self.lr_ratio = every, unit, lr_ratio
        self.start_frozen = start_frozen
        self._applied = -1  # units unfrozen so far in this process (re-derived after a resume)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.world_size > 1:
            raise ConfigError(
                "GradualUnfreeze does not work with several processes (DDP): layers unfrozen "
                "after the model is wrapped would not have their gradients synchronised"
            )
        self._applied = -1
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        _set_trainable(_encoder(pl_module).parameters(), False)

    def units(self, pl_module: L.LightningModule) -> list[tuple[str, list[nn.Parameter], int]]:
        """``(group name, parameters, layer_lr_decay exponent)`` in unfreezing order, top first
        (the exponents of ``MultiTaskModule``: ``N - i`` for layer ``i``, ``N + 1`` for the
        embeddings; what sits above the last layer joins it)."""
        groups = _encoder(pl_module).layer_groups()  # embeddings, layer 0..N-1, rest
        n = len(groups) - 2
        top = [(f"encoder.layer_{n - 1}", groups[n] + groups[-1], 1)] if n > 0 else []
        middle = [(f"encoder.layer_{i}", groups[i + 1], n - i) for i in reversed(range(n - 1))]
        return top + middle + [("encoder.embeddings", groups[0], n + 1)]

    def target(self, trainer: L.Trainer) -> int:
        """How many units are unfrozen at the current step/epoch."""
        t = trainer.global_step if self.unit == "steps" else trainer.current_epoch
        return t // self.every + (0 if self.start_frozen else 1)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, opt: Optimizer) -> None:
        self._advance(pl_module.trainer, pl_module, opt)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # a resumed run gets its added groups back
        # ... and its schedulers must know them before their state is restored.
        extend_schedulers(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Only at an optimizer-step boundary: a layer unfrozen inside a gradient-accumulation
        # window would be updated with part of the window's gradient.
        if self.unit != "steps" or batch_idx % trainer.accumulate_grad_batches:
            return
        for index, optimizer in enumerate(trainer.optimizers):
            before = len(optimizer.param_groups)
            self._advance(trainer, pl_module, optimizer)
            self._store(pl_module, index, before, optimizer.param_groups)  # saved for resume

    def _advance(self, trainer: L.Trainer, pl_module: L.LightningModule, opt: Optimizer) -> None:
        units = self.units(pl_module)
        target = min(self.target(trainer), len(units))
        if target == self._applied:
            return
        in_optimizer = {id(p) for g in opt.param_groups for p in g["params"]}
        base = float(opt.defaults["lr"]) * self.lr_ratio
        decay = getattr(pl_module, "layer_lr_decay", None)
        for name, params, exponent in units[:target]:
            _set_trainable(params, True)  # after a resume the groups exist but are frozen
            new = [p for p in params if id(p) not in in_optimizer]  # by identity, not value
            if new:
                scale = decay**exponent if decay else 1.0
                add_param_group(trainer, opt, {"params": new, "name": name}, base * scale)
                count = sum(p.numel() for p in new)
                rank_zero_info(
                    f"GradualUnfreeze: unfroze {name} at step {trainer.global_step} (epoch "
                    f"{trainer.current_epoch}): {count:,} parameters, lr {base * scale:.3g}"
                )
        self._applied = target


def add_param_group(
    trainer: L.Trainer, optimizer: Optimizer, group: dict[str, Any], initial_lr: float
) -> None:
    """Adds a parameter group mid-run with base rate ``initial_lr``, at the rate the schedule
    gives now, and extends the schedulers to it."""
    optimizer.add_param_group({**group, "lr": initial_lr, "initial_lr": initial_lr})
    for config in trainer.lr_scheduler_configs:
        base = getattr(config.scheduler, "base_lrs", None)
        if config.scheduler.optimizer is optimizer and base and base[0]:
            factor = optimizer.param_groups[0]["lr"] / base[0]  # where the schedule is now
            optimizer.param_groups[-1]["lr"] = initial_lr * factor
    extend_schedulers(trainer)


def extend_schedulers(trainer: L.Trainer) -> None:
    """Extends every scheduler to parameter groups added after it was built.

    A scheduler keeps one entry per group (``base_lrs``; ``LambdaLR`` also ``lr_lambdas``) and
    zips them with the groups, so a group added later would never be scheduled (or, with
    torch's strict zip, fail). New entries copy the first group's schedule.
    """
    for config in trainer.lr_scheduler_configs:
        groups = config.scheduler.optimizer.param_groups
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
        for scheduler in [config.scheduler, *chained_schedulers(config.scheduler)]:
            for attr in ("lr_lambdas", "min_lrs"):  # LambdaLR & co., ReduceLROnPlateau
                values = getattr(scheduler, attr, None)
                if isinstance(values, list) and values:
                    values.extend(values[0] for _ in range(len(groups) - len(values)))
            for values, key in (
                (getattr(scheduler, "base_lrs", None), "initial_lr"),
                (last_lrs(scheduler), "lr"),
            ):
                if isinstance(values, list):
                    values.extend(g[key] for g in groups[len(values) :])


_LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "error", "perplexity")


class MetricEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping`` that checks its metric name against the model's tasks.

    ``monitor`` must be ``val/mean`` (the mean of the tasks' primary metrics), ``val/<task>/loss``
    or ``val/<task>/<metric>`` for a metric of that task; anything else fails at set-up, before
    the first step, with the valid names listed (Lightning alone would only fail at the first
    validation). ``mode`` is inferred from the metric when not given: ``min`` for losses and
    errors, ``max`` for accuracy, F1, correlations and ``val/mean``.

    Args:
        monitor: The validation metric to watch.
        mode: ``min`` or ``max``; ``None`` infers it.
        min_delta: Smallest change that counts as an improvement.
        patience: Validation checks without improvement before stopping.
        verbose: Log each improvement.
        stopping_threshold: Stop as soon as the metric reaches this value.
        divergence_threshold: Stop as soon as the metric is worse than this value.
        check_on_train_epoch_end: As in ``EarlyStopping``.
    """

    def __init__(
        self,
        monitor: str = "val/mean",
        mode: Literal["min", "max"] | None = None,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_on_train_epoch_end: bool | None = None,
    ) -> None:
        super().__init__(
            monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode or "max",
            stopping_threshold=stopping_threshold,
            divergence_threshold=divergence_threshold,
            check_on_train_epoch_end=check_on_train_epoch_end,
        )
        self._given_mode, self._min_delta = mode, abs(min_delta)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        directions = self.metric_directions(pl_module)
        if self.monitor not in directions:
            raise ConfigError(
                f"MetricEarlyStopping monitor {self.monitor!r} is not a validation metric of "
                f"this model; valid names: {', '.join(sorted(directions))}"
            )
        self.mode = self._given_mode or directions[self.monitor]
        # EarlyStopping signs min_delta and picks the starting best score from the mode.
        self.min_delta = self._min_delta * (1 if self.mode == "max" else -1)
        self.best_score = torch.tensor(-torch.inf if self.mode == "max" else torch.inf)
        super().setup(trainer, pl_module, stage)

    @staticmethod
    def metric_directions(pl_module: L.LightningModule) -> dict[str, str]:
        """``{name: "min" | "max"}`` for every validation metric the model logs."""
        tasks = getattr(pl_module, "tasks", None)
        if not isinstance(tasks, dict):
            raise ConfigError("MetricEarlyStopping needs a mtlkit MultiTaskModule (with tasks)")
        names = {"val/mean": "max"}
        for task_name, task in tasks.items():
            names[f"val/{task_name}/loss"] = "min"
            for metric_name, metric in task.build_metrics().items():
                higher = getattr(metric, "higher_is_better", None)
                if higher is None:
                    higher = not any(word in metric_name for word in _LOWER_IS_BETTER)
                names[f"val/{task_name}/{metric_name}"] = "max" if higher else "min"
        return names
