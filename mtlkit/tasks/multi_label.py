"""Multi-label classification: any number of labels per text (or text pair)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelF1Score
from transformers import PreTrainedTokenizerBase

from mtlkit.errors import ConfigError, DataError
from mtlkit.sources import DataSource
from mtlkit.tasks._checks import check_label_cells, check_label_lists
from mtlkit.tasks._labels import (
    check_label_range,
    class_label_state,
    label_list_names,
    list_element_feature,
    load_class_label_state,
    resolve_num_labels,
)
from mtlkit.tasks.base import Task, linear_head, text_inputs


class MultiLabelClassification(Task):
    """A set of labels per text (or text pair); per-label sigmoid + BCE; micro and macro F1.

    Labels come in one of two layouts:

    * one column (``label_column``) holding, per example, a list of label ids
      (``Sequence(ClassLabel)``, or ints with ``num_labels``/``label_names``) or label names
      (mapped by ``label_names`` when given, else by the sorted label set of the train split);
    * several 0/1 columns, one per label (``label_columns``); the column names are the label
      names unless ``label_names`` is given.

    Targets are multi-hot float vectors of length ``num_labels``. The metrics threshold the
    sigmoid probabilities at ``threshold``.

    Args:
        name: Task name.
        source: Data source.
        text_column: Column of the (first) text.
        text_pair_column: Column of the second text for sentence-pair tasks.
        label_column: Column holding each example's list of labels (when ``label_columns`` is
            not set).
        label_columns: One 0/1 column per label, instead of ``label_column``.
        num_labels: Number of labels; read from the data when omitted.
        label_names: Name of every label id.
        max_length: Truncation length in tokens.
        loss_weight: Static multiplier of this task's loss.
        threshold: Probability above which a label counts as predicted (metrics only).
    """

    primary_metric = "micro_f1"

    def __init__(
        self,
        name: str,
        source: DataSource,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "labels",
        label_columns: list[str] | None = None,
        num_labels: int | None = None,
        label_names: list[str] | None = None,
        max_length: int = 128,
        loss_weight: float = 1.0,
        threshold: float = 0.5,
    ) -> None:
        super().__init__(
            name, source, text_column, label_column, max_length, loss_weight, text_pair_column
        )
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"task {name!r}: threshold must be in (0, 1), got {threshold}")
        if label_columns is not None and not label_columns:
            raise ConfigError(f"task {name!r}: label_columns must not be empty")
        if num_labels is not None and num_labels < 1:
            raise DataError(f"task {name!r}: num_labels must be >= 1, got {num_labels}")
        self.label_columns = list(label_columns) if label_columns is not None else None
        self.threshold = threshold
        self._given_label_names = list(label_names) if label_names is not None else None
        self.num_labels = num_labels
        self.label_names = self._given_label_names
        if self.label_columns is not None:
            self._resolve_from_columns()

    def _resolve_from_columns(self) -> None:
        cols = self.label_columns or []
        names = self._given_label_names or cols
        for what, count in (("num_labels", self.num_labels), ("label_names", len(names))):
            if count is not None and count != len(cols):
                raise DataError(
                    f"task {self.name!r}: {what} gives {count} labels but "
                    f"{len(cols)} label_columns are set"
                )
        self.num_labels, self.label_names = len(cols), list(names)

    def required_columns(self) -> list[str]:
        labels = self.label_columns if self.label_columns is not None else [self.label_column]
        return [*self.text_columns(), *labels]

    def fingerprint(self) -> str:
        return super().fingerprint() + repr((self.label_columns, self._given_label_names))

    # ----------------------------------------------------------------- data
    def check_rows(self, split: str, ds: Dataset) -> None:
        super().check_rows(split, ds)
        if self.label_columns is None:
            check_label_lists(self, split, ds, self.label_column)
        for column in self.label_columns or []:
            check_label_cells(self, split, ds, column)

    def prepare(self, data: DatasetDict) -> DatasetDict:
        if self.label_columns is not None:
            self._check_binary_columns(data)
            self._require_two_labels()
            return data
        element = list_element_feature(data, self.label_column)
        if element is None:
            raise DataError(
                f"task {self.name!r}: column {self.label_column!r} must hold a list of labels per "
                f"example (found {data['train'].features[self.label_column]}); "
                "for one 0/1 column per label set label_columns"
            )
        data, names = label_list_names(data, self, element, self._given_label_names)
        self.num_labels, self.label_names = resolve_num_labels(
            data, self.label_column, self.name, self.num_labels, names
        )
        self._require_two_labels()
        check_label_range(data, self.label_column, self.name, self.num_labels)
        return data

    def _require_two_labels(self) -> None:
        if (self.num_labels or 0) < 2:
            raise DataError(
                f"task {self.name!r}: multi-label classification needs at least 2 labels, found "
                f"{self.num_labels} {self.label_names or []}; for one yes/no label use "
                "mtlkit.tasks.SequenceClassification with num_labels: 2"
            )

    def _check_binary_columns(self, data: DatasetDict) -> None:
        for split, ds in data.items():
            for column in self.label_columns or []:
                dtype = getattr(ds.features[column], "dtype", "")
                values = np.asarray(ds[column]) if len(ds) else np.zeros(0)
                numeric = dtype == "bool" or dtype.startswith(("int", "uint", "float"))
                if not numeric or not np.isin(values, (0, 1)).all():
                    raise DataError(
                        f"task {self.name!r}: split {split!r} label column {column!r} must hold "
                        f"only 0/1 values (type {ds.features[column]})"
                    )

    def tokenize(self, batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase) -> dict:
        out = text_inputs(self, batch, tokenizer)
        out["labels"] = self.multi_hot(batch)
        return out

    def multi_hot(self, batch: dict[str, list[Any]]) -> list[list[float]]:
        """The multi-hot target vector of every row of a raw batch."""
        if self.label_columns is not None:
            columns = [batch[c] for c in self.label_columns]
            return [[float(v) for v in row] for row in zip(*columns, strict=True)]
        assert self.num_labels is not None, f"task {self.name!r}: num_labels unresolved"
        out = []
        for ids in batch[self.label_column]:
            row = [0.0] * self.num_labels
            for i in ids:
                row[int(i)] = 1.0
            out.append(row)
        return out

    def collate_labels(self, labels: list[Any], width: int) -> Tensor:
        return torch.tensor(labels, dtype=torch.float32)

    # ---------------------------------------------------------------- model
    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        return linear_head(self, hidden_size, dropout)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def distill_loss(
        self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
    ) -> Tensor:
        """``T^2 *`` BCE of the student's softened label probabilities ``sigmoid(s / T)``
        against the teacher's ``sigmoid(t / T)``, averaged over examples and labels."""
        t = float(temperature)
        soft_targets = torch.sigmoid(teacher_logits.float() / t)
        return F.binary_cross_entropy_with_logits(logits.float() / t, soft_targets) * t * t

    def metric_inputs(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(sigmoid probabilities, 0/1 int targets)``, both ``[batch, num_labels]``."""
        return torch.sigmoid(logits.detach().float()), labels.long()

    def output_spec(self) -> dict[str, Any]:
        """How a prediction is read from the head's outputs (``mtlkit.model.outputs``):
        the labels above ``threshold`` and every label's probability."""
        return {"kind": "multi_label", "threshold": self.threshold}

    def build_metrics(self) -> MetricCollection:
        n, t = self.num_labels, self.threshold
        return MetricCollection(
            {
                "micro_f1": MultilabelF1Score(num_labels=n, threshold=t, average="micro"),
                "macro_f1": MultilabelF1Score(num_labels=n, threshold=t, average="macro"),
            }
        )

    def label_state(self) -> dict[str, Any]:
        return class_label_state(self)

    def load_label_state(self, state: dict[str, Any]) -> None:
        load_class_label_state(self, state)
