"""Input files of ``mtlkit predict``: ``.txt``, ``.jsonl``, ``.csv`` (a chosen text column)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mtlkit.errors import ConfigError

__all__ = ["dialogue_row", "read_csv", "read_inputs"]

Item = dict[str, Any]


def read_inputs(
    path: Path, text_column: str = "text", text_pair_column: str | None = None
) -> list[Item | None]:
    """Inputs of ``mtlkit predict``, one per line or row: ``.txt`` (a text per line),
    ``.jsonl`` (a JSON object per line; a dialogue is ``{"turns": [...], "speakers": [...]}``) or
    ``.csv`` (a header, then a row per input), the text
    in ``text_column`` and the optional pair in ``text_pair_column`` (JSONL default:
    ``text_pair`` where present); ``None`` for a blank line or an empty text, so that output
    row ``i`` still answers input line (or CSV data row) ``i``."""
    if not path.is_file():
        raise ConfigError(f"input file {str(path)!r} does not exist")
    if path.suffix not in (".txt", ".jsonl", ".csv"):
        raise ConfigError(f"input file {path} must be .txt (one text per line), .jsonl or .csv")
    if path.suffix == ".csv":
        return read_csv(path, text_column, text_pair_column)
    pair_column = text_pair_column or "text_pair"
    items: list[Item | None] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            items.append(None)
            continue
        if path.suffix == ".txt":
            items.append({"text": line})
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} line {number} is not JSON: {err}") from err
        if isinstance(row, dict) and "turns" in row:
            items.append(dialogue_row(row, path, number))
            continue
        if not isinstance(row, dict) or not isinstance(row.get(text_column), str):
            raise ConfigError(
                f'{path} line {number} needs a string "{text_column}" field (or a list of '
                f'"turns"): {line[:80]}'
            )
        if text_pair_column and not isinstance(row.get(text_pair_column), str):
            raise ConfigError(
                f'{path} line {number} needs a string "{text_pair_column}" field: {line[:80]}'
            )
        pair = row.get(pair_column)
        items.append({"text": row[text_column], **({"text_pair": str(pair)} if pair else {})})
    return items


def read_csv(path: Path, text_column: str, text_pair_column: str | None) -> list[Item | None]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        for column in (text_column, text_pair_column):
            if column is not None and column not in columns:
                raise ConfigError(
                    f"{path} has no column {column!r} (columns: {columns}); choose the text "
                    "with --text_column (and --text_pair_column)"
                )
        items: list[Item | None] = []
        for row in reader:
            text = row.get(text_column) or ""
            if not text.strip():
                items.append(None)
                continue
            pair = row.get(text_pair_column) if text_pair_column else None
            items.append({"text": text, **({"text_pair": pair} if pair else {})})
    return items


def dialogue_row(row: dict[str, Any], path: Path, number: int) -> Item:
    """A dialogue line ``{"turns": [...], "speakers": [...]}``, checked."""
    turns, speakers = row["turns"], row.get("speakers")
    if not isinstance(turns, list) or not turns:
        raise ConfigError(f'{path} line {number}: "turns" must be a non-empty list of strings')
    if not all(isinstance(t, str) and t.strip() for t in turns):
        raise ConfigError(f'{path} line {number}: every turn in "turns" must be a non-empty string')
    if speakers is None:
        return {"turns": turns}
    if not isinstance(speakers, list) or len(speakers) != len(turns):
        raise ConfigError(
            f'{path} line {number}: "speakers" must be a list of one name per turn '
            f"({len(turns)} turns)"
        )
    return {"turns": turns, "speakers": [str(s) for s in speakers]}
