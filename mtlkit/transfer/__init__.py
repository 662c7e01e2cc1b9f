"""Model-based transfer: read a source model (checkpoint or exported folder) into a new one."""

from mtlkit.model.source import ModelSource, load_source
from mtlkit.transfer.init import InitReport, initialise_from, load_weights

__all__ = ["InitReport", "ModelSource", "initialise_from", "load_source", "load_weights"]
