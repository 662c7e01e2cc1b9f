"""The data sources, under their former import path (they live in :mod:`mtlkit.sources`, below
the task types that read them); run configs written with these class paths keep loading."""

from mtlkit.sources import DataSource, HubDataset, InMemory, LocalFiles, PythonCallable

__all__ = ["DataSource", "HubDataset", "InMemory", "LocalFiles", "PythonCallable"]
