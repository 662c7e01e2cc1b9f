"""Transfer: read a source model (checkpoint or exported folder) into a new one; train heads on
a frozen encoder's cached features (``FeatureDataModule``)."""

from mtlkit.model.source import ModelSource, load_source
from mtlkit.transfer.features import FeatureDataModule
from mtlkit.transfer.init import InitReport, initialise_from, load_weights

__all__ = [
    "FeatureDataModule",
    "InitReport",
    "ModelSource",
    "initialise_from",
    "load_source",
    "load_weights",
]
