"""AdapterFusion: a target task attends over the frozen bottleneck adapters of source tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.model.bottleneck import (
    CONFIG_FILE,
    BottleneckAdapterEncoder,
    read_adapter,
    write_adapter,
)
from mtlkit.paths import resolve_path

SOURCES_DIR = "_sources"


class FusionLayer(nn.Module):
    """Attention over the source adapters' outputs at one adapted sublayer.

    With ``h`` the sublayer's output and ``z_n = adapter_n(h)`` the ``N`` source adapters'
    outputs: ``s = softmax_n((Q h) . (K z_n))``, output ``sum_n s_n V z_n``. ``Q`` and ``K``
    start small and random, ``V`` at the identity (so a new fusion averages the adapters).

    Args:
        hidden: The hidden size ``d``.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        for layer in (self.query, self.key):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.value.weight.copy_(torch.eye(hidden))
            self.value.bias.zero_()
        self.sources: list[nn.Module] = []  # set by the encoder; not submodules (saved there)

    def attention(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """The fused output and the attention weights ``[..., N]`` over the sources."""
        outputs = torch.stack([source(hidden) for source in self.sources], dim=-2)
        scores = torch.einsum("...d,...nd->...n", self.query(hidden), self.key(outputs))
        weights = scores.softmax(dim=-1)
        return torch.einsum("...n,...nd->...d", weights, self.value(outputs)), weights

    def forward(self, hidden: Tensor) -> Tensor:
        return self.attention(hidden)[0]


class AdapterFusionEncoder(BottleneckAdapterEncoder):
    """Frozen encoder and frozen source-task adapters, fused per target task.

    Pfeiffer et al. (2021), "AdapterFusion: Non-Destructive Task Composition for Transfer
    Learning" (EACL), second stage: the bottleneck adapters of the source tasks (trained by
    :class:`~mtlkit.model.bottleneck.BottleneckAdapterEncoder` and saved with its
    ``save_adapters``) stay frozen, and each target task learns, at every adapted sublayer, a
    :class:`FusionLayer`: query = the sublayer's output, keys and values = each source adapter's
    output. Placement, reduction factor and activation are the saved adapters'.

    Args:
        source_adapters: The source adapters: a folder written by ``save_adapters`` (or an
            export's ``task_encoder/``), or a checkpoint of the source run.
        source_tasks: The source tasks to fuse.
        name_or_path: See :class:`HFEncoder` (the encoder the sources were trained on).
        adapters_from: A folder written by :meth:`save_adapters` of a fusion run; each target
            task's fusion layers are loaded from it when created.
        **kwargs: The other arguments of :class:`HFEncoder` (``config``, ...).
    """

    method = "fusion"

    def __init__(
        self,
        source_adapters: str,
        source_tasks: list[str],
        name_or_path: str | None = None,
        *,
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not source_tasks or len(set(source_tasks)) != len(source_tasks):
            raise ConfigError(f"source_tasks must be distinct task names, got {source_tasks}")
        saved, states = _read_sources(source_adapters, list(source_tasks))
        super().__init__(
            name_or_path,
            placement=saved["placement"],
            reduction_factor=saved["reduction_factor"],
            activation=saved["activation"],
            adapters_from=adapters_from,
            **kwargs,
        )
        expected = super().adapter_config() | {"method": "bottleneck"}
        differ = [k for k, v in expected.items() if saved.get(k) != v]
        if differ:
            raise ConfigError(
                f"the source adapters in {source_adapters} do not fit this encoder: {differ} "
                f"differ ({[saved.get(k) for k in differ]} vs {[expected[k] for k in differ]})"
            )
        self.source_tasks = list(source_tasks)
        self.sources = nn.ModuleDict()
        for name in self.source_tasks:
            adapters = super().new_adapters()
            adapters.load_state_dict(states[name])
            self.sources[name] = adapters.requires_grad_(False)

    def new_adapters(self) -> nn.ModuleDict:
        """One target task's fusion layers, keyed as the adapters they fuse."""
        layers = nn.ModuleDict({key: FusionLayer(self.hidden_size) for key in self.sites})
        for key, layer in layers.items():
            layer.sources = [self.sources[name][key] for name in self.source_tasks]
        return layers

    def adapter_config(self) -> dict[str, Any]:
        return super().adapter_config() | {"source_tasks": self.source_tasks}

    def export_task_encoder(self, folder: str | Path) -> dict[str, Any]:
        """Writes the fusion layers (``folder/<task>/``) and the source adapters
        (``folder/_sources/<source>/``) for an export; returns how to rebuild this encoder."""
        spec = super().export_task_encoder(folder)
        source_config = BottleneckAdapterEncoder.adapter_config(self) | {"method": "bottleneck"}
        for name in self.source_tasks:
            write_adapter(Path(folder) / SOURCES_DIR, name, self.sources[name], source_config)
        spec["init_args"] = {"source_tasks": self.source_tasks, "sublayers": self.sublayers}
        spec["paths"] = {"source_adapters": SOURCES_DIR}  # relative to the exported folder
        return spec

    def train(self, mode: bool = True) -> AdapterFusionEncoder:
        super().train(mode)
        self.sources.eval()  # frozen: no dropout inside them either
        return self


def _read_sources(path: str, tasks: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved adapter config and each source task's adapter tensors, from a folder written
    by ``save_adapters`` (or an export's ``task_encoder/``) or a bottleneck run's checkpoint."""
    root = Path(resolve_path(path))
    if root.is_file():
        ckpt = torch.load(root, map_location="cpu", weights_only=True)
        state = ckpt.get("state_dict", {})
        config = (state.get("encoder._extra_state") or {}).get("adapter_config", {})
        if config.get("method") != "bottleneck":
            raise ConfigError(f"{root} is not a checkpoint of a BottleneckAdapterEncoder run")
        states = {}
        for task in tasks:
            prefix = f"encoder.bottlenecks.{task}."
            states[task] = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not states[task]:
                have = sorted(
                    {k.split(".")[2] for k in state if k.startswith("encoder.bottlenecks.")}
                )
                raise ConfigError(f"{root} has no adapters of source task {task!r}; it has {have}")
        return config, states
    config_file = root / tasks[0] / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(f"{root} has no saved adapter for source task {tasks[0]!r}")
    config = json.loads(config_file.read_text())
    if config.get("method") != "bottleneck":
        raise ConfigError(f"{config_file} is not a bottleneck adapter ({config.get('method')})")
    return config, {task: read_adapter(root, task, config) for task in tasks}
