"""Model-based transfer: read a source model (checkpoint or exported folder) into a new one."""

from mtlkit.transfer.source import ModelSource, load_source

__all__ = ["ModelSource", "load_source"]
