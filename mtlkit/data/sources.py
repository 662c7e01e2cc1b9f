"""Where a task's raw examples come from.

A source returns a :class:`datasets.DatasetDict` with ``train`` and ``validation`` (and, when the
data has it, ``test``) splits. Three kinds cover the ways researchers keep data: local files
(``csv``/``json``/``parquet`` per split), a dataset name (``datasets.load_dataset``, works when the
hub is reachable) and an importable Python callable (the packaged datasets in
:mod:`mtlkit.packaged`, or any function of your own).
"""

from __future__ import annotations

import importlib
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

    def load(self) -> DatasetDict:
        """Loads the data and makes sure a ``train`` and a ``validation`` split exist."""
        data = self._load()
        if isinstance(data, Dataset):
            data = DatasetDict(train=data)
        if not isinstance(data, DatasetDict):
            raise DataError(f"{self.describe()} returned {type(data).__name__}, not a DatasetDict")
        if "train" not in data:
            raise DataError(f"{self.describe()} has no 'train' split (splits: {list(data)})")
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
        load_kwargs: Extra keyword arguments for ``datasets.load_dataset`` (``delimiter`` ...).
    """

    def __init__(
        self,
        data_files: dict[str, str | list[str]],
        format: str | None = None,
        load_kwargs: dict[str, Any] | None = None,
        validation_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        super().__init__(validation_fraction, split_seed)
        if not data_files:
            raise ConfigError("LocalFiles needs at least one entry in data_files")
        self.data_files = {k: [v] if isinstance(v, str) else list(v) for k, v in data_files.items()}
        self.format = format or self._infer_format()
        self.load_kwargs = dict(load_kwargs or {})
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

    def _load(self) -> DatasetDict:
        missing = [p for p in self._paths() if not Path(p).is_file()]
        if missing:
            raise DataError(f"data file(s) not found: {missing}")
        return load_dataset(self.format, data_files=self.data_files, **self.load_kwargs)


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
