"""Loading a trained model's weights (a checkpoint or an exported folder, as a
:class:`~mtlkit.model.source.ModelSource`) into a new :class:`MultiTaskModel`: its shared
encoder, mapped layer by layer (``keep_layers``), and chosen heads, every shape and label set
checked first. ``init_from`` (model-based transfer) is this step of building the model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.model.source import ModelSource

if TYPE_CHECKING:
    from mtlkit.model.encoder import HFEncoder
    from mtlkit.model.multitask import MultiTaskModel

#: How many names a report line lists before it only counts the rest.
_SHOWN = 8


@dataclass
class InitReport:
    """What :func:`load_weights` did (``init_from``: kept on the module as ``module.init_report``).

    Attributes:
        source: The path the weights came from.
        encoder_tensors: How many encoder tensors were copied.
        loaded: ``"encoder"`` (when any encoder tensor was copied) and ``"heads.<task>"`` per
            loaded head.
        new: What keeps its fresh initialisation: ``"encoder.<param>"`` for encoder parameters
            the source lacks (per-task adapters, ...) and ``"heads.<task>"`` per head not loaded.
        skipped: What of the source was not used: ``"encoder.<key>"`` for source tensors without
            a target and ``"heads.<task>"`` per source head not asked for.
        heads: Which source head each loaded head came from, ``{target_task: source_task}``.
    """

    source: str
    encoder_tensors: int = 0
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    heads: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        def show(items: list[str]) -> str:
            more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            return ", ".join(items[:_SHOWN]) + more if items else "nothing"

        heads = [f"{t} <- {s}" for t, s in self.heads.items()]
        return (
            f"init_from {self.source}: loaded {self.encoder_tensors} encoder tensors"
            + (f" and heads {', '.join(heads)}" if heads else "")
            + f"; new (freshly initialised): {show(self.new)}"
            + f"; skipped (in the source, unused): {show(self.skipped)}"
        )


def load_weights(
    model: MultiTaskModel,
    source: ModelSource,
    heads: list[str] | dict[str, str] | None = None,
    label_states: Mapping[str, dict[str, Any]] | None = None,
) -> InitReport:
    """Copies a trained model's shared encoder, and the requested heads, into ``model``.

    Every check runs before any weight is written, so a failing call leaves the model as it
    was. Values are copied in place (``load_state_dict`` under ``torch.no_grad()``):
    ``requires_grad`` flags (frozen layers) and devices stay as they are.

    Args:
        model: The model; the heads to load must be built.
        source: The trained model (``load_source``: a checkpoint or an exported folder).
        heads: Heads to load as well: task names present in both models, or
            ``{this_task: source_task}``. ``None`` loads no head.
        label_states: Each task's label metadata (``Task.label_state()``), compared with the
            source's before a head is loaded.

    Raises:
        ConfigError: Different architectures (a shape or the number of layers differs), a
            requested head the source lacks, or a head whose labels differ.
    """
    report = InitReport(source=source.path)
    encoder = _encoder_values(model.encoder, source, report)
    mapping = _head_mapping(model, heads)
    head_states = _head_values(model, dict(label_states or {}), source, mapping, report)
    # load_state_dict copies in place (flags and devices stay) and runs the encoder's load
    # hooks: LoRA maps Hugging Face keys to its wrapped layers, soft sharing re-syncs its copies.
    with torch.no_grad():
        model.encoder.model.load_state_dict(encoder, strict=False)
        for task, state in head_states.items():
            model.heads[task].load_state_dict(state)
    return report


# ------------------------------------------------------------------------------- encoder
_PEFT_PREFIX = "base_model.model."


def _canonical(key: str) -> str:
    """A parameter name without PEFT's wrapping, so LoRA-wrapped and plain encoders match."""
    key = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
    return key.replace(".base_layer.", ".")


def _layer_prefix(encoder: HFEncoder) -> str | None:
    """The key prefix of the transformer block list (``encoder.layer.`` for BERT)."""
    try:
        parent, attr = encoder.layer_list_parent()
    except ConfigError:
        return None
    for name, candidate in encoder.model.named_modules():
        if candidate is parent:
            return _canonical(f"{name}.{attr}." if name else f"{attr}.")
    return None


def _layer_map(encoder: HFEncoder, source: ModelSource, prefix: str | None) -> dict[int, int]:
    """Which source layer feeds each target layer (identity unless ``keep_layers`` trims)."""
    if prefix is None:
        return {}
    n_target = len(encoder.layers)
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in source.encoder_state if (m := pattern.match(_canonical(k)))}
    n_source = max(found) + 1 if found else 0
    if n_source == n_target:
        return {i: i for i in range(n_target)}
    kept = getattr(encoder, "kept_layers", None)
    if kept is None:
        raise ConfigError(
            f"init_from {source.path}: the source encoder has {n_source} layers but this model's "
            f"has {n_target}; the architectures differ (use HFEncoder keep_layers to build a "
            "smaller model from chosen layers of the source)"
        )
    if len(kept) != n_target or max(kept) >= n_source:
        raise ConfigError(
            f"init_from {source.path}: keep_layers {kept} does not fit the source's {n_source} "
            f"layers (this model has {n_target})"
        )
    return dict(enumerate(kept))


def _source_key(key: str, prefix: str | None, layers: dict[int, int]) -> str:
    if prefix is None or not key.startswith(prefix):
        return key
    index, _, rest = key[len(prefix) :].partition(".")
    return f"{prefix}{layers.get(int(index), int(index))}.{rest}" if index.isdigit() else key


def _encoder_values(
    encoder: HFEncoder, source: ModelSource, report: InitReport
) -> dict[str, Tensor]:
    """The source tensor for each of the target's Hugging Face keys that has one (checked)."""
    prefix = _layer_prefix(encoder)
    layers = _layer_map(encoder, source, prefix)
    available = {_canonical(k): v for k, v in source.encoder_state.items()}
    own = dict(encoder.model.state_dict(keep_vars=True))
    values, used = {}, set()
    for key, target in own.items():
        wanted = _source_key(_canonical(key), prefix, layers)
        value = available.get(wanted)
        if value is None:
            report.new.append(f"encoder.model.{key}")
            continue
        if value.shape != target.shape:
            raise ConfigError(
                f"init_from {source.path}: encoder parameter {key!r} has shape "
                f"{tuple(target.shape)} here but {tuple(value.shape)} in the source "
                f"({wanted!r}); the architectures differ (hidden size, vocabulary, ...): "
                f"{_describe(source.encoder_config)} vs {_describe(encoder.model.config.to_dict())}"
            )
        values[key] = value
        used.add(wanted)
    # Per-task parts (adapters, soft-sharing copies) live beside the HF model: always new.
    inner = {id(p) for p in encoder.model.parameters()}
    report.new += [f"encoder.{n}" for n, p in encoder.named_parameters() if id(p) not in inner]
    report.skipped += [f"encoder.model.{k}" for k in available if k not in used]
    report.encoder_tensors = len(values)
    if values:
        report.loaded.append("encoder")
    return values


def _describe(config: dict[str, Any]) -> str:
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    return "{" + ", ".join(f"{k}={config.get(k)}" for k in keys if k in config) + "}"


# --------------------------------------------------------------------------------- heads
def _head_mapping(
    model: MultiTaskModel, heads: list[str] | dict[str, str] | None
) -> dict[str, str]:
    mapping = dict(heads) if isinstance(heads, dict) else {t: t for t in heads or []}
    unknown = sorted(set(mapping) - set(model.heads))
    if unknown:
        raise ConfigError(
            f"init_heads names task(s) {unknown} that this model does not have; "
            f"its tasks are {sorted(model.heads)}"
        )
    return mapping


def _head_values(
    model: MultiTaskModel,
    label_states: dict[str, dict[str, Any]],
    source: ModelSource,
    mapping: dict[str, str],
    report: InitReport,
) -> dict[str, dict[str, Tensor]]:
    states = {}
    for target, origin in mapping.items():
        if origin not in source.heads:
            raise ConfigError(
                f"init_heads: the source {source.path} has no head {origin!r} (for task "
                f"{target!r}); it has heads {sorted(source.heads)}"
            )
        _check_labels(label_states.get(target, {}), source.tasks.get(origin, {}), target, origin)
        _check_head(model.heads[target], source.heads[origin], target, origin)
        states[target] = source.heads[origin]
        report.heads[target] = origin
        report.loaded.append(f"heads.{target}")
    report.new += [f"heads.{t}" for t in model.heads if t not in mapping]
    used = set(mapping.values())
    report.skipped += [f"heads.{s}" for s in source.heads if s not in used]
    return states


def _check_labels(own: dict[str, Any], theirs: dict[str, Any], target: str, origin: str) -> None:
    """A head is only meaningful with the label set (or target scale) it was trained on."""
    # None (integer labels without names) matches anything; num_labels still has to agree.
    known = [k for k in own if own[k] is not None and theirs.get(k) is not None]
    differ = [k for k in known if own[k] != theirs[k]]
    if differ:
        mine = {k: own[k] for k in differ}
        other = {k: theirs[k] for k in differ}
        raise ConfigError(
            f"init_heads: head {origin!r} of the source was trained with {other} but task "
            f"{target!r} has {mine}; a head only transfers to the same label set"
        )


def _check_head(head: nn.Module, state: dict[str, Tensor], target: str, origin: str) -> None:
    own = dict(head.state_dict(keep_vars=True))
    if set(own) != set(state):
        raise ConfigError(
            f"init_heads: head {origin!r} of the source has parameters {sorted(state)} but task "
            f"{target!r}'s head has {sorted(own)}; the task types differ"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ConfigError(
                f"init_heads: parameter {key!r} of head {origin!r} has shape "
                f"{tuple(value.shape)} in the source but {tuple(own[key].shape)} in task "
                f"{target!r}'s head; the architectures differ (hidden size, number of labels)"
            )
