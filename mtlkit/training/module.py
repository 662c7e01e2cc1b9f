"""The multi-task LightningModule: trains a :class:`~mtlkit.model.multitask.MultiTaskModel`
(losses, weighting, logging, optimizers, checkpoint hooks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric

from mtlkit.errors import ConfigError, DataError
from mtlkit.model.encoder import HFEncoder
from mtlkit.model.multitask import MultiTaskModel, TaskOutput
from mtlkit.model.outputs import task_decoder
from mtlkit.model.pooling import Pooling, check_pooling
from mtlkit.optim import LinearWarmupDecay, adamw
from mtlkit.tasks.base import Task
from mtlkit.training.distributed import global_mean_losses
from mtlkit.training.param_groups import encoder_param_groups
from mtlkit.training.step_guard import StepGuard
from mtlkit.weighting import EqualWeighting, StepContext, StepObserver, Weighting

SchedulerCallable = Callable[[Optimizer, int], LRScheduler]


class MultiTaskModule(L.LightningModule):
    """Trains a :class:`~mtlkit.model.multitask.MultiTaskModel` (a shared encoder under per-task
    heads, ``self.model``) on the tasks' losses combined by a weighting method.

    The model's encoder and heads are registered here as ``encoder`` and ``heads`` (the names
    checkpoints use: ``encoder.model.*``, ``heads.<task>.*``).

    Args:
        encoder: The shared encoder.
        tasks: The tasks (linked from the data module by the CLI; the same objects).
        weighting: Combines per-task losses into the training objective (default: a new
            ``EqualWeighting``).
        pooling: Sentence representation for sequence-level heads: ``cls``, ``mean`` or
            ``last`` (the last real token: decoder-only encoders).
        dropout: Dropout before each head.
        optimizer: Builds the optimizer from parameter groups (default AdamW, lr 5e-5).
        lr_scheduler: Builds a per-step scheduler from ``(optimizer, total_steps)``.
        head_lr: Learning rate of the heads (default: the optimizer's).
        on_nonfinite_loss: ``raise`` stops training with an error naming the task(s) and step;
            ``skip`` logs a warning and skips that step (no update; single-process only, since
            the other DDP processes would wait for this one's gradients). Skipped steps are
            listed at the end of training.
        max_consecutive_skips: With ``skip``: more skipped steps in a row than this stop the run.
        max_skipped_fraction: With ``skip``: more skipped steps than this fraction of the steps
            so far stop the run (checked from step 20 on).
        max_param_norm_growth: An optimizer step that multiplies the parameters' total norm by
            more than this (or makes it non-finite) stops the run as diverged, before the
            parameters are checkpointed. ``None`` checks finiteness only.
        init_from: A mtlkit checkpoint (``.ckpt``) or exported folder whose shared encoder is
            loaded into this model when it is built (``configure_model``; model-based
            transfer); what was loaded, freshly initialised and skipped is printed.
        init_heads: Task heads to load as well from ``init_from``: a list of task names present
            in both, or a mapping ``{this_task: source_task}``. Default: none (new heads).
        layer_lr_decay: Layer-wise learning-rate decay (discriminative learning rates): layer
            ``i`` of ``N`` gets ``lr * decay ** (N - i)``, the embeddings ``lr * decay ** (N + 1)``
            and the heads ``lr``. ``None`` (default) gives the whole encoder one rate.
    """

    def __init__(
        self,
        encoder: HFEncoder,
        tasks: list[Task],
        weighting: Weighting | None = None,
        pooling: Pooling = "mean",
        dropout: float = 0.1,
        optimizer: OptimizerCallable = adamw,
        lr_scheduler: SchedulerCallable | None = LinearWarmupDecay,
        head_lr: float | None = None,
        on_nonfinite_loss: Literal["raise", "skip"] = "raise",
        init_from: str | None = None,
        init_heads: list[str] | dict[str, str] | None = None,
        layer_lr_decay: float | None = None,
        max_consecutive_skips: int = 3,
        max_skipped_fraction: float = 0.05,
        max_param_norm_growth: float | None = 10.0,
    ) -> None:
        super().__init__()
        check_pooling(pooling)
        # Components stay out of the hyperparameters so checkpoints load with weights_only=True.
        self.save_hyperparameters(
            ignore=["encoder", "tasks", "weighting", "optimizer", "lr_scheduler"]
        )
        model = MultiTaskModel(encoder, pooling)
        # The model is not a submodule (its parameters would be saved twice): its encoder and
        # heads are, under the names checkpoints have always used.
        object.__setattr__(self, "model", model)
        self.encoder, self.heads = model.encoder, model.heads
        self.tasks = {t.name: t for t in tasks}
        if len(self.tasks) != len(tasks):
            raise ConfigError(f"duplicate task names in {[t.name for t in tasks]}")
        # A fresh default per model: a shared default instance would tie models' modes/state.
        self.weighting = weighting if weighting is not None else EqualWeighting()
        self.weighting.setup(self.task_names)
        self.pooling, self.dropout = pooling, dropout
        self.optimizer_fn, self.scheduler_fn, self.head_lr = optimizer, lr_scheduler, head_lr
        self.guard = StepGuard(
            on_nonfinite_loss, max_consecutive_skips, max_skipped_fraction, max_param_norm_growth
        )
        if layer_lr_decay is not None and not 0.0 < layer_lr_decay <= 1.0:
            raise ConfigError(f"layer_lr_decay must be in (0, 1], got {layer_lr_decay}")
        if init_heads and init_from is None:
            raise ConfigError("init_heads needs init_from (the checkpoint to load them from)")
        self.init_from, self.init_heads, self.layer_lr_decay = init_from, init_heads, layer_lr_decay
        self._initialised_from: str | None = None
        self.metrics = nn.ModuleDict()
        if all(t.is_ready for t in tasks):
            self.build_heads()

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def configure_model(self) -> None:
        """Builds the model (Lightning calls this hook after data set-up, before fit, validate,
        test and predict; call it yourself outside a Trainer): the heads, then the weights of
        ``init_from`` (read once). Constructing the module reads no file."""
        self.build_heads()
        if self.init_from is not None and self._initialised_from != self.init_from:
            labels = {n: t.label_state() for n, t in self.tasks.items()}
            self.init_report = self.model.load_weights_from(self.init_from, self.init_heads, labels)
            rank_zero_info(str(self.init_report))
            self._initialised_from = self.init_from

    def build_heads(self) -> None:
        """Builds the heads, metrics and output decoders of the tasks whose labels are known (at
        construction, or after data set-up or a checkpoint's label metadata)."""
        self.encoder.prepare_tasks(self.task_names)
        for name, task in self.tasks.items():
            if name in self.heads:
                continue
            if not task.is_ready:
                raise ConfigError(
                    f"task {name!r} has unresolved labels; set num_labels or set up the data first"
                )
            self.model.add_task(name, task.level, task.build_head_on(self.encoder, self.dropout))
            for split in ("val", "test"):
                self.metrics[f"{split}_{name}"] = task.build_metrics()
                self.metrics[f"{split}_{name}_loss"] = MeanMetric()
        for name, task in self.tasks.items():  # label metadata may come from a checkpoint
            if task.is_ready:
                self.model.decoders[name] = task_decoder(
                    task.level, task.output_spec(), task.label_state(), task.num_labels or 1
                )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        if self.weighting.needs_all_tasks and getattr(datamodule, "batch_mode", None) != "mixed":
            raise ConfigError(
                f"{type(self.weighting).__name__} needs every task's loss in every step; "
                "set data.batch_mode: mixed"
            )
        for task in self.tasks.values():
            self.encoder.check_max_length(task.name, task.max_length)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None and len(tokenizer) > self.encoder.vocab_size:
            raise ConfigError(
                f"the tokenizer has {len(tokenizer)} tokens but the encoder's embedding has "
                f"{self.encoder.vocab_size}: tokenizer and encoder do not match"
            )
        frozen = datamodule.frozen_encoder() if hasattr(datamodule, "frozen_encoder") else None
        if frozen is not None:  # heads learn on the data module's cached features
            self.model.load_frozen_encoder(*frozen)

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters by owner: ``encoder/<task>`` (per-task adapters, prompts, ...),
        ``encoder/shared`` (the rest of the encoder), ``heads/<task>`` and ``total``."""
        counts, seen = {}, set()
        if self.encoder.per_task:
            for name in self.task_names:
                own = self.encoder.task_parameters(name)
                counts[f"encoder/{name}"] = sum(p.numel() for p in own)
                seen.update(id(p) for p in own)
        shared = [p for p in self.encoder.parameters() if p.requires_grad and id(p) not in seen]
        counts["encoder/shared"] = sum(p.numel() for p in shared)
        for name, head in self.heads.items():
            counts[f"heads/{name}"] = sum(p.numel() for p in head.parameters() if p.requires_grad)
        counts["total"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts

    def on_fit_start(self) -> None:
        # One line and one metric per owner: what each task's method (adapters, LoRA, prompts)
        # and head train, next to the shared encoder.
        counts = self.trainable_parameter_counts()
        rank_zero_info(
            "trainable parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
        )
        if self.logger is not None:
            self.logger.log_metrics({f"params/{k}": float(v) for k, v in counts.items()}, step=0)

    # ------------------------------------------------------------ forward
    def forward(self, sub_batches: dict[str, dict[str, Tensor]]) -> dict[str, TaskOutput]:
        """Head outputs (``logits``) and head inputs (``features``): the model's forward."""
        return self.model(sub_batches)

    def task_losses(
        self, outputs: dict[str, TaskOutput], sub_batches: dict[str, dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Each present task's (weighted) training loss; subclasses change the objective."""
        return {
            n: self.tasks[n].loss(o["logits"], sub_batches[n]["labels"]) * self.tasks[n].loss_weight
            for n, o in outputs.items()
        }

    # ----------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        subs = batch["tasks"]
        self.guard.begin()
        outputs = self(subs)
        losses = self.task_losses(outputs, subs)
        if not self.guard.losses_finite(losses, self.global_step, self._is_distributed()):
            return None  # skipped step (on_nonfinite_loss="skip")
        losses = self._global_mean_losses(losses, subs)
        ctx = StepContext(
            step=self.global_step,
            task_names=self.task_names,
            shared_parameters=lambda: [p for p in self.encoder.parameters() if p.requires_grad],
            representations={n: o["features"] for n, o in outputs.items()},
            named_shared_parameters=lambda: [
                (n, p) for n, p in self.encoder.named_parameters() if p.requires_grad
            ],
            loss_scale=self._loss_scale(),
            all_reduce_mean=self._all_reduce_mean,
            shared_module=self.encoder,
            encoder_rows=self.model.encoder_rows(subs),
            other_parameters=self._other_parameters,
        )
        combined = self.weighting(losses, ctx)
        method, distributed = type(self.weighting).__name__, self._is_distributed()
        if not self.guard.weights_finite(combined, self.global_step, distributed, method):
            return None  # skipped step (on_nonfinite_loss="skip")
        self.guard.passed()
        for callback in self.trainer.callbacks if self._trainer is not None else []:
            if isinstance(callback, StepObserver):  # e.g. GradientDiagnostics, before backward
                callback.on_weighted_step(self.trainer, losses, ctx, combined)
        # labels: one row per example (a dialogue task's input_ids have one row per turn)
        n_examples = sum(int(s["labels"].shape[0]) for s in subs.values())
        for name, loss in losses.items():
            self.log(f"train/{name}/loss", loss.detach(), batch_size=1)
            self.log(f"train/{name}/weight", combined.weights[name].detach(), batch_size=1)
        self.log("train/loss", combined.loss.detach(), prog_bar=True, batch_size=n_examples)
        loss = combined.loss + self._absent_heads_term(subs)
        penalty = self.encoder.regularization()
        if penalty is not None:
            self.log("train/regularization", penalty.detach(), batch_size=1)
            loss = loss + penalty
        return loss

    def _other_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters outside the shared encoder (the heads, ...)."""
        shared = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in shared]

    def _global_mean_losses(self, losses: dict[str, Tensor], subs: dict[str, Any]) -> dict:
        if self._trainer is None or self.trainer.world_size == 1:
            return losses
        counts = {t: float(self.tasks[t].loss_count(subs[t]["labels"])) for t in losses}
        return global_mean_losses(losses, counts, self.task_names, self.trainer.strategy)

    def _scaler(self) -> Any:
        plugin = self._trainer.precision_plugin if self._trainer is not None else None
        return getattr(plugin, "scaler", None)

    def _loss_scale(self) -> float:
        scaler = self._scaler()
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        check = self._checks_parameters()
        if check:
            self.guard.before_update(self.parameters)
        self._scaled_optimizer_step(*args, **kwargs)
        if check:
            reduce = self._reduce_sum if self._is_distributed() else None
            self.guard.after_update(self.parameters, self.global_step, reduce)
        # Gradients are still there (cleared at the next step): AdaLoRA's budget update.
        self.encoder.after_optimizer_step(self.global_step)

    def _scaled_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        scaler = self._scaler()
        if scaler is None:
            return super().optimizer_step(*args, **kwargs)
        # The step's forward (inside the closure) may update the weighting method's state; when
        # the fp16 gradient scaler then skips the step on overflow, that update is undone too.
        before = {
            k: v.clone() if torch.is_tensor(v) else v
            for k, v in self.weighting.state_dict().items()
        }
        scale = scaler.get_scale()
        super().optimizer_step(*args, **kwargs)
        if scaler.get_scale() < scale:
            self.weighting.load_state_dict(before)

    def _all_reduce_mean(self, tensor: Tensor) -> Tensor:
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor, reduce_op="mean")

    def _absent_heads_term(self, subs: dict[str, Any]) -> Tensor | float:
        # A zero that touches the heads (and per-task encoder parts: adapters, prompts) of tasks
        # absent from this step, so DDP's gradient all-reduce sees every parameter on every rank
        # (no find_unused_parameters needed).
        absent = [p for n, h in self.heads.items() if n not in subs for p in h.parameters()]
        if self.encoder.per_task:
            for name in (n for n in self.heads if n not in subs):
                absent += self.encoder.task_parameters(name)
        return sum((p.sum() * 0.0 for p in absent), 0.0)

    def _is_distributed(self) -> bool:
        return self._trainer is not None and self.trainer.world_size > 1

    def _reduce_sum(self, tensor: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(tensor, reduce_op="sum")

    def on_train_end(self) -> None:
        summary = self.guard.summary()
        if summary is not None:
            rank_zero_warn(summary)

    def _checks_parameters(self) -> bool:
        strategy = self._trainer.strategy if self._trainer is not None else None
        # Sharded strategies hold flat or partitioned parameters: their norms are per shard.
        return not isinstance(strategy, FSDPStrategy | DeepSpeedStrategy | ModelParallelStrategy)

    # --------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        if batch.get("padding"):  # a DDP padding batch (EvalBatchSampler): counted nowhere
            return
        subs = batch["tasks"]
        for name, out in self(subs).items():
            task, labels = self.tasks[name], subs[name]["labels"]
            generate = self.model.generator(name, out["features"], subs[name])
            preds, target = task.eval_metric_inputs(out["logits"], subs[name], generate)
            self.metrics[f"{split}_{name}"].update(preds, target)
            # A weighted running mean (a torchmetrics metric, so DDP processes are combined
            # exactly): the split's mean loss over examples (tokens, for token tasks).
            loss = task.loss(out["logits"], labels).detach().float()
            self.metrics[f"{split}_{name}_loss"].update(loss, weight=float(task.loss_count(labels)))

    def _eval_epoch_end(self, split: str) -> None:
        primaries = []
        for name, task in self.tasks.items():
            metrics = self.metrics[f"{split}_{name}"]
            values = metrics.compute()
            metrics.reset()
            loss = self.metrics[f"{split}_{name}_loss"]
            values["loss"] = loss.compute()
            loss.reset()
            for metric, value in values.items():
                self.log(f"{split}/{name}/{metric}", value.float(), add_dataloader_idx=False)
            primaries.append(values[task.primary_metric].float())
        self.log(f"{split}/mean", torch.stack(primaries).mean(), add_dataloader_idx=False)

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step(batch, "val")

    def _eval_epoch_start(self, split: str) -> None:
        # Fresh metric states made in the loop's own grad mode: states reset at the end of a
        # trainer.validate/test (inference mode) are inference tensors, which metrics that
        # update in place (corpus BLEU) could not update in a later fit's validation.
        for name in self.tasks:
            for key in (f"{split}_{name}", f"{split}_{name}_loss"):
                if key in self.metrics:
                    self.metrics[key].reset()

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start("val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start("test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        if batch.get("padding"):  # a DDP padding batch (EvalBatchSampler)
            return None
        subs = batch["tasks"]
        out = {}
        for name, outputs in self(subs).items():
            generate = self.model.generator(name, outputs["features"], subs[name])
            preds = self.tasks[name].eval_metric_inputs(outputs["logits"], subs[name], generate)[0]
            out[name] = preds.cpu() if torch.is_tensor(preds) else preds
        return out

    # ---------------------------------------------------------- optimizer
    def extra_parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups of a subclass's own trainable parts (none here)."""
        return []

    def configure_optimizers(self) -> Any:
        groups = encoder_param_groups(self.encoder, self.layer_lr_decay)
        # A decoder head may share weights with the encoder (tied decoders, a seq2seq
        # backbone's embeddings): those train with the encoder's group.
        shared = {id(p) for p in self.encoder.parameters()}
        heads: dict[str, Any] = {
            "params": [p for p in self.heads.parameters() if id(p) not in shared],
            "name": "heads",
        }
        if self.head_lr is not None:
            heads["lr"] = self.head_lr
        groups.append(heads)
        groups.extend(self.weighting.parameter_groups())
        groups.extend(self.extra_parameter_groups())
        optimizer = self.optimizer_fn([g for g in groups if g["params"]])
        for group in optimizer.param_groups:  # layer-wise rates are relative to the base rate
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        if self.scheduler_fn is None:
            return optimizer
        scheduler = self.scheduler_fn(optimizer, int(self.trainer.estimated_stepping_batches))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # -------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mtlkit_tasks"] = {n: t.label_state() for n, t in self.tasks.items()}
        # Enough to rebuild the encoder without the run's config (init_from, export, teachers).
        checkpoint["mtlkit_encoder"] = {
            "config": self.encoder.model.config.to_dict(),
            "pooling": self.pooling,
        }
        # The last evaluation's metrics, for the model card of an export.
        metrics = self._trainer.callback_metrics if self._trainer is not None else {}
        checkpoint["mtlkit_metrics"] = {
            k: float(v) for k, v in metrics.items() if k.startswith(("val/", "test/"))
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("mtlkit_tasks", {})
        missing = sorted(set(self.tasks) - set(saved))
        if saved and missing:
            raise ConfigError(
                f"checkpoint has no heads for task(s) {missing}; it has {sorted(saved)}"
            )
        for name, state in saved.items():
            if name in self.tasks:
                _check_label_names(name, state, self.tasks[name].label_state())
                self.tasks[name].load_label_state(state)
        # The checkpoint holds every weight: init_from's source is not read (nor needed).
        self._initialised_from = self.init_from
        self.build_heads()
        # A checkpoint of another architecture (hidden size, vocabulary, ...) fails here with the
        # parameter named, not later inside torch's load_state_dict.
        # Sharding strategies (FSDP, DeepSpeed) hold flattened or partitioned parameters here.
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FSDPStrategy | DeepSpeedStrategy | ModelParallelStrategy):
            return
        own = self.state_dict()
        for key, value in checkpoint.get("state_dict", {}).items():
            if key in own and torch.is_tensor(value) and value.shape != own[key].shape:
                raise ConfigError(
                    f"checkpoint parameter {key!r} has shape {tuple(value.shape)} but this "
                    f"model's has {tuple(own[key].shape)}: the checkpoint is from a different "
                    "architecture (encoder config, labels)"
                )


def _check_label_names(task: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A checkpoint's label names must be the data's (same names, same order): otherwise every
    prediction and export would carry the wrong names."""
    old, new = saved.get("label_names"), current.get("label_names")
    if old is not None and new is not None and list(old) != list(new):
        raise DataError(
            f"task {task!r}: the checkpoint's labels {list(old)} differ from the data's "
            f"{list(new)} (same task name, other classes or order); resume only with the data "
            "the checkpoint was trained on"
        )
