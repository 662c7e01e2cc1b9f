"""The shared encoder and the multi-task LightningModule."""

from mtlkit.model.encoder import HFEncoder
from mtlkit.model.module import MultiTaskModule

__all__ = ["HFEncoder", "MultiTaskModule"]
