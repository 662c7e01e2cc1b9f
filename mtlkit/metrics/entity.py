"""Entity-level precision, recall and F1 for BIO-tagged sequences (seqeval-style).

Entities are read with the rules of seqeval's default (lenient) mode, which covers the IOB1, IOB2
and IOBES schemes:

* a ``B-X`` or ``S-X`` tag always starts a new entity;
* an ``I-X`` or ``E-X`` tag continues the current entity when it has the same type ``X``,
  otherwise (after ``O``, after another type, or after an entity that ended with ``E-``/``S-``)
  it starts a new entity, as seqeval does;
* an ``E-X``/``S-X`` tag closes the entity it belongs to; ``O`` closes any open entity.

Any tag that is not ``O`` and does not look like ``<B|I|E|S>-<type>`` counts as ``O``. Entities
are ``(type, start, end)`` triples with ``end`` exclusive (Python slice convention). An entity is
correct only when its type and both boundaries match a gold entity exactly.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

IGNORE_INDEX = -100  # same value as mtlkit.tasks.base.IGNORE_INDEX
_TAG = re.compile(r"^([BIES])-(.+)$")

Entity = tuple[str, int, int]


def parse_tag(tag: str) -> tuple[str, str | None]:
    """Splits a tag into its prefix (``B``/``I``/``E``/``S``, or ``O``) and its entity type.

    Args:
        tag: A tag such as ``"B-PER"`` or ``"O"``.

    Returns:
        ``(prefix, type)``; ``("O", None)`` for ``O`` and for tags outside the scheme.
    """
    match = _TAG.match(tag)
    return (match.group(1), match.group(2)) if match else ("O", None)


def is_bio_scheme(label_names: list[str] | None) -> bool:
    """Whether label names follow a BIO-like scheme (``O`` plus ``B-X``/``I-X``/``E-X``/``S-X``).

    Args:
        label_names: The tag names, or ``None`` when unknown.

    Returns:
        True when every name is ``O`` or prefixed and at least one names an entity type.
    """
    if not label_names:
        return False
    prefixed = [n for n in label_names if _TAG.match(n)]
    return bool(prefixed) and all(n == "O" or _TAG.match(n) for n in label_names)


def _chunk_ends(prev: str, tag: str, prev_type: str | None, etype: str | None) -> bool:
    return (
        prev in ("E", "S")
        or (prev in ("B", "I") and tag in ("B", "S", "O"))
        or (prev != "O" and prev_type != etype)
    )


def _chunk_starts(prev: str, tag: str, prev_type: str | None, etype: str | None) -> bool:
    return (
        tag in ("B", "S")
        or (prev in ("E", "S", "O") and tag in ("E", "I"))
        or (tag != "O" and prev_type != etype)
    )


def extract_entities(tags: list[str]) -> set[Entity]:
    """The entities of one tag sequence.

    Args:
        tags: Tag names, one per word, e.g. ``["B-PER", "I-PER", "O", "B-LOC"]``.

    Returns:
        The set of ``(type, start, end)`` triples, ``end`` exclusive, e.g.
        ``{("PER", 0, 2), ("LOC", 3, 4)}``.
    """
    entities: set[Entity] = set()
    prev, prev_type, start = "O", None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, etype = parse_tag(tag)
        if _chunk_ends(prev, prefix, prev_type, etype):
            entities.add((str(prev_type), start, i))
        if _chunk_starts(prev, prefix, prev_type, etype):
            start = i
        prev, prev_type = prefix, etype
    return entities


class EntityF1(Metric):
    """Entity-level precision, recall or F1 over batches of tag-id sequences.

    The states are three summed counters (true positives, predicted and gold entities), so the
    metric syncs across processes like any torchmetrics metric. Three instances with different
    ``output`` can live in one :class:`~torchmetrics.MetricCollection`; they share their state
    through the collection's compute groups.

    Args:
        label_names: Tag name of every tag id.
        output: Which score :meth:`compute` returns: ``"f1"``, ``"precision"`` or ``"recall"``.
        ignore_index: Target value of positions to skip (sub-tokens, special tokens, padding).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        label_names: list[str],
        output: Literal["f1", "precision", "recall"] = "f1",
        ignore_index: int = IGNORE_INDEX,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if output not in ("f1", "precision", "recall"):
            raise ValueError(f"output must be 'f1', 'precision' or 'recall', got {output!r}")
        self.label_names = list(label_names)
        self.output = output
        self.ignore_index = ignore_index
        for state in ("tp", "n_pred", "n_gold"):
            self.add_state(state, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Counts the entities of a batch.

        Args:
            preds: Predicted tag ids, ``[batch, length]``.
            target: Gold tag ids, ``[batch, length]``; ``ignore_index`` positions are dropped from
                both sequences before entities are read.
        """
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
        tp = n_pred = n_gold = 0
        skip = self.ignore_index
        for pred_row, gold_row in zip(preds.tolist(), target.tolist(), strict=True):
            kept = [(p, g) for p, g in zip(pred_row, gold_row, strict=True) if g != skip]
            pred = extract_entities([self.label_names[p] for p, _ in kept])
            gold = extract_entities([self.label_names[g] for _, g in kept])
            tp, n_pred, n_gold = tp + len(pred & gold), n_pred + len(pred), n_gold + len(gold)
        self.tp += tp
        self.n_pred += n_pred
        self.n_gold += n_gold

    def compute(self) -> Tensor:
        """The chosen score; 0 when its denominator is 0."""
        tp = self.tp.double()
        if self.output == "precision":
            num, den = tp, self.n_pred.double()
        elif self.output == "recall":
            num, den = tp, self.n_gold.double()
        else:
            num, den = 2 * tp, (self.n_pred + self.n_gold).double()
        return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num)).float()
