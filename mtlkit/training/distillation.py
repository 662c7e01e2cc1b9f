"""Multi-task knowledge distillation: a student trained on a frozen teacher's soft targets."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.model.encoder import HFEncoder
from mtlkit.model.multitask import MultiTaskModel, TaskOutput
from mtlkit.model.source import ModelSource, load_source
from mtlkit.tasks.base import Task
from mtlkit.training.layer_match import Captured, LayerMatch, capture, check_layers, match_loss
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
    ``(1 - alpha) * task.loss + alpha * task.distill_loss(student, teacher, labels, T)``,
    plus, with ``intermediate``, weighted matches of hidden states and attention maps
    (:mod:`mtlkit.training.layer_match`, TextBrewer's intermediate matches) added to the
    weighted loss.

    One teacher for all tasks, or one per task (Liu et al. 2019, "Improving Multi-Task Deep
    Neural Networks via Knowledge Distillation for Natural Language Understanding": single-task
    teachers distilled into one multi-task student; logits only, as TextBrewer's
    ``MultiTeacherDistiller``).

    Validation and test metrics use the student alone. A smaller student initialised from the
    teacher's layers: ``encoder: HFEncoder(name_or_path=..., keep_layers=[1, 3, 5])``, with
    ``init_from: <teacher>`` to load the teacher's (fine-tuned) weights of those layers.

    Args:
        encoder: The student's encoder.
        tasks: The tasks; each task's teacher must have a head with the same labels.
        teacher: The teacher (a mtlkit checkpoint ``.ckpt`` or exported folder), or a mapping
            ``{task: teacher}`` covering every task.
        alpha: Weight of the soft-target loss, in [0, 1]; the hard-label loss gets
            ``1 - alpha``.
        temperature: Softening temperature ``T`` of the output distributions (> 0).
        final_temperature: Anneal ``T`` linearly from ``temperature`` at the first step to this
            at the last (``None``: constant).
        intermediate: Layer matches (hidden states, attention maps) with their weights; one
            teacher and a student encoder that runs once for all tasks.
        **kwargs: Any other :class:`MultiTaskModule` argument.
    """

    def __init__(
        self,
        encoder: HFEncoder,
        tasks: list[Task],
        teacher: str | dict[str, str],
        alpha: float = 0.5,
        temperature: float = 2.0,
        final_temperature: float | None = None,
        intermediate: list[LayerMatch] | None = None,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
        for name, value in (("temperature", temperature), ("final_temperature", final_temperature)):
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        missing = sorted({type(t).__name__ for t in tasks if not _distills(t)})
        if missing:
            raise ConfigError(f"task type(s) {missing} define no distill_loss")
        names = [t.name for t in tasks]
        self.teacher_of = _teacher_of(teacher, names)
        self.matches = [
            m if isinstance(m, LayerMatch) else LayerMatch(**m) for m in intermediate or []
        ]
        if self.matches and len(set(self.teacher_of.values())) > 1:
            raise ConfigError(
                "intermediate layer matches need one teacher for all tasks (with one teacher per "
                "task, distillation matches logits only)"
            )
        if self.matches and getattr(encoder, "per_task", False):
            raise ConfigError(
                "intermediate layer matches need a student encoder that runs once for all tasks, "
                f"not a per-task {type(encoder).__name__}"
            )
        self.teacher_path = teacher
        self.alpha, self.temperature, self.final_temperature = alpha, temperature, final_temperature
        self._teachers: dict[str, Teacher] = {}
        self._soft_losses: dict[str, Tensor] = {}
        self._match_losses: dict[str, Tensor] = {}
        self._student_pass: Captured | None = None
        super().__init__(encoder, tasks, **kwargs)
        # Checkpoints hold plain values only (they load with weights_only=True).
        self.hparams["intermediate"] = [asdict(m) for m in self.matches] or None
        self.projections = nn.ModuleDict()

    @property
    def teacher(self) -> Teacher:
        """The frozen teacher of every task (read when the model is built: ``configure_model``).

        Raises:
            ConfigError: Not built yet, or one teacher per task (see :attr:`teachers`).
        """
        if not self._teachers:
            raise ConfigError(
                "the teacher is read when the model is built: call configure_model() (a Trainer "
                "does, after setting up the data)"
            )
        if len(self._teachers) > 1:
            raise ConfigError("this student has one teacher per task: see .teachers")
        return next(iter(self._teachers.values()))

    @property
    def teachers(self) -> dict[str, Teacher]:
        """Each task's frozen teacher (after ``configure_model``)."""
        return {task: self._teachers[path] for task, path in self.teacher_of.items()}

    def configure_model(self) -> None:
        """Builds the student (see :class:`MultiTaskModule`), then reads the teachers once."""
        super().configure_model()
        if self._teachers:
            return
        for path in dict.fromkeys(self.teacher_of.values()):
            own = {n: t for n, t in self.tasks.items() if self.teacher_of[n] == path}
            self._teachers[path] = Teacher(load_source(path), own)
        self._check_vocabulary()
        if self.matches:
            check_layers(self.matches, self.encoder, "student")
            check_layers(self.matches, self.teacher.encoder, "teacher")
            width, target = self.encoder.hidden_size, self.teacher.encoder.hidden_size
            for match in self.matches:
                if not match.on_attention and width != target:
                    self.projections[match.name] = nn.Linear(width, target)

    def _check_vocabulary(self) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        for path, teacher in self._teachers.items():
            if tokenizer is not None and len(tokenizer) > teacher.vocab_size:
                raise ConfigError(
                    f"the tokenizer has {len(tokenizer)} tokens but the embedding of teacher "
                    f"{path} has {teacher.vocab_size}: teachers and data must share a tokenizer"
                )

    def extra_parameter_groups(self) -> list[dict[str, Any]]:
        """The width projections of hidden-state matches learn with the heads' rate."""
        params = list(self.projections.parameters())
        group: dict[str, Any] = {"params": params, "name": "distill_projections"}
        if self.head_lr is not None:
            group["lr"] = self.head_lr
        return [group] if params else []

    def current_temperature(self) -> float:
        """``T`` at this step (annealed linearly to ``final_temperature`` when set)."""
        if self.final_temperature is None or self._trainer is None:
            return self.temperature
        total = max(int(self.trainer.estimated_stepping_batches) - 1, 1)
        done = min(self.global_step / total, 1.0)
        return self.temperature + (self.final_temperature - self.temperature) * done

    def teacher_outputs(self, sub_batches: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        """Each task's teacher's head outputs for the task's sub-batch."""
        out: dict[str, Tensor] = {}
        for path, teacher in self._teachers.items():
            own = {n: b for n, b in sub_batches.items() if self.teacher_of[n] == path}
            if own:
                out.update(teacher(own))
        return out

    def forward(self, sub_batches: dict[str, dict[str, Tensor]]) -> dict[str, TaskOutput]:
        if not (self.matches and self.training):
            return super().forward(sub_batches)
        hidden = {m.student for m in self.matches if not m.on_attention}
        attention = {m.student for m in self.matches if m.on_attention}
        with capture(self.encoder, hidden, attention) as seen:
            outputs = super().forward(sub_batches)
        self._student_pass = seen
        return outputs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self._soft_losses, self._match_losses = {}, {}
        loss = super().training_step(batch, batch_idx)
        for name, soft in self._soft_losses.items():
            self.log(f"train/{name}/distill_loss", soft, batch_size=1)
        if self.final_temperature is not None:
            self.log("train/distill/temperature", self.current_temperature(), batch_size=1)
        if loss is not None and self._match_losses:
            for name, value in self._match_losses.items():
                self.log(f"train/distill/{name}", value.detach(), batch_size=1)
            matched = sum(m.weight * self._match_losses[m.name] for m in self.matches)
            loss = loss + matched
        self._student_pass = None
        return loss

    def task_losses(
        self, outputs: dict[str, TaskOutput], sub_batches: dict[str, dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Per task: ``(1 - alpha) * hard + alpha * soft`` (both times the task's loss_weight);
        with layer matches, their losses are computed here too (added by ``training_step``)."""
        hard = super().task_losses(outputs, sub_batches)
        student_pass, self._student_pass = self._student_pass, None
        if self.alpha == 0.0 and student_pass is None:
            return hard
        if student_pass is not None:
            hidden = {m.teacher for m in self.matches if not m.on_attention}
            attention = {m.teacher for m in self.matches if m.on_attention}
            with capture(self.teacher.encoder, hidden, attention) as seen:
                targets = self.teacher_outputs(sub_batches)
            projections = dict(self.projections.items())
            for match in self.matches:
                self._match_losses[match.name] = match_loss(
                    match, student_pass, seen, projections.get(match.name)
                )
        else:
            targets = self.teacher_outputs(sub_batches)
        if self.alpha == 0.0:
            return hard
        losses, temperature = {}, self.current_temperature()
        for name, out in outputs.items():
            task = self.tasks[name]
            soft = task.distill_loss(
                out["logits"], targets[name], sub_batches[name]["labels"], temperature
            )
            self._soft_losses[name] = soft.detach()
            losses[name] = (1.0 - self.alpha) * hard[name] + self.alpha * task.loss_weight * soft
        return losses


def _teacher_of(teacher: str | dict[str, str], tasks: list[str]) -> dict[str, str]:
    if isinstance(teacher, str):
        return dict.fromkeys(tasks, teacher)
    unknown = sorted(set(teacher) - set(tasks))
    missing = [t for t in tasks if t not in teacher]
    if unknown or missing:
        raise ConfigError(
            f"teacher: one teacher per task needs exactly the tasks {tasks}; "
            + (f"no teacher for {missing}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown task(s) {unknown}" if unknown else "")
        )
    return dict(teacher)


def _distills(task: Task) -> bool:
    return type(task).distill_loss is not Task.distill_loss
