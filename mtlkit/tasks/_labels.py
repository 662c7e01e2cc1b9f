"""Helpers shared by task types to read and check class labels."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, DatasetDict, Features, LargeList, List, Sequence, Value
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from mtlkit.errors import DataError, DataWarning
from mtlkit.tasks._checks import integer_class_ids, require_two_classes


def class_label_feature(data: DatasetDict, column: str) -> ClassLabel | None:
    """The ``ClassLabel`` of ``column`` (or of its elements, for sequence columns), if any."""
    feature = data["train"].features[column]
    if isinstance(feature, Sequence | list):
        feature = feature.feature if isinstance(feature, Sequence) else feature[0]
    return feature if isinstance(feature, ClassLabel) else None


def strip_labels(data: DatasetDict, column: str, task: str, lists: bool = False) -> DatasetDict:
    """Strips surrounding spaces from string labels (``" pos"`` is ``"pos"``), saying so once."""
    for split, ds in data.items():
        values = ds[column]
        flat = (v for row in values for v in row) if lists else iter(values)
        padded = next((v for v in flat if isinstance(v, str) and v != v.strip()), None)
        if padded is not None:
            warnings.warn(
                f"task {task!r}: split {split!r} column {column!r} has labels with surrounding "
                f"spaces (e.g. {padded!r}); they are stripped, so {padded!r} and "
                f"{padded.strip()!r} are one class",
                DataWarning,
                stacklevel=3,
            )
            break
    else:
        return data
    if lists:
        return map_column(data, column, lambda row: [str(v).strip() for v in row])
    return map_column(data, column, lambda v: str(v).strip())


def map_column(
    data: DatasetDict, column: str, fn: Callable[[Any], Any], feature: Any = None
) -> DatasetDict:
    """Applies ``fn`` to every cell of ``column``; the result has type ``feature`` (given, since
    ``datasets.map`` keeps a column's old type, e.g. csv's ``large_string``, when it can)."""
    out = {}
    for split, ds in data.items():
        features = Features({**ds.features, column: feature or ds.features[column]})
        out[split] = ds.map(
            lambda b: {column: [fn(v) for v in b[column]]}, batched=True, features=features
        )
    return DatasetDict(out)


def encode_string_labels(
    data: DatasetDict, column: str, task: str
) -> tuple[DatasetDict, list[str]]:
    """Maps string labels to ids using the sorted label set of the train split."""
    data = strip_labels(data, column, task)
    names = sorted({str(v) for v in data["train"][column]})
    index = {n: i for i, n in enumerate(names)}
    for split, ds in data.items():
        unknown = {str(v) for v in ds[column]} - index.keys()
        if unknown:
            raise DataError(
                f"task {task!r}: split {split!r} has labels not seen in train: "
                f"{sorted(unknown)[:5]}"
            )
    data = map_column(data, column, lambda v: index[str(v)], Value("int64"))
    return data, names


def resolve_num_labels(
    data: DatasetDict, column: str, task: str, given: int | None, names: list[str] | None
) -> tuple[int, list[str] | None]:
    """num_labels from the data's ``ClassLabel`` (or string labels) and/or the config; checked."""
    feature = class_label_feature(data, column)
    if feature is not None:
        names = list(feature.names)
    if names is not None:
        if given is not None and given != len(names):
            raise DataError(
                f"task {task!r}: num_labels={given} disagrees with the data, which has "
                f"{len(names)} classes {names[:10]}"
            )
        return len(names), names
    if given is None:
        top = max(int(np.max(flat_labels(ds, column), initial=-1)) for ds in data.values())
        raise DataError(
            f"task {task!r}: column {column!r} has integer labels without a ClassLabel feature; "
            f"set num_labels (the largest label seen is {top}, so probably num_labels: {top + 1})"
        )
    return given, None


def flat_labels(ds, column: str) -> np.ndarray:
    """All label values of a column (flattened for sequence columns), as an array."""
    if not len(ds):
        return np.zeros(0)
    values = ds.with_format("arrow")[column]  # arrow, not one numpy row at a time: 100x faster
    while isinstance(values.type, pa.ListType | pa.LargeListType | pa.FixedSizeListType):
        values = pc.list_flatten(values)
    return np.asarray(values.to_numpy(zero_copy_only=False))


def check_label_range(data: DatasetDict, column: str, task: str, num_labels: int) -> None:
    """Every label must be an integer in ``[0, num_labels)``."""
    for split, ds in data.items():
        values = flat_labels(ds, column)
        if values.size == 0:
            continue
        if not np.issubdtype(values.dtype, np.integer):
            raise DataError(
                f"task {task!r}: split {split!r} column {column!r} holds {values.dtype} values, "
                "expected integer class ids"
            )
        bad = values[(values < 0) | (values >= num_labels)]
        if bad.size:
            raise DataError(
                f"task {task!r}: split {split!r} has label {int(bad[0])} outside "
                f"[0, {num_labels}) ({bad.size} such labels); check num_labels or the data"
            )


def list_element_feature(data: DatasetDict, column: str) -> Any | None:
    """The element feature of a list column in the train split; ``None`` if it is no list."""
    feature = data["train"].features[column]
    if isinstance(feature, Sequence | LargeList):
        return feature.feature
    return feature[0] if isinstance(feature, list) else None


def encode_string_label_lists(
    data: DatasetDict, column: str, task: str, names: list[str] | None = None
) -> tuple[DatasetDict, list[str]]:
    """Maps a column of string-label lists (tags, label sets) to id lists.

    Args:
        data: The splits.
        column: Column whose rows are lists of strings.
        task: Task name for error messages.
        names: Id order to use; the sorted label set of the train split when omitted.

    Returns:
        The mapped splits and the label names (index = id).
    """
    where = "label_names" if names is not None else "train"
    data = strip_labels(data, column, task, lists=True)
    if names is None:
        names = sorted({str(v) for row in data["train"][column] for v in row})
    index = {n: i for i, n in enumerate(names)}
    for split, ds in data.items():
        unknown = {str(v) for row in ds[column] for v in row} - index.keys()
        if unknown:
            raise DataError(
                f"task {task!r}: split {split!r} has labels not seen in {where}: "
                f"{sorted(unknown)[:5]}"
            )
    mapped = map_column(
        data, column, lambda row: [index[str(v)] for v in row], List(Value("int64"))
    )
    return mapped, list(names)


def class_label_state(task: Any) -> dict[str, Any]:
    """The label metadata a classification head is built from (saved in checkpoints)."""
    return {"num_labels": task.num_labels, "label_names": task.label_names}


def load_class_label_state(task: Any, state: dict[str, Any]) -> None:
    """Restores :func:`class_label_state`, refusing a checkpoint with another number of labels."""
    if task.num_labels is not None and state["num_labels"] != task.num_labels:
        raise DataError(
            f"task {task.name!r}: checkpoint has {state['num_labels']} labels, "
            f"config has {task.num_labels}"
        )
    task.num_labels, task.label_names = state["num_labels"], state["label_names"]


def label_list_names(
    data: DatasetDict, task: Any, element: Any, given: list[str] | None
) -> tuple[DatasetDict, list[str] | None]:
    """Label names of a list-of-labels column: the given ones (checked against a ``ClassLabel``)
    or, for string labels, those of the train split, with the column mapped to ids."""
    if isinstance(element, ClassLabel) and given is not None and list(element.names) != given:
        raise DataError(
            f"task {task.name!r}: label_names {given[:10]} differ from the data's "
            f"ClassLabel names {list(element.names)[:10]}"
        )
    if getattr(element, "dtype", None) in ("string", "large_string"):
        return encode_string_label_lists(data, task.label_column, task.name, given)
    return data, given


def prepare_class_labels(task: Any, data: DatasetDict) -> DatasetDict:
    """Single-label classification targets of ``task.label_column``: string labels encoded
    (csv/tsv strings are ``large_string``, json/parquet ones ``string``) or integer class ids
    checked; ``task.num_labels`` and ``task.label_names`` resolved; at least two classes; every
    id in range."""
    column, names = task.label_column, None
    if data["train"].features[column].dtype in ("string", "large_string"):
        data, names = encode_string_labels(data, column, task.name)
    else:
        data = integer_class_ids(data, column)
    task.num_labels, task.label_names = resolve_num_labels(
        data, column, task.name, task.num_labels, names
    )
    require_two_classes(task, column, task.label_names, task.num_labels)
    check_label_range(data, column, task.name, task.num_labels)
    return data


def class_metrics(num_labels: int) -> MetricCollection:
    """Single-label classification metrics: ``accuracy`` (primary) and ``macro_f1``."""
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
        }
    )
