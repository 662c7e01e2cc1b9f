"""Output decoding: a head's logits for one input read as a JSON-ready prediction.

Each task type says how its outputs are read with ``Task.output_spec()`` (its ``kind`` and the
settings decoding needs, e.g. a threshold); the same spec is stored per task in an export's
``mtlkit.json``, so a served model reads its outputs without the task classes (which need
``datasets`` and ``torchmetrics``). This module needs torch only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor


class OutputDecoder:
    """Reads one input's logits; the base class returns them as numbers (unknown kinds).

    Args:
        spec: The task's description: ``level``, ``kind``, ``head_state`` (label names,
            target scale) and the kind's settings (``threshold``).
        out_features: The head's width (labels are ``0..n-1`` when the task has no names).
    """

    kind: ClassVar[str] = "logits"

    def __init__(self, spec: dict[str, Any], out_features: int) -> None:
        self.spec, self.level = spec, spec.get("level", "sequence")
        state = spec.get("head_state") or {}
        self.labels = [str(x) for x in state.get("label_names") or range(out_features)]

    def decode(
        self,
        logits: Tensor,
        mask: Tensor | None = None,
        word_ids: list[int | None] | None = None,
        words: list[str] | None = None,
    ) -> dict[str, Any]:
        """One input's prediction.

        Args:
            logits: The head's output for this input (``[labels]``, or ``[tokens, labels]`` for
                token-level tasks).
            mask: Token-level tasks: which positions are real tokens.
            word_ids: Token-level tasks: the whitespace word of each position (``None`` for
                special tokens).
            words: Token-level tasks: the input's whitespace words.
        """
        if self.level == "token" and mask is not None:
            return {"logits": logits[mask.bool()].tolist()}
        return {"logits": logits.tolist()}


class ClassDecoder(OutputDecoder):
    """Single-label classification: the most probable label and every label's probability."""

    kind = "sequence_classification"

    def decode(self, logits: Tensor, *_: Any, **__: Any) -> dict[str, Any]:
        probs = logits.softmax(-1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        named = dict(zip(self.labels, probs, strict=True))
        return {"label": self.labels[best], "probabilities": named}


class ValueDecoder(OutputDecoder):
    """Regression: the value on the data's scale (the head predicts the normalised target)."""

    kind = "regression"

    def decode(self, logits: Tensor, *_: Any, **__: Any) -> dict[str, Any]:
        state = self.spec.get("head_state") or {}
        scale, shift = state.get("target_scale", 1.0), state.get("target_shift", 0.0)
        return {"value": float(logits.reshape(-1)[0]) * scale + shift}


class MultiLabelDecoder(OutputDecoder):
    """Multi-label classification: the labels above the task's threshold, and probabilities."""

    kind = "multi_label"

    def decode(self, logits: Tensor, *_: Any, **__: Any) -> dict[str, Any]:
        probs = torch.sigmoid(logits).tolist()
        threshold = float(self.spec.get("threshold", 0.5))
        chosen = [name for name, p in zip(self.labels, probs, strict=True) if p > threshold]
        return {"labels": chosen, "probabilities": dict(zip(self.labels, probs, strict=True))}


class TagDecoder(OutputDecoder):
    """Token classification: one tag per whitespace word, from the word's first sub-token
    (``None`` for words cut by truncation)."""

    kind = "token_classification"

    def decode(
        self,
        logits: Tensor,
        mask: Tensor | None = None,
        word_ids: list[int | None] | None = None,
        words: list[str] | None = None,
    ) -> dict[str, Any]:
        words = list(words or [])
        best = logits.argmax(-1).tolist()
        tags: list[str | None] = [None] * len(words)
        previous = None
        for position, word in enumerate(word_ids or []):
            if word is not None and word != previous:  # a word's first sub-token: its tag
                tags[word] = self.labels[best[position]]
            previous = word
        return {"words": words, "tags": tags}


DECODERS: dict[str, type[OutputDecoder]] = {
    cls.kind: cls for cls in (ClassDecoder, ValueDecoder, MultiLabelDecoder, TagDecoder)
}


def output_decoder(spec: dict[str, Any], out_features: int) -> OutputDecoder:
    """The decoder of ``spec["kind"]`` (raw logits for a kind this version does not know)."""
    return DECODERS.get(spec.get("kind", "logits"), OutputDecoder)(spec, out_features)


def task_decoder(
    level: str, output_spec: dict[str, Any], label_state: dict[str, Any], out_features: int
) -> OutputDecoder:
    """The decoder of a task object's ``output_spec()``, ``label_state()`` and head width (what
    an export stores per task, read back by :func:`output_decoder`)."""
    spec = {"level": level, "head_state": label_state, **output_spec}
    return output_decoder(spec, out_features)
