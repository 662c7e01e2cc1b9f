"""Per-task bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) on a frozen encoder.

Plain torch: the adapters sit beside the Hugging Face model (``encoder.bottlenecks``) and reach
its sublayers through forward hooks, so the model's own weights keep their Hugging Face keys
(``init_from``, export and teachers read them as for a plain :class:`HFEncoder`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.model.encoder import HFEncoder
from mtlkit.paths import resolve_path

Placement = Literal["houlsby", "pfeiffer"]
#: Where each placement puts its adapters in a transformer block: after the attention's output
#: projection and after the feed-forward's output projection, before their residual + norm.
POSITIONS: dict[str, tuple[str, ...]] = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}
#: The output projections of the attention and feed-forward sublayers, relative to one block.
SUBLAYERS: dict[str, dict[str, str]] = {
    "bert": {"attention": "attention.output.dense", "ffn": "output.dense"},
    "distilbert": {"attention": "attention.out_lin", "ffn": "ffn.lin2"},
}
_SAME_AS_BERT = ("roberta", "xlm-roberta", "camembert", "electra", "ernie", "xlm")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))``: a residual bottleneck of ``size`` units (Houlsby et al. 2019).

    The up-projection starts at zero, so a new adapter is the identity.

    Args:
        hidden: The model's hidden size ``d``.
        size: The bottleneck size ``m`` (``d / reduction_factor``).
        activation: ``relu``, ``gelu``, ``swish`` or ``tanh``.
    """

    def __init__(self, hidden: int, size: int, activation: str = "relu") -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


def _site_hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    """Forward hook of an adapted sublayer: its output through the active task's adapter."""
    adapter = module.__dict__.get("_mtlkit_adapter")
    return output if adapter is None else adapter(output)


class BottleneckAdapterEncoder(HFEncoder):
    """Frozen pretrained encoder plus one set of bottleneck adapters per task.

    Houlsby et al. (2019), "Parameter-Efficient Transfer Learning for NLP" (ICML): two adapters
    per transformer block, one after the attention's output projection and one after the
    feed-forward's, each before its sublayer's residual connection and layer norm. Pfeiffer et
    al. (2021), "AdapterFusion: Non-Destructive Task Composition for Transfer Learning" (EACL):
    one adapter per block, after the feed-forward's output projection. An adapter of bottleneck
    size ``m = d / reduction_factor`` on hidden size ``d`` holds ``2 d m + d + m`` parameters.

    Each task's adapters are switched on for its sub-batch (``per_task``); the pretrained weights
    stay frozen and keep their Hugging Face keys. Not with ``gradient_checkpointing``: a
    recomputed block would see the adapters of the last task run, not its own.

    Args:
        name_or_path: See :class:`HFEncoder`.
        placement: ``houlsby`` (2 adapters per block) or ``pfeiffer`` (1, after feed-forward).
        reduction_factor: ``d / m``; the bottleneck has ``max(1, d // reduction_factor)`` units.
        activation: The bottleneck's non-linearity (``relu``, ``gelu``, ``swish``, ``tanh``).
        sublayers: The output projections to adapt, relative to a block, as ``{"attention":
            ..., "ffn": ...}``; default known for BERT-like models and DistilBERT.
        adapters_from: A folder written by :meth:`save_adapters`; each task's adapters are
            loaded from it when created.
        **kwargs: The other arguments of :class:`HFEncoder` (``config``, ``keep_layers``, ...).
    """

    per_task = True
    method = "bottleneck"

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        placement: Placement = "houlsby",
        reduction_factor: float = 16.0,
        activation: str = "relu",
        sublayers: dict[str, str] | None = None,
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        if placement not in POSITIONS:
            raise ConfigError(f"placement must be 'houlsby' or 'pfeiffer', got {placement!r}")
        if not reduction_factor > 0 or activation not in ACTIVATIONS:
            raise ConfigError(
                f"bottleneck adapters need reduction_factor > 0 and activation in "
                f"{sorted(ACTIVATIONS)}; got {reduction_factor}, {activation!r}"
            )
        if kwargs.get("gradient_checkpointing"):
            raise ConfigError(f"{type(self).__name__} does not support gradient_checkpointing")
        super().__init__(name_or_path=name_or_path, **kwargs)
        self.model.requires_grad_(False)
        self.placement, self.reduction_factor, self.activation = (
            placement,
            reduction_factor,
            activation,
        )
        self.adapters_from = adapters_from
        self.bottleneck_size = max(1, int(self.hidden_size // reduction_factor))
        self.sites = self._find_sites(sublayers)
        for site in self.sites.values():
            site.register_forward_hook(_site_hook)
        self.bottlenecks = nn.ModuleDict()

    # ------------------------------------------------------------------ building
    def _find_sites(self, sublayers: dict[str, str] | None) -> dict[str, nn.Module]:
        model_type = str(getattr(self.model.config, "model_type", ""))
        known = SUBLAYERS.get("bert" if model_type in _SAME_AS_BERT else model_type)
        names = dict(sublayers or known or {})
        wanted = POSITIONS[self.placement]
        if not all(p in names for p in wanted):
            raise ConfigError(
                f"no known sublayers for model type {model_type!r}; give sublayers "
                "{'attention': <attention output projection>, 'ffn': <feed-forward output "
                "projection>} relative to one transformer block"
            )
        self.sublayers = {p: names[p] for p in wanted}
        sites = {}
        for index, block in enumerate(self.layers):
            for position in wanted:
                try:
                    sites[f"{index}_{position}"] = block.get_submodule(names[position])
                except AttributeError as err:
                    raise ConfigError(
                        f"transformer block {index} has no sublayer {names[position]!r} "
                        f"({position}): {err}"
                    ) from err
        return sites

    def new_adapters(self) -> nn.ModuleDict:
        """One task's adapters, keyed ``<layer>_<position>`` (``0_attention``, ``0_ffn``, ...)."""
        return nn.ModuleDict(
            {
                key: BottleneckAdapter(self.hidden_size, self.bottleneck_size, self.activation)
                for key in self.sites
            }
        )

    def prepare_tasks(self, task_names: list[str]) -> None:
        """Adds the adapters of each new task (loaded from ``adapters_from`` when set)."""
        new = [n for n in task_names if n not in self.bottlenecks]
        bad = [n for n in new if not n.isidentifier()]
        if bad:  # adapter names become module keys (no dots, ...)
            raise ConfigError(f"task name(s) {bad} cannot name adapters; use letters, digits and _")
        for name in new:
            self.bottlenecks[name] = self.new_adapters().to(self._device())
        if new and self.adapters_from is not None:
            self.load_adapters(self.adapters_from, new)

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def adapter_parameter_count(self, task: str) -> int:
        """The number of parameters of ``task``'s adapters."""
        return sum(p.numel() for p in self.bottlenecks[task].parameters())

    # ------------------------------------------------------------------ running
    def activate(self, task: str | None) -> None:
        """Makes every adapted sublayer run ``task``'s adapter (``None``: the frozen model)."""
        if task is not None and task not in self.bottlenecks:
            raise ConfigError(
                f"no adapter for task {task!r}; adapters exist for {list(self.bottlenecks)} "
                "(prepare_tasks builds them from the model's task list)"
            )
        for key, site in self.sites.items():
            adapter = None if task is None else self.bottlenecks[task][key]
            # A plain attribute (not a submodule): the adapters are saved once, here.
            object.__setattr__(site, "_mtlkit_adapter", adapter)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        """Token states of a sub-batch through ``task``'s adapters (none: the frozen model)."""
        self.activate(task)
        return super().forward(input_ids, attention_mask, token_type_ids)

    # ------------------------------------------------------------- saving
    def adapter_config(self) -> dict[str, Any]:
        """What :meth:`load_adapters` checks a saved adapter against."""
        return {
            "method": self.method,
            "placement": self.placement,
            "reduction_factor": self.reduction_factor,
            "activation": self.activation,
            "hidden_size": self.hidden_size,
            "bottleneck_size": self.bottleneck_size,
            "sites": list(self.sites),
        }

    def get_extra_state(self) -> dict[str, Any]:
        """The adapter config, saved in checkpoints (AdapterFusion reads its sources from one)."""
        return {"adapter_config": self.adapter_config()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved, own = state.get("adapter_config", {}), self.adapter_config()
        differ = [k for k in ("method", "placement", "bottleneck_size") if saved.get(k) != own[k]]
        if saved and differ:
            raise ConfigError(
                f"the checkpoint's adapters differ from this encoder's in {differ}: "
                f"{[saved.get(k) for k in differ]} vs {[own[k] for k in differ]}"
            )

    def save_adapters(self, folder: str | Path, tasks: list[str] | None = None) -> None:
        """Writes each task's adapters to ``folder/<task>/`` (safetensors and a JSON config)."""
        for name in self._select(tasks):
            write_adapter(folder, name, self.bottlenecks[name], self.adapter_config())

    def export_task_encoder(self, folder: str | Path) -> dict[str, Any]:
        """Writes every task's adapters to ``folder`` for an export; returns how to rebuild
        this encoder around the exported Hugging Face model (``class_path``, ``init_args``)."""
        self.save_adapters(folder)
        cls = type(self)
        return {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": {
                "placement": self.placement,
                "reduction_factor": self.reduction_factor,
                "activation": self.activation,
                "sublayers": self.sublayers,
            },
        }

    def load_adapters(self, folder: str | Path, tasks: list[str] | None = None) -> list[str]:
        """Loads adapters saved by :meth:`save_adapters` into these tasks; returns them."""
        names = self._select(tasks)
        for name in names:
            state = read_adapter(folder, name, self.adapter_config())
            self.bottlenecks[name].load_state_dict(
                {k: v.to(self._device()) for k, v in state.items()}
            )
        return names

    def _select(self, tasks: list[str] | None) -> list[str]:
        names = list(self.bottlenecks) if tasks is None else list(tasks)
        unknown = [n for n in names if n not in self.bottlenecks]
        if unknown or not names:
            raise ConfigError(
                f"no adapter for task(s) {unknown or names}; have {list(self.bottlenecks)}"
            )
        return names


def write_adapter(
    folder: str | Path, task: str, adapters: nn.Module, config: dict[str, Any]
) -> None:
    """Writes one task's adapter modules to ``folder/<task>/`` (read by :func:`read_adapter`)."""
    out = Path(folder) / task
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in adapters.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_adapter(folder: str | Path, task: str, expected: dict[str, Any]) -> dict[str, Tensor]:
    """The tensors of ``task``'s adapter saved under ``folder``, its config checked first.

    Raises:
        ConfigError: No saved adapter for ``task``, or one of another shape or method.
    """
    root = Path(resolve_path(str(folder))) / task
    if not (root / CONFIG_FILE).is_file():
        raise ConfigError(f"{root.parent} has no saved adapter for task {task!r}")
    saved = json.loads((root / CONFIG_FILE).read_text())
    differ = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: saved {s!r}, here {h!r}" for k, (s, h) in differ.items())
        raise ConfigError(f"the adapter of task {task!r} in {root.parent} does not fit: {detail}")
    return load_file(str(root / WEIGHTS_FILE))
