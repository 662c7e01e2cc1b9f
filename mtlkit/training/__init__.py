"""Training: the LightningModule around the plain :class:`~mtlkit.model.MultiTaskModel` (losses,
weighting, logging, optimizers, checkpoint hooks), and its distillation variant.

``mtlkit.model`` holds the model itself and imports no Lightning, so a served model
(``mtlkit.inference``) needs torch and transformers only.
"""

from mtlkit.training.distillation import DistillationModule, Teacher
from mtlkit.training.module import MultiTaskModule
from mtlkit.training.step_guard import NonFiniteError

__all__ = ["DistillationModule", "MultiTaskModule", "NonFiniteError", "Teacher"]
