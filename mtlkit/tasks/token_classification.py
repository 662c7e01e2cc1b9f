"""Token classification (NER, chunking, POS tagging) over pre-split words."""

from __future__ import annotations

import warnings
from typing import Any

import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import PreTrainedTokenizerBase

from mtlkit.errors import ConfigError, DataError, DataWarning
from mtlkit.metrics.entity import EntityF1, is_bio_scheme, parse_tag
from mtlkit.sources import DataSource
from mtlkit.tasks._checks import check_label_lists, check_word_lists, require_two_classes
from mtlkit.tasks._labels import (
    check_label_range,
    class_label_state,
    label_list_names,
    list_element_feature,
    load_class_label_state,
    resolve_num_labels,
)
from mtlkit.tasks.base import IGNORE_INDEX, Task, _pad, linear_head, soft_kl


class TokenClassification(Task):
    """One tag per word; per-token cross-entropy; entity-level or token-level metrics.

    Words are tokenized with ``is_split_into_words=True`` and only the first sub-token of each
    word carries the word's tag; later sub-tokens and special tokens get ``IGNORE_INDEX`` (-100),
    so they are skipped by the loss and the metrics (unless ``label_all_subtokens``).

    Metrics depend on the tag names. When they follow a BIO-like scheme (``O``, ``B-X``,
    ``I-X``, and optionally ``E-X``/``S-X``) the task reports entity-level ``precision``,
    ``recall`` and ``f1`` (seqeval's default lenient mode, see :mod:`mtlkit.metrics.entity`) and
    ``token_accuracy``, with ``f1`` as primary metric. Otherwise (POS tags, unnamed integer tags)
    it reports ``token_accuracy`` and ``macro_f1`` with ``token_accuracy`` as primary metric; in
    that case :attr:`primary_metric` is set on the instance once the tag names are known
    (in :meth:`prepare` or :meth:`load_label_state`).

    Args:
        name: Task name.
        source: Data source.
        tokens_column: Column holding each example's list of words.
        label_column: Column holding each example's list of tags: ``Sequence(ClassLabel)``,
            integer ids (with ``num_labels`` or ``label_names``) or strings (mapped to ids by
            ``label_names`` when given, else by the sorted tag set of the train split).
        num_labels: Number of tags; read from the data when omitted.
        label_names: Tag name of every tag id; needed for entity metrics on integer tags.
        max_length: Truncation length in tokens (words past it lose their tags).
        loss_weight: Static multiplier of this task's loss.
        label_all_subtokens: Give later sub-tokens their word's tag too (``B-X`` becomes
            ``I-X``) instead of ``IGNORE_INDEX``; loss and metrics then count sub-tokens.
        label_smoothing: Cross-entropy label smoothing.
    """

    level = "token"
    primary_metric = "f1"

    def __init__(
        self,
        name: str,
        source: DataSource,
        tokens_column: str = "tokens",
        label_column: str = "tags",
        num_labels: int | None = None,
        label_names: list[str] | None = None,
        max_length: int = 128,
        loss_weight: float = 1.0,
        label_all_subtokens: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(name, source, tokens_column, label_column, max_length, loss_weight)
        if num_labels is not None and num_labels < 2:
            raise DataError(f"task {name!r}: num_labels must be >= 2, got {num_labels}")
        if label_names is not None and num_labels is not None and len(label_names) != num_labels:
            raise DataError(
                f"task {name!r}: num_labels={num_labels} but {len(label_names)} label_names given"
            )
        self.tokens_column = tokens_column
        self.num_labels = len(label_names) if label_names is not None else num_labels
        self.label_names = list(label_names) if label_names is not None else None
        self._given_label_names = self.label_names
        self.label_all_subtokens = label_all_subtokens
        self.label_smoothing = label_smoothing
        self._subtoken_label: list[int] = []
        if self.label_names is not None:
            self._configure_scheme()

    def fingerprint(self) -> str:
        return super().fingerprint() + repr((self.label_all_subtokens, self._given_label_names))

    def text_columns(self) -> list[str]:
        return [self.tokens_column]

    # ----------------------------------------------------------------- data
    def check_rows(self, split: str, ds: Dataset) -> None:
        self._check_list_columns(ds)
        check_word_lists(self, split, ds, self.tokens_column)
        check_label_lists(self, split, ds, self.label_column)
        self._check_lengths(split, ds)

    def prepare(self, data: DatasetDict) -> DatasetDict:
        element = list_element_feature(data, self.label_column)
        data, names = label_list_names(data, self, element, self._given_label_names)
        self.num_labels, names = resolve_num_labels(
            data, self.label_column, self.name, self.num_labels, names
        )
        self.label_names = names
        require_two_classes(self, self.label_column, names, self.num_labels)
        check_label_range(data, self.label_column, self.name, self.num_labels)
        self._configure_scheme()
        self._warn_without_entities()
        return data

    def _check_list_columns(self, ds: Dataset) -> None:
        for column in (self.tokens_column, self.label_column):
            element = list_element_feature(DatasetDict(train=ds), column)
            if element is None:
                raise DataError(
                    f"task {self.name!r}: column {column!r} must hold one list per example "
                    f"(words or tags), found {ds.features[column]}"
                )

    def _check_lengths(self, split: str, ds: Dataset) -> None:
        rows = zip(ds[self.tokens_column], ds[self.label_column], strict=True)
        for i, (words, tags) in enumerate(rows):
            if len(words) != len(tags):
                raise DataError(
                    f"task {self.name!r}: split {split!r} row {i} has {len(words)} tokens "
                    f"in {self.tokens_column!r} but {len(tags)} tags in {self.label_column!r}"
                )

    def _warn_without_entities(self) -> None:
        """Says why entity F1 is off when the tag names are not (all) BIO."""
        names = self.label_names
        if is_bio_scheme(names):
            return
        metrics = "entity f1 is off; the task reports token_accuracy (primary) and macro_f1"
        if not names:
            detail = "its tags have no names (integer tags without label_names)"
        else:
            odd = [n for n in names if n != "O" and parse_tag(n)[1] is None]
            if len(odd) < len(names) - ("O" in names):  # the other tags are BIO: typos?
                detail = (
                    f"tag(s) {odd[:5]} do not follow the BIO scheme (O, B-X, I-X, E-X, S-X) "
                    "of its other tags"
                )
            else:
                detail = f"its tags are not BIO (e.g. {odd[:3]})"
        warnings.warn(f"task {self.name!r}: {detail}: {metrics}", DataWarning, stacklevel=3)

    def _configure_scheme(self) -> None:
        """Picks the metrics and the sub-token tag mapping from the tag names."""
        names = self.label_names
        bio = is_bio_scheme(names)
        self.primary_metric = "f1" if bio else "token_accuracy"
        n = len(names) if names is not None else (self.num_labels or 0)
        self._subtoken_label = list(range(n))
        if bio and names is not None:
            index = {tag: i for i, tag in enumerate(names)}
            for i, tag in enumerate(names):
                prefix, etype = parse_tag(tag)
                if prefix == "B" and f"I-{etype}" in index:
                    self._subtoken_label[i] = index[f"I-{etype}"]

    def tokenize(self, batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase) -> dict:
        if not tokenizer.is_fast:
            raise ConfigError(
                f"task {self.name!r}: token classification needs a fast tokenizer (word_ids)"
            )
        words = [[str(w) for w in row] for row in batch[self.tokens_column]]
        enc = tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=self.max_length
        )
        out = dict(enc)
        out["labels"] = [
            self.align_labels(enc.word_ids(i), [int(t) for t in tags])
            for i, tags in enumerate(batch[self.label_column])
        ]
        return out

    def align_labels(self, word_ids: list[int | None], tags: list[int]) -> list[int]:
        """Per-token labels from per-word tags.

        Args:
            word_ids: Word index of every token (``None`` for special tokens).
            tags: Tag id of every word.

        Returns:
            The word's tag on its first sub-token; ``IGNORE_INDEX`` on specials and on later
            sub-tokens (or their word's inside tag with ``label_all_subtokens``).
        """
        labels, previous = [], None
        for word in word_ids:
            if word is None:
                labels.append(IGNORE_INDEX)
            elif word != previous:
                labels.append(tags[word])
            elif self.label_all_subtokens:
                labels.append(self._subtoken_label[tags[word]])
            else:
                labels.append(IGNORE_INDEX)
            previous = word
        return labels

    def collate_labels(self, labels: list[Any], width: int) -> Tensor:
        return _pad(labels, width, IGNORE_INDEX)

    # ---------------------------------------------------------------- model
    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        return linear_head(self, hidden_size, dropout)

    def loss_count(self, labels: Tensor) -> int:
        return int((labels != IGNORE_INDEX).sum())

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over labelled tokens; 0 (with gradient) when none is labelled."""
        total = F.cross_entropy(
            logits.float().flatten(0, -2),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        return total / (labels != IGNORE_INDEX).sum().clamp(min=1)

    def distill_loss(
        self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
    ) -> Tensor:
        """Mean over labelled tokens of ``T^2 * KL(teacher || student)`` (padding, special
        tokens and other ``IGNORE_INDEX`` positions are skipped, as in :meth:`loss`)."""
        kept = (labels != IGNORE_INDEX).float()
        per_token = soft_kl(logits, teacher_logits, temperature)
        return (per_token * kept).sum() / kept.sum().clamp(min=1)

    def metric_inputs(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(argmax tag ids, labels)``, both ``[batch, length]``; -100 marks skipped tokens."""
        return logits.detach().argmax(dim=-1), labels

    def output_spec(self) -> dict[str, Any]:
        """How a prediction is read from the head's outputs (``mtlkit.model.outputs``):
        one tag per whitespace word, from its first sub-token."""
        return {"kind": "token_classification"}

    def build_metrics(self) -> MetricCollection:
        n = self.num_labels
        accuracy = MulticlassAccuracy(num_classes=n, average="micro", ignore_index=IGNORE_INDEX)
        if is_bio_scheme(self.label_names):
            names = self.label_names
            return MetricCollection(
                {
                    "precision": EntityF1(names, output="precision"),
                    "recall": EntityF1(names, output="recall"),
                    "f1": EntityF1(names, output="f1"),
                    "token_accuracy": accuracy,
                }
            )
        macro = MulticlassF1Score(num_classes=n, average="macro", ignore_index=IGNORE_INDEX)
        return MetricCollection({"token_accuracy": accuracy, "macro_f1": macro})

    def label_state(self) -> dict[str, Any]:
        return class_label_state(self)

    def load_label_state(self, state: dict[str, Any]) -> None:
        load_class_label_state(self, state)
        self._configure_scheme()
