"""Row checks and batching of dialogue columns (a list of turns per row), shared by the task
types that read dialogues."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset
from torch import Tensor

from mtlkit.errors import DataError
from mtlkit.tasks._checks import blank_rows, rows_phrase, where


def check_turn_lists(
    task: Any, split: str, ds: Dataset, column: str, speakers_column: str | None = None
) -> None:
    """Every row's turns are a non-empty list of non-empty strings; speakers, when given, one
    non-empty name per turn. One :class:`DataError` naming task, split, column and rows."""
    arr = _string_lists(task, split, ds, column, "a list of turns (strings, oldest first)")
    _bad_rows(task, split, column, arr, "missing or empty dialogue (no turns)", "empty turn")
    if speakers_column is None:
        return
    names = _string_lists(task, split, ds, speakers_column, "a list of speaker names")
    _bad_rows(task, split, speakers_column, names, "missing speaker list", "empty speaker name")
    turns = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    counts = pc.list_value_length(names).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(turns != counts)
    if rows.size:
        first = int(rows[0])
        raise DataError(
            f"{where(task, split, speakers_column)}: {int(counts[first])} speaker(s) for "
            f"{int(turns[first])} turn(s) in {rows_phrase(rows, task.source.origin(split))}; "
            f"give one speaker per turn of column {column!r}"
        )


def _string_lists(task: Any, split: str, ds: Dataset, column: str, expected: str) -> pa.Array:
    arr = ds.with_format("arrow")[column].combine_chunks()
    listed = pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
    item = arr.type.value_type if listed else None
    if not listed or not (pa.types.is_string(item) or pa.types.is_large_string(item)):
        kind = f"lists of {item}" if listed else str(arr.type)
        raise DataError(
            f"{where(task, split, column)}{task.source.origin(split)} holds {kind} values, "
            f'expected {expected} per row (in JSON lines: {column!r}: ["...", "..."])'
        )
    return arr


def _bad_rows(task: Any, split: str, column: str, arr: pa.Array, empty: str, blank: str) -> None:
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(lengths == 0)
    problem = empty
    if not rows.size:
        items = pc.list_flatten(arr)
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        rows, problem = np.unique(parents[blank_rows(items)]), blank
    if rows.size:
        raise DataError(
            f"{where(task, split, column)}: {problem} in "
            f"{rows_phrase(rows, task.source.origin(split))}"
        )


def collate_turns(rows: dict[str, list[Any]], pad_token_id: int, labels: Tensor) -> dict:
    """Hierarchical sub-batch: every turn of every dialogue as one encoder row (dialogue by
    dialogue, turns in order), padded to the longest turn, plus ``turn_mask``
    (``[dialogues, max turns]``, true for real turns; each dialogue's turns come first)."""
    dialogues = rows["input_ids"]
    turns = [turn for dialogue in dialogues for turn in dialogue]
    width = max(len(turn) for turn in turns)
    out: dict[str, Tensor] = {}
    for key, pad in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
        if key in rows:
            flat = [turn for dialogue in rows[key] for turn in dialogue]
            out[key] = torch.full((len(flat), width), pad, dtype=torch.long)
            for i, turn in enumerate(flat):
                out[key][i, : len(turn)] = torch.as_tensor(turn, dtype=torch.long)
    counts = torch.tensor([len(dialogue) for dialogue in dialogues])
    out["turn_mask"] = torch.arange(int(counts.max()))[None, :] < counts[:, None]
    out["labels"] = labels
    return out
