"""A trained mtlkit model as plain tensors: what transfer, export and distillation read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.paths import resolve_path

ENCODER_PREFIX = "encoder.model."
HEADS_PREFIX = "heads."


@dataclass
class ModelSource:
    """The parts of a trained model, independent of how it was stored.

    Attributes:
        path: Where it was read from (for messages).
        encoder_config: The Hugging Face config of the shared encoder, as a dict.
        encoder_state: The encoder's weights, keys as in the Hugging Face model.
        heads: Each task's head weights, keys as in the head module.
        tasks: Each task's label metadata (``Task.head_state()``).
        pooling: The sentence pooling the heads were trained with.
    """

    path: str
    encoder_config: dict[str, Any]
    encoder_state: dict[str, Tensor]
    heads: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    pooling: str = "mean"


def _split_heads(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    heads: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith(HEADS_PREFIX):
            task, _, rest = key[len(HEADS_PREFIX) :].partition(".")
            heads.setdefault(task, {})[rest] = value
    return heads


def _from_checkpoint(path: Path) -> ModelSource:
    try:  # weights_only: a checkpoint never runs pickled code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"cannot read checkpoint {path}: {err}") from err
    meta = ckpt.get("mtlkit_encoder")
    state = ckpt.get("state_dict")
    if meta is None or state is None:
        raise ConfigError(
            f"{path} is not a mtlkit checkpoint (no 'mtlkit_encoder' / 'state_dict'); "
            "checkpoints written by mtlkit fit since transfer support have them"
        )
    n = len(ENCODER_PREFIX)
    encoder = {k[n:]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    return ModelSource(
        path=str(path),
        encoder_config=dict(meta["config"]),
        encoder_state=encoder,
        heads=_split_heads(state),
        tasks=dict(ckpt.get("mtlkit_tasks", {})),
        pooling=meta.get("pooling", "mean"),
    )


def load_source(path: str) -> ModelSource:
    """Reads a mtlkit checkpoint (``.ckpt``) or an exported folder (``mtlkit export``)."""
    resolved = Path(resolve_path(path))
    if resolved.is_dir():
        from mtlkit.export import read_exported

        return read_exported(resolved)
    if not resolved.exists():
        raise ConfigError(f"init/teacher source {path!r} does not exist")
    return _from_checkpoint(resolved)
