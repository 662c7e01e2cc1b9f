"""Data: sources, sampling strategies, batching and the multi-task data module."""

from typing import Any

from mtlkit.data.sources import DataSource, HubDataset, InMemory, LocalFiles, PythonCallable

__all__ = [
    "DataSource",
    "FeatureDataModule",
    "HubDataset",
    "InMemory",
    "LocalFiles",
    "MultiTaskDataModule",
    "PythonCallable",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the data module depends on the task types, which depend on sources.
    if name == "MultiTaskDataModule":
        from mtlkit.data.datamodule import MultiTaskDataModule

        return MultiTaskDataModule
    if name == "FeatureDataModule":
        from mtlkit.data.features import FeatureDataModule

        return FeatureDataModule
    raise AttributeError(f"module 'mtlkit.data' has no attribute {name!r}")
