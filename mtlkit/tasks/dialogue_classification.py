"""Dialogue classification: a list of turns (optionally with speakers) -> one label."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import PreTrainedTokenizerBase

from mtlkit.dialogue import encode_dialogues
from mtlkit.errors import ConfigError, DataError
from mtlkit.sources import DataSource
from mtlkit.tasks._checks import check_label_cells
from mtlkit.tasks._dialogue import check_turn_lists, collate_turns
from mtlkit.tasks._labels import (
    class_label_state,
    class_metrics,
    load_class_label_state,
    prepare_class_labels,
)
from mtlkit.tasks.base import Task, linear_head, soft_kl

Encoding = Literal["flat", "hierarchical"]


class DialogueClassification(Task):
    """One label per dialogue (a list of turns, oldest first); cross-entropy; accuracy and
    macro-F1 (response selection, dialogue act or intent of the last turn, ...).

    Two encodings, a config choice:

    * ``flat``: the turns as one sequence ``[CLS] turn_1 [SEP] turn_2 [SEP] ... [SEP]``
      (:func:`mtlkit.dialogue.encode_dialogues`; ``"<speaker>:"`` before each turn when
      speakers are given). Too long a dialogue loses its oldest turns first, so the latest turns
      survive. The head is the linear head of sequence classification.
    * ``hierarchical``: each turn is one row of the shared encoder's batch (``max_length``
      tokens per turn), pooled to a vector; a one-layer GRU over the turn vectors, in order and
      masked past each dialogue's last turn, feeds the linear head with its final state
      (hierarchical recurrent encoding of dialogue context: Serban et al., AAAI 2016, "Building
      End-To-End Dialogue Systems Using Generative Hierarchical Neural Network Models").

    Args:
        name: Task name.
        source: Data source; the turns column holds a list of strings per row.
        turns_column: Column of the turns.
        speakers_column: Optional column of speaker names, one per turn.
        label_column: Column of the class id (``ClassLabel``, int or string).
        encoding: ``flat`` or ``hierarchical``.
        max_turns: Keep only the latest turns (``None``: all; hierarchical needs a bound on
            memory, so it defaults to 16 there).
        num_labels: Number of classes; read from a ``ClassLabel`` feature when omitted.
        max_length: Tokens per dialogue (flat) or per turn (hierarchical).
        loss_weight: Static multiplier of this task's loss.
        label_smoothing: Cross-entropy label smoothing.
    """

    primary_metric = "accuracy"

    def __init__(
        self,
        name: str,
        source: DataSource,
        turns_column: str = "turns",
        speakers_column: str | None = None,
        label_column: str = "label",
        encoding: Encoding = "flat",
        max_turns: int | None = None,
        num_labels: int | None = None,
        max_length: int = 128,
        loss_weight: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(name, source, turns_column, label_column, max_length, loss_weight)
        if encoding not in ("flat", "hierarchical"):
            raise ConfigError(
                f"task {name!r}: encoding must be 'flat' or 'hierarchical', got {encoding!r}"
            )
        if max_turns is not None and (isinstance(max_turns, bool) or max_turns < 1):
            raise ConfigError(f"task {name!r}: max_turns must be >= 1 or unset, got {max_turns!r}")
        if num_labels is not None and num_labels < 2:
            raise DataError(f"task {name!r}: num_labels must be >= 2, got {num_labels}")
        self.turns_column, self.speakers_column = turns_column, speakers_column
        self.encoding: Encoding = encoding
        self.level = "dialogue" if encoding == "hierarchical" else "sequence"  # type: ignore[misc]
        self.max_turns = max_turns if max_turns or encoding == "flat" else 16
        self.num_labels = num_labels
        self.label_names: list[str] | None = None
        self.label_smoothing = label_smoothing

    # ----------------------------------------------------------------- data
    def text_columns(self) -> list[str]:
        return [self.turns_column, *([self.speakers_column] if self.speakers_column else [])]

    def check_rows(self, split: str, ds: Dataset) -> None:
        check_turn_lists(self, split, ds, self.turns_column, self.speakers_column)
        check_label_cells(self, split, ds, self.label_column)

    def prepare(self, data: DatasetDict) -> DatasetDict:
        return prepare_class_labels(self, data)

    def tokenize(self, batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase) -> dict:
        dialogues = batch[self.turns_column]
        speakers = batch[self.speakers_column] if self.speakers_column else None
        if self.encoding == "flat":
            out = encode_dialogues(tokenizer, dialogues, self.max_length, speakers, self.max_turns)
        else:
            out = self._tokenize_turns(dialogues, speakers, tokenizer)
        out["labels"] = [int(v) for v in batch[self.label_column]]
        return out

    def _tokenize_turns(
        self, dialogues: list[list[str]], speakers: list[list[str]] | None, tokenizer: Any
    ) -> dict[str, list[Any]]:
        """Hierarchical: each kept turn tokenized alone (``[CLS] speaker: turn [SEP]``), as
        nested lists ``[dialogue][turn][token]``."""
        keep = slice(-self.max_turns, None) if self.max_turns else slice(None)
        kept = [list(d)[keep] for d in dialogues]
        if speakers is not None:
            names = [list(s)[keep] for s in speakers]
            kept = [
                [f"{n}: {t}" for n, t in zip(ns, d, strict=True)]
                for ns, d in zip(names, kept, strict=True)
            ]
        flat = tokenizer([t for d in kept for t in d], truncation=True, max_length=self.max_length)
        out: dict[str, list[Any]] = {key: [] for key in flat}
        start = 0
        for dialogue in kept:
            for key, values in flat.items():
                out[key].append(values[start : start + len(dialogue)])
            start += len(dialogue)
        return out

    def fingerprint(self) -> str:
        return repr((super().fingerprint(), self.speakers_column, self.encoding, self.max_turns))

    def collate(self, rows: dict[str, list[Any]], pad_token_id: int) -> dict[str, Tensor]:
        if self.encoding == "flat":
            return super().collate(rows, pad_token_id)
        return collate_turns(rows, pad_token_id, self.collate_labels(rows["labels"], 0))

    # ---------------------------------------------------------------- model
    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        if self.encoding == "flat":
            return linear_head(self, hidden_size, dropout)
        return ContextHead(hidden_size, linear_head(self, hidden_size, dropout))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def distill_loss(
        self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
    ) -> Tensor:
        """Mean over dialogues of ``T^2 * KL(teacher || student)`` (Hinton et al. 2015)."""
        return soft_kl(logits, teacher_logits, temperature).mean()

    def output_spec(self) -> dict[str, Any]:
        """The most probable label and every label's probability."""
        return {"kind": "sequence_classification"}

    def input_spec(self) -> dict[str, Any]:
        """How an exported model encodes a dialogue input (see :mod:`mtlkit.dialogue`)."""
        return {
            "type": "dialogue",
            "encoding": self.encoding,
            "max_turns": self.max_turns,
            "speakers": self.speakers_column is not None,
        }

    def build_metrics(self) -> MetricCollection:
        return class_metrics(self.num_labels)

    def label_state(self) -> dict[str, Any]:
        return class_label_state(self)

    def load_label_state(self, state: dict[str, Any]) -> None:
        load_class_label_state(self, state)


class ContextHead(nn.Module):
    """A one-layer GRU over a dialogue's turn vectors, then ``head`` on its final state (the
    state after each dialogue's last real turn: padding turns are never read).

    Args:
        hidden_size: Size of the turn vectors and of the GRU state.
        head: The output layer applied to the final state.
    """

    def __init__(self, hidden_size: int, head: nn.Module) -> None:
        super().__init__()
        self.context = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.head = head

    def forward(self, turns: Tensor, turn_mask: Tensor) -> Tensor:
        """``turns``: ``[dialogues, turns, hidden]``; ``turn_mask``: ``[dialogues, turns]``, true
        for real turns (each dialogue's turns first, then padding)."""
        lengths = turn_mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            turns, lengths, batch_first=True, enforce_sorted=False
        )
        _, final = self.context(packed)
        return self.head(final[-1].to(turns.dtype))


__all__ = ["ContextHead", "DialogueClassification"]
