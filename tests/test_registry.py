"""``mtlkit.registry`` finds each kind's classes from the import path alone."""

import types

from mtlkit import registry
from mtlkit.data.sampling import Proportional, SamplingStrategy


def test_registry_finds_every_kind():
    assert {"EqualWeighting", "GradNorm", "FAMO"} <= set(registry.weighting_classes())
    assert {"PCGrad", "MGDA", "MGDAUB", "NashMTL"} <= set(registry.aggregator_classes())
    assert set(registry.sampling_classes()) >= {"Annealed", "Proportional", "Temperature"}
    assert set(registry.task_classes()) >= {
        "MultiLabelClassification",
        "Regression",
        "SequenceClassification",
        "TokenClassification",
    }


def test_a_new_class_in_a_module_of_the_package_is_found_without_registration():
    package = types.ModuleType("fake_sampling")

    class Halves(SamplingStrategy):
        def probabilities(self, sizes, progress):
            return [1 / len(sizes)] * len(sizes)

    class Unfinished(SamplingStrategy):  # abstract: left out
        pass

    for cls in (Halves, Unfinished):
        cls.__module__ = "fake_sampling"
        setattr(package, cls.__name__, cls)
    package.Imported = Proportional  # defined elsewhere: left out
    assert list(registry.discover(SamplingStrategy, package)) == ["Halves"]
