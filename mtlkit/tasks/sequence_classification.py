"""Single-sentence and sentence-pair classification."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import PreTrainedTokenizerBase

from mtlkit.errors import DataError
from mtlkit.sources import DataSource
from mtlkit.tasks._checks import check_label_cells
from mtlkit.tasks._labels import (
    class_label_state,
    class_metrics,
    load_class_label_state,
    prepare_class_labels,
)
from mtlkit.tasks.base import Task, linear_head, soft_kl, text_inputs


class SequenceClassification(Task):
    """One label per text (or text pair); cross-entropy; accuracy and macro-F1.

    Args:
        name: Task name.
        source: Data source.
        text_column: Column of the (first) text.
        text_pair_column: Column of the second text for sentence-pair tasks.
        label_column: Column of the class id (``ClassLabel``, int or string).
        num_labels: Number of classes; read from a ``ClassLabel`` feature when omitted.
        max_length: Truncation length in tokens.
        loss_weight: Static multiplier of this task's loss.
        label_smoothing: Cross-entropy label smoothing.
    """

    primary_metric = "accuracy"

    def __init__(
        self,
        name: str,
        source: DataSource,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        num_labels: int | None = None,
        max_length: int = 128,
        loss_weight: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(
            name, source, text_column, label_column, max_length, loss_weight, text_pair_column
        )
        if num_labels is not None and num_labels < 2:
            raise DataError(f"task {name!r}: num_labels must be >= 2, got {num_labels}")
        self.num_labels = num_labels
        self.label_names: list[str] | None = None
        self.label_smoothing = label_smoothing

    def check_rows(self, split: str, ds: Dataset) -> None:
        super().check_rows(split, ds)
        check_label_cells(self, split, ds, self.label_column)

    def prepare(self, data: DatasetDict) -> DatasetDict:
        return prepare_class_labels(self, data)

    def tokenize(self, batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase) -> dict:
        out = text_inputs(self, batch, tokenizer)
        out["labels"] = [int(v) for v in batch[self.label_column]]
        return out

    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        return linear_head(self, hidden_size, dropout)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def distill_loss(
        self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
    ) -> Tensor:
        """Mean over examples of ``T^2 * KL(teacher || student)`` of the softened class
        distributions."""
        return soft_kl(logits, teacher_logits, temperature).mean()

    def output_spec(self) -> dict[str, Any]:
        """How a prediction is read from the head's outputs (``mtlkit.model.outputs``):
        the most probable label and every label's probability."""
        return {"kind": "sequence_classification"}

    def build_metrics(self) -> MetricCollection:
        return class_metrics(self.num_labels)

    def label_state(self) -> dict[str, Any]:
        return class_label_state(self)

    def load_label_state(self, state: dict[str, Any]) -> None:
        load_class_label_state(self, state)
