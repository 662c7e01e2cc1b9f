"""The task contract: data + head + loss + metrics.

A task owns how its examples are read and tokenized, its head, its loss and its metrics. The data
module and the model stay generic over tasks: they only call the methods below.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import PreTrainedTokenizerBase

from mtlkit.errors import ConfigError, DataError
from mtlkit.sources import DataSource
from mtlkit.tasks._checks import check_text_column, warn_overlap

IGNORE_INDEX = -100


class Task(ABC):
    """Base class of all task types.

    Args:
        name: Unique task name; used in metric names (``val/<name>/<metric>``) and head keys.
        source: Where the examples come from.
        text_column: Column holding the (first) text.
        label_column: Column holding the target.
        max_length: Truncation length in tokens (>= 1; at most the encoder's positions).
        loss_weight: Static multiplier applied to this task's loss before loss weighting.
        text_pair_column: Column of the second text of sentence-pair tasks (``None``: single
            texts); passed on by the task types that take text pairs.
    """

    #: ``"sequence"`` heads get a pooled vector; ``"token"`` heads get every token state;
    #: ``"dialogue"`` heads get one pooled vector per turn (``[dialogues, turns, hidden]``) and
    #: the sub-batch's ``turn_mask`` (each turn is one encoder row); ``"text"`` heads
    #: (generation) get every token state and the whole sub-batch.
    level: ClassVar[Literal["sequence", "token", "dialogue", "text"]] = "sequence"
    #: Metric used for the mean over tasks and for model selection (higher is better).
    primary_metric: str
    #: Number of outputs of the head (classes, tags, labels); ``None`` until resolved from the
    #: data (``prepare``) or a checkpoint (``load_label_state``). The head cannot be built before.
    num_labels: int | None = None

    def __init__(
        self,
        name: str,
        source: DataSource,
        text_column: str = "text",
        label_column: str = "label",
        max_length: int = 128,
        loss_weight: float = 1.0,
        text_pair_column: str | None = None,
    ) -> None:
        if not name or "/" in name:
            raise DataError(f"task name must be non-empty and contain no '/': {name!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(
                f"task {name!r}: max_length must be a positive number of tokens, got "
                f"{max_length!r} (there is no 'no truncation' value: use the encoder's limit, "
                "e.g. 512)"
            )
        self.name = name
        self.source = source
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self.max_length = max_length
        self.loss_weight = loss_weight

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # ----------------------------------------------------------------- data
    def required_columns(self) -> list[str]:
        """Columns every split must have."""
        return [*self.text_columns(), self.label_column]

    def text_columns(self) -> list[str]:
        """Columns that are tokenized (compared across splits to detect leakage)."""
        return [self.text_column, *([self.text_pair_column] if self.text_pair_column else [])]

    def load(self) -> DatasetDict:
        """Loads, validates and prepares the raw splits (labels resolved, columns checked).

        Rows are checked as the source read them, before a validation split is carved, so row
        numbers in messages are those of the data.
        """
        raw = self.source.load_splits()
        for split, ds in raw.items():
            missing = [c for c in self.required_columns() if c not in ds.column_names]
            if missing:
                raise DataError(
                    f"task {self.name!r}: split {split!r} has no column(s) {missing}; "
                    f"available columns: {ds.column_names}"
                )
            if len(ds) == 0 and split in ("train", "validation"):
                raise DataError(f"task {self.name!r}: split {split!r} is empty")
            self.check_rows(split, ds)
        data = self.source.add_validation(raw)
        warn_overlap(self, data, self.text_columns())
        return self.prepare(data)

    def check_rows(self, split: str, ds: Dataset) -> None:
        """Checks every row's cells of one raw split (empty texts, missing labels, ...)."""
        for column in self.text_columns():
            check_text_column(self, split, ds, column)

    def bind_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Called by the data module with its tokenizer before the data is read (tasks that
        turn token ids back into text keep it); nothing by default."""
        del tokenizer

    @abstractmethod
    def prepare(self, data: DatasetDict) -> DatasetDict:
        """Checks targets (types, ranges) and resolves label metadata such as ``num_labels``."""

    @abstractmethod
    def tokenize(self, batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase) -> dict:
        """Turns a batch of raw rows into ``input_ids``/``attention_mask``/``labels`` lists."""

    def fingerprint(self) -> str:
        """Everything that changes tokenization; part of the tokenization cache key."""
        return repr(
            (
                type(self).__name__,
                self.text_column,
                self.text_pair_column,
                self.label_column,
                self.max_length,
            )
        )

    def collate(self, rows: dict[str, list[Any]], pad_token_id: int) -> dict[str, Tensor]:
        """Pads one task's sub-batch to its own longest sequence (dynamic padding)."""
        ids = rows["input_ids"]
        width = max(len(x) for x in ids)
        out = {
            "input_ids": _pad(ids, width, pad_token_id),
            "attention_mask": _pad(rows["attention_mask"], width, 0),
        }
        if "token_type_ids" in rows:
            out["token_type_ids"] = _pad(rows["token_type_ids"], width, 0)
        out["labels"] = self.collate_labels(rows["labels"], width)
        return out

    def collate_labels(self, labels: list[Any], width: int) -> Tensor:
        """Stacks targets; token-level tasks override this to pad."""
        return torch.tensor(labels)

    # ---------------------------------------------------------------- model
    @abstractmethod
    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        """The task-specific output layer(s)."""

    def build_head_on(self, encoder: nn.Module, dropout: float) -> nn.Module:
        """The head, built with the shared encoder at hand (heads that copy or share the
        encoder's weights, such as decoders, override this); default: :meth:`build_head` of
        the encoder's ``hidden_size``."""
        return self.build_head(int(encoder.hidden_size), dropout)

    @abstractmethod
    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Scalar training loss of one sub-batch."""

    @abstractmethod
    def build_metrics(self) -> MetricCollection:
        """Fresh metric objects (one collection per split)."""

    def distill_loss(
        self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
    ) -> Tensor:
        """Soft-target loss of the student's head outputs against a teacher's (knowledge
        distillation, Hinton et al. 2015, "Distilling the Knowledge in a Neural Network").

        Args:
            logits: The student's head outputs.
            teacher_logits: The teacher's head outputs for the same inputs (same shape).
            labels: The sub-batch's targets (token tasks read which positions count).
            temperature: Softening temperature ``T`` of both output distributions.
        """
        raise NotImplementedError(f"task type {type(self).__name__} has no distill_loss")

    def loss_count(self, labels: Tensor) -> int:
        """How many targets the loss of a sub-batch averages over (examples by default)."""
        return int(labels.shape[0])

    def output_spec(self) -> dict[str, Any]:
        """How a prediction is read from the head's outputs: ``{"kind": ...}`` and the settings
        of that kind, stored in exports; ``kind`` names a decoder in ``mtlkit.model.outputs``
        (default ``logits``: the raw outputs)."""
        return {"kind": "logits"}

    def input_spec(self) -> dict[str, Any]:
        """How an exported model reads this task's input, stored in exports as ``input``:
        ``{}`` (default) for a text or a text pair; dialogue tasks say ``{"type": "dialogue",
        ...}`` and their encoding settings."""
        return {}

    def metric_inputs(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Turns head outputs and targets into the ``(preds, target)`` the metrics take."""
        return logits.detach(), labels

    def eval_metric_inputs(
        self, logits: Tensor, batch: dict[str, Any], generate: Callable[..., Tensor]
    ) -> tuple[Any, Any]:
        """The ``(preds, target)`` of one evaluation sub-batch: :meth:`metric_inputs` of the
        head outputs by default; generation tasks call ``generate(**settings)`` (the head's
        decoding of this sub-batch) and compare texts."""
        del generate
        return self.metric_inputs(logits, batch["labels"])

    def label_state(self) -> dict[str, Any]:
        """Label metadata the head was trained with (label names, target scale): saved in
        checkpoints and exports, compared when a head is transferred."""
        return {}

    def load_label_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`label_state` (nothing to restore by default)."""
        del state

    # The former names of label_state/load_label_state: callers and task types written against
    # them keep working.
    def head_state(self) -> dict[str, Any]:
        """Deprecated name of :meth:`label_state`."""
        return self.label_state()

    def load_head_state(self, state: dict[str, Any]) -> None:
        """Deprecated name of :meth:`load_label_state`."""
        self.load_label_state(state)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A task type that overrides only the old names is read through the new ones.
        for old, new in (("head_state", "label_state"), ("load_head_state", "load_label_state")):
            if old in vars(cls) and new not in vars(cls):
                setattr(cls, new, vars(cls)[old])
                setattr(cls, old, getattr(Task, old))

    @property
    def is_ready(self) -> bool:
        """Whether the head can be built: ``num_labels`` known."""
        return self.num_labels is not None


def linear_head(task: Task, hidden_size: int, dropout: float) -> nn.Module:
    """Dropout and one linear layer to ``task.num_labels`` outputs (per vector or per token)."""
    if task.num_labels is None:
        raise DataError(f"task {task.name!r}: num_labels is unresolved; set it or load the data")
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, task.num_labels))


def soft_kl(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the last dimension.

    The ``T^2`` keeps the gradient's scale independent of ``T`` (Hinton et al. 2015).
    """
    t = float(temperature)
    student = F.log_softmax(logits.float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1) * t * t


def _pad(seqs: list[list[int]], width: int, value: int) -> Tensor:
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def text_inputs(
    task: Task, batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase
) -> dict[str, list[Any]]:
    """Tokenizes ``task``'s text column (and its pair column, if any) without padding."""
    # Cells are checked in Task.check_rows; str() reads a number as its digits.
    pair = task.text_pair_column
    first = [str(t) for t in batch[task.text_column]]
    second = [str(t) for t in batch[pair]] if pair else None
    return dict(tokenizer(first, second, truncation=True, max_length=task.max_length))
