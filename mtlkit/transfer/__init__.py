"""Model-based transfer: read a source model (checkpoint or exported folder) into a new one."""

from mtlkit.transfer.init import InitReport, initialise_from
from mtlkit.transfer.source import ModelSource, load_source

__all__ = ["InitReport", "ModelSource", "initialise_from", "load_source"]
