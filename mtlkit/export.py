"""Export a trained model to a folder that loads without mtlkit's training code.

The folder (read by :class:`mtlkit.inference.ExportedModel`, and by ``init_from`` and
distillation teachers through :func:`read_exported`)::

    encoder/            Hugging Face ``save_pretrained`` (config.json, model.safetensors)
                        (a decoder-only backbone with a generation task: the whole causal
                        LM, its LM head included; ``encoder_type: causal_lm``)
    tokenizer/          Hugging Face ``save_pretrained``
    heads.safetensors   every linear head's tensors, keys ``<task>.<param>``
    decoders/<task>/    generation tasks: the decoder, Hugging Face ``save_pretrained``
    task_encoder/       per-task encoders only: each task's own part (adapters, merged weights,
                        prefixes), read by the class ``mtlkit.json`` names (``task_encoder``)
    mtlkit.json         format version, pooling and, per task, how to tokenize its input and
                        how to read its outputs (labels, threshold, target scale)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from mtlkit.errors import ConfigError
from mtlkit.model.source import (
    CAUSAL_LM,
    DECODERS_DIR,
    ENCODER_DIR,
    FORMAT,
    FORMAT_VERSION,
    HEADS_FILE,
    META_FILE,
    PLAIN_FORMAT_VERSION,
    SEQ2SEQ,
    TASK_ENCODER_DIR,
    TOKENIZER_DIR,
    quiet_transformers,
    read_exported,
)
from mtlkit.tasks.base import Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mtlkit.training.module import MultiTaskModule

__all__ = ["export_model", "read_exported"]

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
        ConfigError: A per-task encoder that cannot export its task parts (soft sharing), a
            task without a head, or a head that is not one linear layer (a hierarchical
            dialogue task's context encoder).
    """
    model = module.model  # the MultiTaskModel: encoder, pooling, heads
    per_task = getattr(model.encoder, "per_task", False)
    if per_task and not hasattr(model.encoder, "export_task_encoder"):
        raise ConfigError(
            f"cannot export {type(model.encoder).__name__}: it gives each task its own encoder "
            "parameters (adapters, soft sharing), and an export holds one shared Hugging Face "
            "encoder; merge the task parameters into a plain HFEncoder first"
        )
    missing = [n for n in module.tasks if n not in model.heads]
    if missing:
        raise ConfigError(f"cannot export: task(s) {missing} have no head yet (labels unknown)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, specs = {}, {}
    # A seq2seq backbone exports its whole encoder-decoder model as the encoder.
    seq2seq = getattr(model.encoder, "seq2seq", None)
    # A decoder-only generation task continues prompts with the LM head: the whole causal LM.
    prompted = any(getattr(h, "generates_from_prompts", False) for h in model.heads.values())
    causal_lm = model.encoder.causal_lm if prompted else None
    if causal_lm is not None and per_task:
        raise ConfigError(
            f"cannot export {type(model.encoder).__name__} with a decoder-only generation task: "
            "its export would need each task's own causal LM; merge the adapters into a "
            "CausalLMEncoder first"
        )
    for name, task in module.tasks.items():
        if task.level == "dialogue":
            raise ConfigError(
                f"cannot export task {name!r}: its hierarchical encoding (a context encoder over "
                "turn vectors) is not an exportable linear head; train it with encoding: flat"
            )
        head = model.heads[name]
        backbone = seq2seq is not None or getattr(head, "generates_from_prompts", False)
        if getattr(head, "reads_batch", False) and backbone:  # the backbone's decoder / LM head
            specs[name] = _task_spec(task, {"decoder": ENCODER_DIR, "params": {}})
            continue
        if hasattr(head, "save_decoder"):  # a generation head: a Hugging Face decoder folder
            with quiet_transformers():
                head.save_decoder(folder / DECODERS_DIR / name)
            # the head's other tensors (a projection of the encoder states to another width)
            extra = {k: v for k, v in head.state_dict().items() if not k.startswith("decoder.")}
            shapes = {k: list(v.shape) for k, v in extra.items()}
            specs[name] = _task_spec(task, {"decoder": f"{DECODERS_DIR}/{name}", "params": shapes})
            for key, value in extra.items():
                tensors[f"{name}.{key}"] = value.detach().to("cpu", torch.float32).contiguous()
            continue
        specs[name] = _task_spec(task, _linear_spec(head, name))
        for key, value in head.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu", torch.float32).contiguous()
    with quiet_transformers():
        # Per-task parts (adapters, peft layers) stay out of the shared Hugging Face encoder.
        base = _base_state(model.encoder.model, set(module.tasks)) if per_task else None
        if seq2seq is not None:
            seq2seq.save_pretrained(folder / ENCODER_DIR)
        elif causal_lm is not None:
            causal_lm.save_pretrained(folder / ENCODER_DIR)
        else:
            model.encoder.model.save_pretrained(folder / ENCODER_DIR, state_dict=base)
    tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    save_file(tensors, str(folder / HEADS_FILE))
    # Version 1 readers know plain encoders and linear heads only.
    plain = (
        not per_task
        and seq2seq is None
        and causal_lm is None
        and not (folder / DECODERS_DIR).exists()
    )
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": PLAIN_FORMAT_VERSION if plain else FORMAT_VERSION,
        "pooling": model.pooling,
        "tasks": specs,
    }
    if per_task:
        meta["task_encoder"] = model.encoder.export_task_encoder(folder / TASK_ENCODER_DIR)
    if seq2seq is not None:
        meta["encoder_type"] = SEQ2SEQ
    if causal_lm is not None:
        meta["encoder_type"] = CAUSAL_LM
    # Written last: a folder whose export was interrupted is not mistaken for a complete one.
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def _base_state(model: nn.Module, tasks: set[str]) -> dict[str, torch.Tensor]:
    """The frozen weights of a per-task encoder's Hugging Face model, by Hugging Face key:
    every entry but the per-task ones peft injects (``...<adapter part>.<task>...``, such as
    ``query.lora_A.topic.weight``; their Hugging Face-keyed frozen weights stay)."""
    parts = set()
    for module in model.modules():  # peft's tuner layers name their per-adapter parts
        parts |= set(getattr(module, "adapter_layer_names", ()))
        parts |= set(getattr(module, "other_param_names", ()))

    def per_task(key: str) -> bool:
        names = key.split(".")
        return any(a in parts and b in tasks for a, b in zip(names, names[1:], strict=False))

    return {k: v for k, v in model.state_dict().items() if not per_task(k)}


def _task_spec(task: Task, head: dict[str, Any]) -> dict[str, Any]:
    # The task type says how its outputs are read (kind, threshold, ...): mtlkit.model.outputs.
    output = dict(task.output_spec())
    cls = type(task)
    spec: dict[str, Any] = {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "kind": output.pop("kind", "logits"),
        "level": task.level,
        "head_state": _json_safe(task.label_state(), task.name),
        "head": head,
        "text_column": task.text_column,
        "text_pair_column": getattr(task, "text_pair_column", None),
        "label_column": task.label_column,
        "max_length": task.max_length,
    }
    if task.input_spec():
        spec["input"] = task.input_spec()
    return spec | output


def _linear_spec(head: nn.Module, task: str) -> dict[str, Any]:
    linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
    others = [type(m).__name__ for m in head.modules() if not isinstance(m, _HEAD_PARTS)]
    if len(linears) != 1 or others:
        raise ConfigError(
            f"cannot export task {task!r}: its head is not a single linear layer "
            f"({head}); export supports linear heads and Hugging Face decoders only"
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
