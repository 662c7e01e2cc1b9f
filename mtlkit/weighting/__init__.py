"""Loss-weighting methods; each lives in its own module under one base class."""

from mtlkit.weighting.base import StepContext, StepObserver, WeightedLoss, Weighting
from mtlkit.weighting.dwa import DynamicWeightAverage
from mtlkit.weighting.equal import EqualWeighting
from mtlkit.weighting.famo import FAMO
from mtlkit.weighting.gradient_weighting import GradientWeighting
from mtlkit.weighting.gradnorm import GradNorm
from mtlkit.weighting.rlw import RandomLossWeighting
from mtlkit.weighting.static import StaticWeighting
from mtlkit.weighting.task_gradients import TaskGradients, task_gradients
from mtlkit.weighting.uncertainty import UncertaintyWeighting

__all__ = [
    "FAMO",
    "DynamicWeightAverage",
    "EqualWeighting",
    "GradNorm",
    "GradientWeighting",
    "RandomLossWeighting",
    "StaticWeighting",
    "StepContext",
    "StepObserver",
    "TaskGradients",
    "UncertaintyWeighting",
    "WeightedLoss",
    "Weighting",
    "task_gradients",
]
