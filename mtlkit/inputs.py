"""Input files of ``mtlkit predict``: ``.txt``, ``.jsonl``, ``.csv`` (a chosen text column)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mtlkit.errors import ConfigError

__all__ = ["read_csv", "read_inputs"]


def read_inputs(
    path: Path, text_column: str = "text", text_pair_column: str | None = None
) -> list[dict[str, str] | None]:
    """Inputs of ``mtlkit predict``, one per line or row: ``.txt`` (a text per line),
    ``.jsonl`` (a JSON object per line) or ``.csv`` (a header, then a row per input), the text
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
    items: list[dict[str, str] | None] = []
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
        if not isinstance(row, dict) or not isinstance(row.get(text_column), str):
            raise ConfigError(
                f'{path} line {number} needs a string "{text_column}" field: {line[:80]}'
            )
        if text_pair_column and not isinstance(row.get(text_pair_column), str):
            raise ConfigError(
                f'{path} line {number} needs a string "{text_pair_column}" field: {line[:80]}'
            )
        pair = row.get(pair_column)
        items.append({"text": row[text_column], **({"text_pair": str(pair)} if pair else {})})
    return items


def read_csv(
    path: Path, text_column: str, text_pair_column: str | None
) -> list[dict[str, str] | None]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        for column in (text_column, text_pair_column):
            if column is not None and column not in columns:
                raise ConfigError(
                    f"{path} has no column {column!r} (columns: {columns}); choose the text "
                    "with --text_column (and --text_pair_column)"
                )
        items: list[dict[str, str] | None] = []
        for row in reader:
            text = row.get(text_column) or ""
            if not text.strip():
                items.append(None)
                continue
            pair = row.get(text_pair_column) if text_pair_column else None
            items.append({"text": text, **({"text_pair": pair} if pair else {})})
    return items
