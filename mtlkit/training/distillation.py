"""Multi-task knowledge distillation: a student trained on a frozen teacher's soft targets."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.model.encoder import HFEncoder
from mtlkit.model.multitask import MultiTaskModel, TaskOutput
from mtlkit.model.source import ModelSource, load_source
from mtlkit.tasks.base import Task
from mtlkit.training.module import MultiTaskModule


class Teacher:
    """A trained multi-task model that only gives soft targets: frozen, in eval mode, never in
    the optimizer and not saved with the student (it is a plain object, not a submodule, and is
    rebuilt from its path).

    Args:
        source: The teacher's weights and metadata.
        tasks: The student's tasks: the teacher's heads are built by these task objects (with
            the teacher's hidden size) and must match their labels.
    """

    def __init__(self, source: ModelSource, tasks: dict[str, Task]) -> None:
        self.path, self.pooling = source.path, source.pooling
        self.model = MultiTaskModel.from_source(source, tasks)

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def heads(self) -> nn.ModuleDict:
        return self.model.heads

    @property
    def vocab_size(self) -> int:
        return self.model.encoder.vocab_size

    def to(self, device: torch.device) -> Teacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, sub_batches: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        """The teacher's head outputs for every sub-batch, on the sub-batches' device."""
        device = next(iter(sub_batches.values()))["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.to(device)
        # The teacher encodes the tokens itself: cached features are the student's encoder's.
        plain = {n: {k: v for k, v in b.items() if k != "features"} for n, b in sub_batches.items()}
        return {n: out["logits"] for n, out in self.model(plain).items()}


class DistillationModule(MultiTaskModule):
    """Multi-task distillation: each task's loss mixes the hard labels' loss with a soft-target
    loss against a frozen teacher's outputs (Hinton et al. 2015; multi-task: Clark et al. 2019,
    "BAM! Born-Again Multi-Task Networks"):
    ``(1 - alpha) * task.loss + alpha * task.distill_loss(student, teacher, labels, T)``.

    Validation and test metrics use the student alone. A smaller student initialised from the
    teacher's layers: ``encoder: HFEncoder(name_or_path=..., keep_layers=[1, 3, 5])``, with
    ``init_from: <teacher>`` to load the teacher's (fine-tuned) weights of those layers.

    Args:
        encoder: The student's encoder.
        tasks: The tasks; the teacher must have a head with the same labels for each.
        teacher: The teacher: a mtlkit checkpoint (``.ckpt``) or exported folder.
        alpha: Weight of the soft-target loss, in [0, 1]; the hard-label loss gets
            ``1 - alpha``.
        temperature: Softening temperature ``T`` of the output distributions (> 0).
        **kwargs: Any other :class:`MultiTaskModule` argument.
    """

    def __init__(
        self,
        encoder: HFEncoder,
        tasks: list[Task],
        teacher: str,
        alpha: float = 0.5,
        temperature: float = 2.0,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        missing = sorted({type(t).__name__ for t in tasks if not _distills(t)})
        if missing:
            raise ConfigError(f"task type(s) {missing} define no distill_loss")
        self.teacher_path, self.alpha, self.temperature = teacher, alpha, temperature
        self._teacher: Teacher | None = None
        self._soft_losses: dict[str, Tensor] = {}
        super().__init__(encoder, tasks, **kwargs)

    @property
    def teacher(self) -> Teacher:
        """The frozen teacher (read when the model is built: ``configure_model``)."""
        if self._teacher is None:
            raise ConfigError(
                "the teacher is read when the model is built: call configure_model() (a Trainer "
                "does, after setting up the data)"
            )
        return self._teacher

    def configure_model(self) -> None:
        """Builds the student (see :class:`MultiTaskModule`), then loads the teacher once."""
        super().configure_model()
        if self._teacher is None:
            self._teacher = Teacher(load_source(self.teacher_path), self.tasks)
            self._check_vocabulary()

    def _check_vocabulary(self) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None and len(tokenizer) > self.teacher.vocab_size:
            raise ConfigError(
                f"the tokenizer has {len(tokenizer)} tokens but the teacher's embedding has "
                f"{self.teacher.vocab_size}: teacher and data must share a tokenizer"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self._soft_losses = {}
        loss = super().training_step(batch, batch_idx)
        for name, soft in self._soft_losses.items():
            self.log(f"train/{name}/distill_loss", soft, batch_size=1)
        return loss

    def task_losses(
        self, outputs: dict[str, TaskOutput], sub_batches: dict[str, dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Per task: ``(1 - alpha) * hard + alpha * soft`` (both times the task's loss_weight)."""
        hard = super().task_losses(outputs, sub_batches)
        if self.alpha == 0.0:
            return hard
        targets = self.teacher(sub_batches)
        losses = {}
        for name, out in outputs.items():
            task = self.tasks[name]
            soft = task.distill_loss(
                out["logits"], targets[name], sub_batches[name]["labels"], self.temperature
            )
            self._soft_losses[name] = soft.detach()
            losses[name] = (1.0 - self.alpha) * hard[name] + self.alpha * task.loss_weight * soft
        return losses


def _distills(task: Task) -> bool:
    return type(task).distill_loss is not Task.distill_loss
