"""Export a trained model to a folder that loads without mtlkit's training code.

The folder (read by :class:`mtlkit.inference.ExportedModel`, and by ``init_from`` and
distillation teachers through :func:`read_exported`)::

    encoder/            Hugging Face ``save_pretrained`` (config.json, model.safetensors)
    tokenizer/          Hugging Face ``save_pretrained``
    heads.safetensors   every head's tensors, keys ``<task>.<param>``
    mtlkit.json         format version, pooling and, per task, how to tokenize its input and
                        how to read its outputs (labels, threshold, target scale)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mtlkit.errors import ConfigError
from mtlkit.inference import (
    ENCODER_DIR,
    FORMAT,
    FORMAT_VERSION,
    HEADS_FILE,
    META_FILE,
    TOKENIZER_DIR,
    load_encoder,
    quiet_transformers,
    read_meta,
)
from mtlkit.tasks import (
    MultiLabelClassification,
    Regression,
    SequenceClassification,
    TokenClassification,
)
from mtlkit.tasks.base import Task
from mtlkit.transfer.source import ModelSource

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mtlkit.model.module import MultiTaskModule

# Subclasses first: the first match decides how predictions are read.
_KINDS: list[tuple[type[Task], str]] = [
    (TokenClassification, "token_classification"),
    (MultiLabelClassification, "multi_label"),
    (Regression, "regression"),
    (SequenceClassification, "sequence_classification"),
]
# Modules a head may hold besides its one linear layer: none of them changes eval outputs
# except Flatten, which only reshapes (regression's [batch, 1] -> [batch]).
_HEAD_PARTS = (nn.Linear, nn.Dropout, nn.Flatten, nn.Identity, nn.Sequential)


def export_model(
    module: MultiTaskModule, tokenizer: PreTrainedTokenizerBase, folder: str | Path
) -> Path:
    """Writes ``module`` (encoder, heads, label metadata) and ``tokenizer`` to ``folder``.

    Args:
        module: A model with its heads built (after training or ``on_load_checkpoint``).
        tokenizer: The tokenizer the model was trained with.
        folder: Output folder (created; files of an earlier export are overwritten).

    Returns:
        The folder.

    Raises:
        ConfigError: Per-task encoders (their task-specific parameters have no place in one
            shared Hugging Face encoder), a task without a head, or a head that is not one
            linear layer.
    """
    if getattr(module.encoder, "per_task", False):
        raise ConfigError(
            f"cannot export {type(module.encoder).__name__}: it gives each task its own encoder "
            "parameters (adapters, soft sharing), and an export holds one shared Hugging Face "
            "encoder; merge the task parameters into a plain HFEncoder first"
        )
    missing = [n for n in module.tasks if n not in module.heads]
    if missing:
        raise ConfigError(f"cannot export: task(s) {missing} have no head yet (labels unknown)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, specs = {}, {}
    for name, task in module.tasks.items():
        head = module.heads[name]
        specs[name] = _task_spec(task, head)
        for key, value in head.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu", torch.float32).contiguous()
    with quiet_transformers():
        module.encoder.model.save_pretrained(folder / ENCODER_DIR)
    tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    save_file(tensors, str(folder / HEADS_FILE))
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "pooling": module.pooling, "tasks": specs}
    # Written last: a folder whose export was interrupted is not mistaken for a complete one.
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def _task_spec(task: Task, head: nn.Module) -> dict[str, Any]:
    kind = next((k for cls, k in _KINDS if isinstance(task, cls)), "logits")
    cls = type(task)
    spec: dict[str, Any] = {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "kind": kind,
        "level": task.level,
        "head_state": _json_safe(task.head_state(), task.name),
        "head": _linear_spec(head, task.name),
        "text_column": task.text_column,
        "text_pair_column": getattr(task, "text_pair_column", None),
        "label_column": task.label_column,
        "max_length": task.max_length,
    }
    if isinstance(task, MultiLabelClassification):
        spec["threshold"] = task.threshold
    return spec


def _linear_spec(head: nn.Module, task: str) -> dict[str, Any]:
    linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
    others = [type(m).__name__ for m in head.modules() if not isinstance(m, _HEAD_PARTS)]
    if len(linears) != 1 or others:
        raise ConfigError(
            f"cannot export task {task!r}: its head is not a single linear layer "
            f"({head}); export supports linear heads only"
        )
    name, linear = linears[0]
    prefix = f"{name}." if name else ""
    return {
        "weight": f"{prefix}weight",
        "bias": f"{prefix}bias" if linear.bias is not None else None,
        "in_features": linear.in_features,
        "out_features": linear.out_features,
        "params": {k: list(v.shape) for k, v in head.state_dict().items()},
    }


def _json_safe(state: dict[str, Any], task: str) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor | np.ndarray | np.generic):
            return value.tolist()
        if isinstance(value, set | frozenset):
            return sorted(value)
        raise TypeError(type(value).__name__)

    try:
        return json.loads(json.dumps(state, default=convert))
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"cannot export task {task!r}: its head_state holds a value JSON cannot store ({err})"
        ) from err


def read_exported(folder: str | Path) -> ModelSource:
    """Reads an exported folder as a :class:`~mtlkit.transfer.source.ModelSource`.

    Raises:
        ConfigError: The folder is not an export (the missing file is named).
    """
    folder = Path(folder)
    try:
        meta = read_meta(folder, need_tokenizer=False)
        encoder = load_encoder(folder / ENCODER_DIR)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from err
    flat = load_file(str(folder / HEADS_FILE))
    heads = {}
    for name, spec in meta["tasks"].items():
        keys = [f"{name}.{p}" for p in spec["head"]["params"]]
        absent = [k for k in keys if k not in flat]
        if absent:
            raise ConfigError(f"{folder / HEADS_FILE} lacks tensors {absent} of task {name!r}")
        heads[name] = {k[len(name) + 1 :]: flat[k] for k in keys}
    return ModelSource(
        path=str(folder),
        encoder_config=encoder.config.to_dict(),
        encoder_state=dict(encoder.state_dict()),
        heads=heads,
        tasks={n: dict(s.get("head_state", {})) for n, s in meta["tasks"].items()},
        pooling=meta.get("pooling", "mean"),
    )
