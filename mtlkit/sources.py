"""Where a task's raw examples come from.

A source returns a :class:`datasets.DatasetDict` with ``train`` and ``validation`` (and, when the
data has it, ``test``) splits. Three kinds cover the ways researchers keep data: local files
(``csv``/``json``/``parquet`` per split), a dataset name (``datasets.load_dataset``, works when the
hub is reachable) and an importable Python callable (the packaged datasets in
:mod:`mtlkit.packaged`, or any function of your own).
"""

from __future__ import annotations

import codecs
import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset

from mtlkit.errors import ConfigError, DataError

_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataSource(ABC):
    """Base for data sources.

    Args:
        validation_fraction: Share of ``train`` carved into ``validation`` when the data has no
            validation split. The carve is seeded, so it is the same on every run.
        split_seed: Seed of that carve.
    """

    def __init__(self, validation_fraction: float = 0.1, split_seed: int = 0) -> None:
        if not 0.0 < validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        self.validation_fraction = validation_fraction
        self.split_seed = split_seed

    @abstractmethod
    def _load(self) -> DatasetDict | Dataset:
        """Reads the raw data."""

    def describe(self) -> str:
        """A short human-readable description used in error messages."""
        return type(self).__name__

    def origin(self, split: str) -> str:
        """Where a split's rows come from, for messages (e.g. ``" of data/train.csv"``)."""
        del split
        return ""

    def load(self) -> DatasetDict:
        """Loads the data and makes sure a ``train`` and a ``validation`` split exist."""
        return self.add_validation(self.load_splits())

    def load_splits(self) -> DatasetDict:
        """The splits as read, before any validation split is carved (row numbers are the
        data's own); checks that a ``train`` split exists."""
        data = self._load()
        if isinstance(data, Dataset):
            data = DatasetDict(train=data)
        if not isinstance(data, DatasetDict):
            raise DataError(f"{self.describe()} returned {type(data).__name__}, not a DatasetDict")
        if "train" not in data:
            raise DataError(f"{self.describe()} has no 'train' split (splits: {list(data)})")
        return data

    def add_validation(self, data: DatasetDict) -> DatasetDict:
        """Carves ``validation`` from ``train`` (seeded) when the data has none."""
        if "validation" not in data:
            if len(data["train"]) < 2:
                raise DataError(f"{self.describe()}: train split too small to carve a validation")
            data = DatasetDict({**data, **self._carve(data["train"])})
        return data

    def _carve(self, train: Dataset) -> dict[str, Dataset]:
        # ``select`` with explicit indices keeps the fingerprints (the tokenization cache key)
        # stable across runs, which ``train_test_split`` does not.
        order = np.random.default_rng(self.split_seed).permutation(len(train))
        n_val = max(1, round(self.validation_fraction * len(train)))
        return {
            "train": train.select(np.sort(order[n_val:])),
            "validation": train.select(np.sort(order[:n_val])),
        }


class LocalFiles(DataSource):
    """Local ``csv``/``tsv``/``json``/``jsonl``/``parquet`` files, one entry per split.

    Args:
        data_files: Split name to a path (or list of paths), e.g. ``{"train": "a.csv"}``.
        format: ``csv``, ``json`` or ``parquet``; inferred from the file suffix when omitted.
        load_kwargs: Extra keyword arguments for ``datasets.load_dataset`` (``delimiter`` ...;
            for csv, ``keep_default_na: false`` reads cells such as ``NA`` or ``None`` as text).
        encoding: Text encoding of csv/tsv/json files (default UTF-8), e.g. ``latin-1`` or
            ``cp1252`` for files saved by older spreadsheet programs.
    """

    def __init__(
        self,
        data_files: dict[str, str | list[str]],
        format: str | None = None,
        load_kwargs: dict[str, Any] | None = None,
        encoding: str | None = None,
        validation_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__(validation_fraction, split_seed)
        if not data_files:
            raise ConfigError("LocalFiles needs at least one entry in data_files")
        self.data_files = {k: [v] if isinstance(v, str) else list(v) for k, v in data_files.items()}
        self.format = format or self._infer_format()
        self.load_kwargs = dict(load_kwargs or {})
        if encoding is not None:
            try:
                codecs.lookup(encoding)
            except LookupError as err:
                raise ConfigError(f"LocalFiles: unknown encoding {encoding!r}") from err
            if self.format == "parquet":
                raise ConfigError("LocalFiles: encoding applies to csv/tsv/json files, not parquet")
            self.load_kwargs["encoding"] = encoding
        self.encoding = self.load_kwargs.get("encoding") or "utf-8"
        if self.format == "csv" and all(p.endswith(".tsv") for p in self._paths()):
            self.load_kwargs.setdefault("delimiter", "\t")

    def _paths(self) -> list[str]:
        return [p for paths in self.data_files.values() for p in paths]

    def _infer_format(self) -> str:
        suffixes = {_FORMATS.get(Path(p).suffix.lower()) for p in self._paths()}
        if len(suffixes) != 1 or None in suffixes:
            raise ConfigError(
                f"cannot infer the file format of {self._paths()}; set format: csv|json|parquet"
            )
        return suffixes.pop()  # type: ignore[return-value]

    def describe(self) -> str:
        return f"LocalFiles({self.data_files})"

    def origin(self, split: str) -> str:
        paths = self.data_files.get(split)
        return f" of {', '.join(paths)}" if paths else ""

    def _load(self) -> DatasetDict:
        missing = [p for p in self._paths() if not Path(p).is_file()]
        if missing:
            raise DataError(f"data file(s) not found: {missing}")
        try:
            return load_dataset(self.format, data_files=self.data_files, **self.load_kwargs)
        except Exception as err:  # the parser's own error, wrapped by datasets: find the file
            raise self._read_error(err) from err

    def _read_error(self, err: Exception) -> DataError:
        """One message naming the unreadable file and where in it the problem is."""
        if self.format in ("csv", "json"):
            for path in self._paths():
                problem = file_problem(Path(path), self.format, self.encoding)
                if problem:
                    return DataError(f"data file {path}: {problem}")
        cause: BaseException = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        return DataError(f"cannot read {self.describe()}: {type(cause).__name__}: {cause}")


class HubDataset(DataSource):
    """A dataset by name through ``datasets.load_dataset`` (needs the hub or its local cache).

    Args:
        path: Dataset name, e.g. ``"glue"``.
        name: Configuration name, e.g. ``"sst2"``.
        load_kwargs: Extra keyword arguments for ``datasets.load_dataset``.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        load_kwargs: dict[str, Any] | None = None,
        validation_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__(validation_fraction, split_seed)
        self.path, self.name, self.load_kwargs = path, name, dict(load_kwargs or {})

    def describe(self) -> str:
        return f"HubDataset({self.path!r}, {self.name!r})"

    def _load(self) -> DatasetDict:
        return load_dataset(self.path, self.name, **self.load_kwargs)


class PythonCallable(DataSource):
    """An importable function that returns a ``DatasetDict`` or a ``Dataset``.

    Args:
        target: Import path, ``"package.module.function"`` or ``"package.module:function"``.
        kwargs: Keyword arguments passed to the function.
    """

    def __init__(
        self,
        target: str,
        kwargs: dict[str, Any] | None = None,
        validation_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__(validation_fraction, split_seed)
        self.target, self.kwargs = target, dict(kwargs or {})

    def describe(self) -> str:
        return f"PythonCallable({self.target!r})"

    def _load(self) -> DatasetDict | Dataset:
        module_name, _, attr = self.target.replace(":", ".").rpartition(".")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as err:
            raise ConfigError(f"cannot import data callable {self.target!r}: {err}") from err
        return fn(**self.kwargs)


class InMemory(DataSource):
    """Examples given directly as columns per split (handy in notebooks and tests).

    Args:
        splits: Split name to a mapping of column name to values.
    """

    def __init__(
        self,
        splits: dict[str, dict[str, list[Any]]],
        validation_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__(validation_fraction, split_seed)
        self.splits = splits

    def describe(self) -> str:
        return f"InMemory(splits={list(self.splits)})"

    def _load(self) -> DatasetDict:
        return DatasetDict({k: Dataset.from_dict(v) for k, v in self.splits.items()})


def file_problem(path: Path, fmt: str, encoding: str) -> str | None:
    """Why a csv/json file cannot be read (bad bytes for its encoding, a broken JSON line);
    ``None`` when neither applies."""
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return (
            f"is not {encoding} text (byte 0x{raw[err.start]:02x} on line {line}); set the "
            "file's encoding in the source, e.g. LocalFiles(..., encoding: latin-1) or cp1252"
        )
    return json_problem(text) if fmt == "json" else None


def json_problem(text: str) -> str | None:
    """The first line of a JSON (or JSON Lines) text that does not parse; ``None`` if it does."""
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as whole:
        lines = text.splitlines()
        first = next((line for line in lines if line.strip()), "")
        try:
            json.loads(first)
        except json.JSONDecodeError:  # one (pretty-printed) document: its own position
            return f"line {whole.lineno} is not valid JSON: {whole.msg} (column {whole.colno})"
    for number, line in enumerate(lines, 1):  # JSON Lines: one document per line
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number} is not valid JSON: {err.msg} (column {err.colno})"
    return None
