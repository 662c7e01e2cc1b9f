"""Data: sources, sampling strategies, batching and the multi-task data module."""

from mtlkit.data.datamodule import MultiTaskDataModule
from mtlkit.sources import DataSource, HubDataset, InMemory, LocalFiles, PythonCallable

__all__ = [
    "DataSource",
    "HubDataset",
    "InMemory",
    "LocalFiles",
    "MultiTaskDataModule",
    "PythonCallable",
]
