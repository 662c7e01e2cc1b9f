"""Hyperparameter search over mtlkit configs with Optuna (``mtlkit tune``)."""

from mtlkit.tune.search import PruningCallback, SearchSpace, tune

__all__ = ["PruningCallback", "SearchSpace", "tune"]
