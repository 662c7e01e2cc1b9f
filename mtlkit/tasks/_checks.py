"""Row-level checks of raw splits, shared by task types.

They run on the splits as the source read them (before a validation split is carved), so the
row numbers in messages are the data's own: row 0 is the first data row of a split (its first
file's first row after the header), as pandas and ``datasets`` count.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Value

from mtlkit.errors import DataError, DataWarning


def where(task: Any, split: str, column: str) -> str:
    """``task 'x': split 'train' column 'text'`` (the start of a row-level message)."""
    return f"task {task.name!r}: split {split!r} column {column!r}"


def rows_phrase(rows: np.ndarray, origin: str) -> str:
    """``row 3 of data/train.csv``, plus the count and the first few others when there are more."""
    first = f"row {int(rows[0])}{origin}"
    if len(rows) == 1:
        return first
    shown = ", ".join(str(int(r)) for r in rows[:5])
    return f"{first}; {len(rows)} rows in all: {shown}{', ...' if len(rows) > 5 else ''}"


def _column(ds: Dataset, column: str) -> pa.ChunkedArray:
    return ds.with_format("arrow")[column]


def blank_rows(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Rows that are null, NaN, or a string of only whitespace."""
    kind = arr.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ""), True)
    elif pa.types.is_floating(kind):
        blank = pc.fill_null(pc.is_nan(arr), True)
    else:
        blank = pc.is_null(arr)
    return np.flatnonzero(np.asarray(blank.to_numpy(zero_copy_only=False), dtype=bool))


def check_text_column(task: Any, split: str, ds: Dataset, column: str) -> None:
    """A text column holds one text (or number) per row and no empty cell."""
    feature = ds.features[column]
    origin = task.source.origin(split)
    if not isinstance(feature, Value):
        raise DataError(
            f"{where(task, split, column)}{origin} holds {_kind(feature)} values ({feature}), "
            "expected one text per row; pick a text field or flatten the column first"
        )
    rows = blank_rows(_column(ds, column))
    if rows.size:
        hint = ""
        if getattr(task.source, "format", None) == "csv":
            hint = " (csv cells NA, null or None are empty unless load_kwargs has "
            hint += "keep_default_na: false)"
        raise DataError(
            f"{where(task, split, column)}: empty text in {rows_phrase(rows, origin)}; "
            f"fill those cells in or remove the rows{hint}"
        )


def check_word_lists(task: Any, split: str, ds: Dataset, column: str) -> None:
    """A column of word lists has no missing list and no missing or empty word."""
    _check_list_cells(task, split, ds, column, "missing or empty word")


def check_label_cells(task: Any, split: str, ds: Dataset, column: str) -> None:
    """One class id or name per row (no nested value, no missing label, no fraction)."""
    feature = ds.features[column]
    origin = task.source.origin(split)
    if not isinstance(feature, Value | ClassLabel):
        hint = (
            "; for several labels per row use mtlkit.tasks.MultiLabelClassification"
            if isinstance(feature, list) or hasattr(feature, "feature")
            else ""
        )
        raise DataError(
            f"{where(task, split, column)}{origin} holds {_kind(feature)} values ({feature}), "
            f"expected one class id or name per row{hint}"
        )
    arr = _column(ds, column)
    rows = blank_rows(arr)
    if rows.size:
        raise DataError(
            f"{where(task, split, column)}: missing label in {rows_phrase(rows, origin)}; "
            "fill those labels in or remove the rows"
        )
    if pa.types.is_floating(arr.type):
        values = arr.to_numpy()
        rows = np.flatnonzero(values != np.round(values))
        if rows.size:
            raise DataError(
                f"{where(task, split, column)} holds {feature.dtype} values, expected integer "
                f"class ids (row {int(rows[0])}{origin} has {values[rows[0]]}); for a "
                "real-valued target use mtlkit.tasks.Regression"
            )


def check_label_lists(task: Any, split: str, ds: Dataset, column: str) -> None:
    """A column of label lists has no missing list and no missing label inside one."""
    arr = _column(ds, column)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        return  # the task's own check names the expected layout
    _check_list_cells(task, split, ds, column, "missing label")


def _check_list_cells(task: Any, split: str, ds: Dataset, column: str, problem: str) -> None:
    """Rows whose list is missing or holds a missing/blank item: one error naming them."""
    arr = _column(ds, column)
    rows = set(pc.is_null(arr).to_numpy(zero_copy_only=False).nonzero()[0].tolist())
    items = pc.list_flatten(arr)
    if len(items):
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        rows.update(parents[blank_rows(items)].tolist())
    if rows:
        raise DataError(
            f"{where(task, split, column)}: {problem} in "
            f"{rows_phrase(np.array(sorted(rows)), task.source.origin(split))}"
        )


def integer_class_ids(data: DatasetDict, column: str) -> DatasetDict:
    """Casts whole-number float (or bool) class ids to int64 (e.g. ``1.0`` from a csv file)."""
    out = {}
    for split, ds in data.items():
        dtype = getattr(ds.features[column], "dtype", "")
        if dtype == "bool" or dtype.startswith("float"):
            ds = ds.cast_column(column, Value("int64"))
        out[split] = ds
    return DatasetDict(out)


def require_two_classes(task: Any, column: str, names: list[str] | None, count: int) -> None:
    """A classifier needs two classes; one class would fail later inside the metrics."""
    if count < 2:
        seen = f" {names}" if names else ""
        raise DataError(
            f"task {task.name!r}: split 'train' column {column!r} has a single class{seen}; "
            "classification needs at least 2 (check the label column and the files)"
        )


def warn_overlap(task: Any, data: DatasetDict, columns: list[str]) -> None:
    """Warns when evaluation rows repeat training rows' inputs (train/eval leakage)."""
    train = {_key(row) for row in zip(*(data["train"][c] for c in columns), strict=True)}
    for split, ds in data.items():
        if split == "train" or len(ds) == 0:
            continue
        rows = zip(*(ds[c] for c in columns), strict=True)
        same = sum(_key(row) in train for row in rows)
        if same:
            warnings.warn(
                f"task {task.name!r}: {same} of {len(ds)} {split!r} rows have the same "
                f"{columns} as a training row (train/{split} leakage): their scores overstate "
                "how the model does on new text; remove them from one of the splits",
                DataWarning,
                stacklevel=2,
            )


def _key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(tuple(v) if isinstance(v, list) else v for v in row)


def _kind(feature: Any) -> str:
    if isinstance(feature, dict):
        return "nested (struct)"
    return "list" if isinstance(feature, list) or hasattr(feature, "feature") else "non-text"
