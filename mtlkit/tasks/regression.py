"""Single-sentence and sentence-pair regression (e.g. STS-B similarity scores)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import Tensor, nn
from torchmetrics import MeanSquaredError, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef
from transformers import PreTrainedTokenizerBase

from mtlkit.errors import ConfigError, DataError
from mtlkit.sources import DataSource
from mtlkit.tasks._checks import rows_phrase
from mtlkit.tasks.base import Task, text_inputs


class Regression(Task):
    """One real-valued target per text (or text pair); MSE loss; Pearson, Spearman and MSE.

    The head predicts the normalised target ``z = (y - target_shift) / target_scale``; the loss
    is the MSE on that scale. Labels are stored unnormalised, and :meth:`metric_inputs` maps
    predictions back with :meth:`denormalize`, so every metric (``mse`` included) is computed on
    the original scale of the data.

    Args:
        name: Task name.
        source: Data source.
        text_column: Column of the (first) text.
        text_pair_column: Column of the second text for sentence-pair tasks.
        label_column: Column of the numeric target.
        max_length: Truncation length in tokens.
        loss_weight: Static multiplier of this task's loss.
        target_scale: Divisor of the target before the loss (e.g. the target's std); > 0.
        target_shift: Subtracted from the target before scaling (e.g. the target's mean).
    """

    primary_metric = "pearson"
    #: One real-valued output.
    num_labels = 1

    def __init__(
        self,
        name: str,
        source: DataSource,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        max_length: int = 128,
        loss_weight: float = 1.0,
        target_scale: float = 1.0,
        target_shift: float = 0.0,
    ) -> None:
        super().__init__(
            name, source, text_column, label_column, max_length, loss_weight, text_pair_column
        )
        if not (math.isfinite(target_scale) and target_scale > 0):
            raise ConfigError(
                f"task {name!r}: target_scale must be finite and > 0, got {target_scale}"
            )
        if not math.isfinite(target_shift):
            raise ConfigError(f"task {name!r}: target_shift must be finite, got {target_shift}")
        self.target_scale = float(target_scale)
        self.target_shift = float(target_shift)

    # ----------------------------------------------------------------- data
    def check_rows(self, split: str, ds: Dataset) -> None:
        super().check_rows(split, ds)
        dtype = getattr(ds.features[self.label_column], "dtype", None)
        if dtype is None or not (dtype.startswith(("int", "uint", "float")) or dtype == "bool"):
            raise DataError(
                f"task {self.name!r}: split {split!r} column {self.label_column!r} must be "
                f"numeric for regression, found {ds.features[self.label_column]}"
            )
        values = np.asarray(ds[self.label_column], dtype=np.float64)
        rows = np.flatnonzero(~np.isfinite(values))
        if rows.size:
            raise DataError(
                f"task {self.name!r}: split {split!r} has {rows.size} NaN/inf/missing target(s) "
                f"in column {self.label_column!r}: "
                f"{rows_phrase(rows, self.source.origin(split))}"
            )

    def prepare(self, data: DatasetDict) -> DatasetDict:
        return data

    def tokenize(self, batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase) -> dict:
        out = text_inputs(self, batch, tokenizer)
        out["labels"] = [float(v) for v in batch[self.label_column]]
        return out

    def collate_labels(self, labels: list[Any], width: int) -> Tensor:
        return torch.tensor(labels, dtype=torch.float32)

    # ---------------------------------------------------------------- model
    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, 1), nn.Flatten(0))

    def normalize(self, target: Tensor) -> Tensor:
        """Maps targets to the scale the head predicts: ``(y - shift) / scale``."""
        return (target.float() - self.target_shift) / self.target_scale

    def denormalize(self, preds: Tensor) -> Tensor:
        """Maps head outputs back to the data's scale: ``z * scale + shift``."""
        return preds.float() * self.target_scale + self.target_shift

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.mse_loss(logits.float().reshape(-1), self.normalize(labels).reshape(-1))

    def distill_loss(
        self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
    ) -> Tensor:
        """MSE to the teacher's prediction, on the normalised scale both heads predict
        (``temperature`` does not apply to a real-valued output)."""
        return F.mse_loss(logits.float().reshape(-1), teacher_logits.float().reshape(-1))

    def metric_inputs(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(predictions, targets)`` as float32 vectors on the original target scale."""
        return self.denormalize(logits.detach()).reshape(-1), labels.float().reshape(-1)

    def output_spec(self) -> dict[str, Any]:
        """How a prediction is read from the head's outputs (``mtlkit.model.outputs``):
        the value on the data's scale (``label_state``'s target scale and shift)."""
        return {"kind": "regression"}

    def build_metrics(self) -> MetricCollection:
        with warnings.catch_warnings():  # "will save all targets and predictions in the buffer"
            warnings.filterwarnings("ignore", message=".*save all targets and predictions.*")
            spearman = SpearmanCorrCoef()
        return MetricCollection(
            {"pearson": PearsonCorrCoef(), "spearman": spearman, "mse": MeanSquaredError()}
        )

    def label_state(self) -> dict[str, Any]:
        return {"target_scale": self.target_scale, "target_shift": self.target_shift}

    def load_label_state(self, state: dict[str, Any]) -> None:
        """Restores the normalisation the saved head was trained with."""
        self.target_scale = float(state.get("target_scale", self.target_scale))
        self.target_shift = float(state.get("target_shift", self.target_shift))
