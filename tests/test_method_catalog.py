"""Every weighting method of the package ships a config, and the catalog reads each one.

``configs/weighting/*.yaml`` is the one list of methods (``mtlkit.testing.methods``): the
precision and DDP tests, the DDP worker and the benchmark suite all iterate over it, so a new
method is covered everywhere once its file and config exist, and this test fails without the
config.
"""

import pytest

from mtlkit.registry import aggregator_classes, weighting_classes
from mtlkit.testing.methods import weighting_methods
from mtlkit.weighting import GradientWeighting, Weighting

METHODS = weighting_methods()


def test_every_method_class_has_a_shipped_config():
    shipped = set().union(*(m.class_names for m in METHODS.values()))
    classes = set(weighting_classes()) | set(aggregator_classes())
    classes -= {GradientWeighting.__name__}
    missing = sorted(classes - shipped)
    assert not missing, f"no configs/weighting/*.yaml builds {missing}"
    assert len(METHODS) >= 15


@pytest.mark.parametrize("name", list(METHODS))
def test_catalog_builds_each_config(name):
    method = METHODS[name]
    weighting = method.build()
    assert isinstance(weighting, Weighting)
    assert type(weighting).__name__ in method.class_names
    if method.is_gradient_method:
        assert method.batch_mode == "mixed"
        assert type(weighting.aggregator).__name__ in method.class_names
