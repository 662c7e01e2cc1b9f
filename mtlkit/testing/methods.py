"""The shipped weighting methods, discovered from ``configs/weighting/*.yaml``.

One source of truth for tests, the DDP worker and the benchmarks: a method is covered everywhere
once its config file exists (and ``tests/test_method_catalog.py`` fails for a ``Weighting`` or
``GradientAggregator`` class of the package that has no config).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: ``configs/`` of the source tree (mtlkit is installed in editable mode by ``make setup``).
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class MethodConfig:
    """One shipped weighting config: its name (file stem), path, weighting spec and batch mode."""

    name: str
    path: Path
    weighting: dict[str, Any]
    batch_mode: str

    @property
    def is_gradient_method(self) -> bool:
        return self.weighting["class_path"].endswith("GradientWeighting")

    @property
    def class_names(self) -> set[str]:
        """Short names of the classes the config builds (the weighting and its aggregator)."""
        names = {self.weighting["class_path"].rsplit(".", 1)[-1]}
        aggregator = self.weighting.get("init_args", {}).get("aggregator")
        if aggregator:
            names.add(aggregator["class_path"].rsplit(".", 1)[-1])
        return names

    def spec(self, **init_args: Any) -> dict[str, Any]:
        """The ``class_path``/``init_args`` spec with ``init_args`` overridden. A nested class
        spec (``aggregator={"init_args": {...}}``) updates the aggregator's arguments; any other
        value, dicts included (StaticWeighting's ``weights``), replaces the config's."""
        spec = copy.deepcopy(self.weighting)
        args = spec.setdefault("init_args", {})
        for key, value in init_args.items():
            is_class_spec = isinstance(args.get(key), dict) and "class_path" in args[key]
            if isinstance(value, dict) and is_class_spec:
                merged = args[key]
                for k, v in value.items():
                    if isinstance(v, dict) and isinstance(merged.get(k), dict):
                        merged[k] = {**merged[k], **v}
                    else:
                        merged[k] = v
            else:
                args[key] = value
        return spec

    def build(self, **init_args: Any):
        """A fresh :class:`~mtlkit.weighting.Weighting` built as the CLI builds it."""
        from jsonargparse import ArgumentParser

        from mtlkit.weighting import Weighting

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--weighting", type=Weighting)
        cfg = parser.parse_object({"weighting": self.spec(**init_args)})
        return parser.instantiate_classes(cfg).weighting


def weighting_methods(configs: Path = CONFIGS) -> dict[str, MethodConfig]:
    """``{name: MethodConfig}`` for every ``configs/weighting/*.yaml``, sorted by name."""
    methods = {}
    for path in sorted((configs / "weighting").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        weighting = doc["model"]["init_args"]["weighting"]
        mode = (doc.get("data") or {}).get("init_args", {}).get("batch_mode", "homogeneous")
        methods[path.stem] = MethodConfig(path.stem, path, weighting, mode)
    return methods
