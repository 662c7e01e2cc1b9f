"""Dialogue inputs as token ids: the flat encoding of a list of turns, shared by every task that
reads a dialogue (classification, generation) and by the exported model's ``predict``.

Flat encoding: one sequence ``[CLS] turn_1 [SEP] turn_2 [SEP] ... turn_n [SEP]`` (the
tokenizer's own special tokens around turns joined by its separator token), each turn optionally
prefixed with a speaker marker (``"<speaker>:"`` tokenized). When the dialogue is longer than
``max_length`` the *oldest* turns go first: whole turns are dropped from the start, then the
oldest turn that still partly fits is cut from its start (its speaker marker kept), so the
latest turns always survive.

This module needs a tokenizer only (no torch, no datasets): the inference code imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtlkit.errors import ConfigError

Turns = Sequence[str]


def separator_id(tokenizer: Any) -> int:
    """The token between turns: the tokenizer's ``sep`` token, else its ``eos`` token.

    Raises:
        ConfigError: The tokenizer has neither.
    """
    for name in ("sep_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ConfigError(
        f"{type(tokenizer).__name__} has no sep or eos token to separate dialogue turns"
    )


def special_wrap(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after one text (``[CLS]``/``[SEP]`` for
    BERT, ``<s>``/``</s>`` for RoBERTa, ``</s>`` after for T5, none for GPT-2)."""
    probe = "a"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    raise ConfigError(f"cannot find where {type(tokenizer).__name__} adds its special tokens")


def join_latest(
    pieces: Sequence[tuple[list[int], list[int]]], separator: int, budget: int
) -> list[int]:
    """Joins ``(marker, text)`` token pieces, oldest first, with ``separator`` into at most
    ``budget`` tokens, dropping the oldest first.

    Whole pieces are kept from the newest back while they fit; the next older piece keeps its
    marker and the end of its text when there is room for at least one text token. If even the
    newest piece does not fit, the end of the newest piece is kept.
    """
    kept: list[list[int]] = []
    used = 0
    for marker, text in reversed(pieces):
        gap = 1 if kept else 0
        if used + gap + len(marker) + len(text) <= budget:
            kept.append(marker + text)
            used += gap + len(marker) + len(text)
            continue
        room = budget - used - gap - len(marker)
        if room > 0:
            kept.append(marker + text[len(text) - room :])
        elif not kept and budget > 0:
            kept.append((marker + text)[-budget:])
        break
    ids: list[int] = []
    for piece in reversed(kept):
        ids.extend([separator, *piece] if ids else piece)
    return ids


def speaker_markers(speakers: Sequence[str] | None, turns: int) -> list[str | None]:
    """The marker text of each turn (``"<speaker>:"``), or ``None`` per turn without speakers."""
    if speakers is None:
        return [None] * turns
    return [f"{speaker}:" for speaker in speakers]


def encode_dialogues(
    tokenizer: Any,
    dialogues: Sequence[Turns],
    max_length: int,
    speakers: Sequence[Sequence[str] | None] | None = None,
    max_turns: int | None = None,
) -> dict[str, list[list[int]]]:
    """The flat encoding of each dialogue (see the module docstring).

    Args:
        tokenizer: A Hugging Face tokenizer.
        dialogues: Each dialogue's turns, oldest first.
        max_length: At most this many tokens per dialogue, special tokens included.
        speakers: Per dialogue, one speaker name per turn (or ``None``): each turn is prefixed
            with ``"<speaker>:"``.
        max_turns: Keep only the latest ``max_turns`` turns (before the length limit).

    Returns:
        ``input_ids``, ``attention_mask`` and, when the tokenizer uses them,
        ``token_type_ids`` (all 0), one list per dialogue, unpadded.
    """
    speakers = speakers if speakers is not None else [None] * len(dialogues)
    latest = [slice(-max_turns, None) if max_turns else slice(None)] * len(dialogues)
    turns = [list(d)[s] for d, s in zip(dialogues, latest, strict=True)]
    names = [list(n)[s] if n is not None else None for n, s in zip(speakers, latest, strict=True)]
    flat = [t for d in turns for t in d]
    texts = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    markers = [m for d, n in zip(turns, names, strict=True) for m in speaker_markers(n, len(d))]
    marker_text = sorted({m for m in markers if m is not None})
    marker_ids: dict[str | None, list[int]] = {None: []}
    if marker_text:
        encoded = tokenizer(marker_text, add_special_tokens=False)["input_ids"]
        marker_ids.update(zip(marker_text, map(list, encoded), strict=True))
    before, after = special_wrap(tokenizer)
    separator, budget = separator_id(tokenizer), max_length - len(before) - len(after)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
    position = 0
    for dialogue in turns:
        pieces = [
            (marker_ids[markers[i]], list(texts[i]))
            for i in range(position, position + len(dialogue))
        ]
        position += len(dialogue)
        ids = before + join_latest(pieces, separator, budget) + after
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        out["token_type_ids"] = [[0] * len(ids) for ids in out["input_ids"]]
    return out
