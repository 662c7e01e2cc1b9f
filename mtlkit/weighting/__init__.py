"""Loss-weighting methods; each lives in its own module under one base class."""

from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting
from mtlkit.weighting.equal import EqualWeighting
from mtlkit.weighting.static import StaticWeighting

__all__ = ["EqualWeighting", "StaticWeighting", "StepContext", "WeightedLoss", "Weighting"]
