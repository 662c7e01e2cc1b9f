"""The import path is the registry: the classes of a kind are the concrete subclasses of its base
class defined in the modules of its package, found by walking the package (no ``register()``
calls, no hand-written lists). Tests, the DDP worker and the benchmarks read them from here, so a
new weighting method, gradient aggregator, sampling strategy or task type is covered once its
file exists.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import TypeVar

import mtlkit.data.sampling
import mtlkit.tasks
import mtlkit.weighting
import mtlkit.weighting.gradient
from mtlkit.data.sampling import SamplingStrategy
from mtlkit.tasks.base import Task
from mtlkit.weighting import Weighting
from mtlkit.weighting.gradient import GradientAggregator

T = TypeVar("T")


def discover(base: type[T], package: ModuleType) -> dict[str, type[T]]:
    """``{class name: class}`` of every concrete subclass of ``base`` defined in a module of
    ``package`` (sub-packages included), sorted by name."""
    found: dict[str, type[T]] = {}
    modules = [package]
    if hasattr(package, "__path__"):
        prefix = f"{package.__name__}."
        modules += [
            importlib.import_module(info.name)
            for info in pkgutil.walk_packages(package.__path__, prefix)
        ]
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, base)
                and cls is not base
                and cls.__module__ == module.__name__
                and not inspect.isabstract(cls)
            ):
                found[cls.__name__] = cls
    return dict(sorted(found.items()))


def weighting_classes() -> dict[str, type[Weighting]]:
    """Loss-weighting methods."""
    return discover(Weighting, mtlkit.weighting)


def aggregator_classes() -> dict[str, type[GradientAggregator]]:
    """Gradient aggregators."""
    return discover(GradientAggregator, mtlkit.weighting.gradient)


def sampling_classes() -> dict[str, type[SamplingStrategy]]:
    """Task sampling strategies."""
    return discover(SamplingStrategy, mtlkit.data.sampling)


def task_classes() -> dict[str, type[Task]]:
    """Task types."""
    return discover(Task, mtlkit.tasks)
