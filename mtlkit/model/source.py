"""A trained mtlkit model as plain tensors, read from a checkpoint or an exported folder.

What :class:`~mtlkit.model.multitask.MultiTaskModel` is built from (distillation teachers,
``ExportedModel``) and what ``init_from`` copies weights from. An exported folder (written by
``mtlkit export``) holds::

    encoder/            Hugging Face ``save_pretrained`` (config.json, model.safetensors)
    tokenizer/          Hugging Face ``save_pretrained``
    heads.safetensors   every linear head's tensors, keys ``<task>.<param>``
    decoders/<task>/    generation tasks: the decoder, Hugging Face ``save_pretrained``
    mtlkit.json         format version, pooling and, per task, how to tokenize its input and
                        how to read its outputs (labels, threshold, target scale)

Needs torch, transformers and safetensors only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from mtlkit.errors import ConfigError
from mtlkit.paths import resolve_path

FORMAT = "mtlkit-export"
FORMAT_VERSION = 2
#: The version of exports without a per-task encoder (readable by mtlkit before version 2).
PLAIN_FORMAT_VERSION = 1
META_FILE = "mtlkit.json"
HEADS_FILE = "heads.safetensors"
ENCODER_DIR = "encoder"
DECODERS_DIR = "decoders"
#: ``mtlkit.json``'s ``encoder_type`` of a seq2seq backbone (``encoder/`` holds the whole
#: encoder-decoder model; generation heads name ``encoder`` as their decoder's folder).
SEQ2SEQ = "seq2seq"
#: ``mtlkit.json``'s ``encoder_type`` of a decoder-only backbone with a generation task
#: (``encoder/`` holds the whole causal LM, its LM head included; its generation heads name
#: ``encoder`` as their decoder's folder).
CAUSAL_LM = "causal_lm"
TOKENIZER_DIR = "tokenizer"
#: Version 2: each task's own encoder part (adapters, merged weights, prefixes), described by
#: ``mtlkit.json``'s ``task_encoder`` (``class_path``, ``init_args``, ``paths``).
TASK_ENCODER_DIR = "task_encoder"
#: Checkpoint state-dict prefixes of the shared encoder's Hugging Face model and of the heads.
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
        tasks: Each task's label metadata (``Task.label_state()``).
        pooling: The sentence pooling the heads were trained with.
        specs: Exported folders: each task's ``mtlkit.json`` entry (level, kind, head shape,
            tokenization); empty for checkpoints.
        task_encoder: Exported folders of per-task encoders: the class that reads each task's
            own part (``class_path``, ``init_args``, ``paths``; see
            :mod:`mtlkit.model.task_encoders`) and ``folder``, where those parts are.
        decoders: Exported folders: each generation task's decoder model.
        seq2seq: The encoder is a seq2seq model's (``Seq2SeqBackbone``): config and weights
            are the whole encoder-decoder model's.
        causal_lm: The encoder is a decoder-only causal LM's (``CausalLMEncoder``): the config
            is the whole causal LM's, ``encoder_state`` its base model's (as for an
            ``HFEncoder``) and ``lm_head`` its LM head's.
        lm_head: With ``causal_lm``: the LM head's weights.
    """

    path: str
    encoder_config: dict[str, Any]
    encoder_state: dict[str, Tensor]
    heads: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    pooling: str = "mean"
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_encoder: dict[str, Any] | None = None
    decoders: dict[str, PreTrainedModel] = field(default_factory=dict)
    seq2seq: bool = False
    causal_lm: bool = False
    lm_head: dict[str, Tensor] = field(default_factory=dict)


# ------------------------------------------------------------------------ exported folders
def read_meta(folder: str | Path, need_tokenizer: bool = True) -> dict[str, Any]:
    """Checks that ``folder`` is an export and returns its ``mtlkit.json``.

    Raises:
        FileNotFoundError: The folder or one of its files is missing (named in the message).
        ValueError: ``mtlkit.json`` is not an export description this version reads.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"exported model folder {str(folder)!r} does not exist")
    needed = [META_FILE, HEADS_FILE, f"{ENCODER_DIR}/config.json"]
    needed += [f"{TOKENIZER_DIR}/tokenizer_config.json"] if need_tokenizer else []
    for name in needed:
        if not (folder / name).exists():
            raise FileNotFoundError(
                f"{folder} is not an exported mtlkit model: it has no {name} "
                "(write one with `mtlkit export`)"
            )
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{folder / META_FILE} is not a {FORMAT} description of version <= {FORMAT_VERSION} "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
        )
    return meta


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silences transformers' progress bars and load report while an export is read or written
    (the training encoder drops BERT's unused pooler, so loading reports its weights missing)."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_encoder(
    folder: str | Path, seq2seq: bool = False, causal_lm: bool = False
) -> PreTrainedModel:
    """The exported encoder, without the pooler it was trained without (``seq2seq``: the whole
    encoder-decoder model of a ``Seq2SeqBackbone``; ``causal_lm``: the whole causal LM of a
    ``CausalLMEncoder``).

    Raises:
        ValueError: Weights other than the pooler's are missing from the folder.
    """
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM if causal_lm else AutoModel
    with quiet_transformers():
        model, info = auto.from_pretrained(str(folder), output_loading_info=True)
    missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
    if missing:
        raise ValueError(f"encoder in {folder} lacks weights {sorted(missing)[:5]}")
    if info["missing_keys"] and getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model.eval()


def _export_heads(
    flat: dict[str, Tensor], specs: dict[str, dict[str, Any]], where: str
) -> dict[str, dict[str, Tensor]]:
    """``heads.safetensors``'s ``<task>.<param>`` tensors, per task (checked against specs).

    Raises:
        ValueError: A task's tensors are missing.
    """
    heads = {}
    for name, spec in specs.items():
        keys = [f"{name}.{p}" for p in spec["head"]["params"]]
        absent = [k for k in keys if k not in flat]
        if absent:
            raise ValueError(f"{where} lacks tensors {absent} of task {name!r}")
        heads[name] = {k[len(name) + 1 :]: flat[k] for k in keys}
    return heads


def load_decoders(folder: str | Path, meta: dict[str, Any]) -> dict[str, PreTrainedModel]:
    """The decoder folders of an export's generation tasks (``decoders/<task>/``).

    Raises:
        FileNotFoundError: A decoder folder named in ``mtlkit.json`` is missing.
    """
    out = {}
    for name, spec in meta["tasks"].items():
        sub = spec["head"].get("decoder")
        if sub is None or sub == ENCODER_DIR:  # no decoder, or the seq2seq backbone's own
            continue
        if not (Path(folder) / sub / "config.json").exists():
            raise FileNotFoundError(f"{folder} lacks the decoder of task {name!r} ({sub}/)")
        with quiet_transformers():
            out[name] = AutoModelForCausalLM.from_pretrained(str(Path(folder) / sub)).eval()
    return out


def source_from_parts(
    path: str,
    encoder: PreTrainedModel,
    meta: dict[str, Any],
    flat: dict[str, Tensor],
    decoders: dict[str, PreTrainedModel] | None = None,
) -> ModelSource:
    """An export's parts (encoder, ``mtlkit.json``, head tensors, decoders) as a
    :class:`ModelSource`."""
    causal_lm = meta.get("encoder_type") == CAUSAL_LM
    lm_head = encoder.get_output_embeddings() if causal_lm else None
    return ModelSource(
        path=path,
        encoder_config=encoder.config.to_dict(),
        encoder_state=dict((encoder.base_model if causal_lm else encoder).state_dict()),
        heads=_with_decoders(_export_heads(flat, meta["tasks"], f"{path}/{HEADS_FILE}"), decoders),
        tasks={n: dict(s.get("head_state", {})) for n, s in meta["tasks"].items()},
        pooling=meta.get("pooling", "mean"),
        specs={n: dict(s) for n, s in meta["tasks"].items()},
        task_encoder=_task_encoder(meta, path),
        decoders=dict(decoders or {}),
        seq2seq=meta.get("encoder_type") == SEQ2SEQ,
        causal_lm=causal_lm,
        lm_head=dict(lm_head.state_dict()) if lm_head is not None else {},
    )


def _task_encoder(meta: dict[str, Any], path: str) -> dict[str, Any] | None:
    spec = meta.get("task_encoder")
    if spec is None:
        return None
    return {"folder": str(Path(path) / TASK_ENCODER_DIR)} | dict(spec)


def _with_decoders(
    heads: dict[str, dict[str, Tensor]], decoders: dict[str, PreTrainedModel] | None
) -> dict[str, dict[str, Tensor]]:
    """Generation heads' full state: their tensors in ``heads.safetensors`` and their decoder's
    weights (``decoder.<key>``, as in the head module)."""
    for name, decoder in (decoders or {}).items():
        heads[name] = {**heads.get(name, {})}
        heads[name].update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    return heads


def read_exported(folder: str | Path) -> ModelSource:
    """Reads an exported folder as a :class:`ModelSource`.

    Raises:
        ConfigError: The folder is not an export (the missing file is named).
    """
    folder = Path(folder)
    try:
        meta = read_meta(folder, need_tokenizer=False)
        kind = meta.get("encoder_type")
        encoder = load_encoder(folder / ENCODER_DIR, kind == SEQ2SEQ, kind == CAUSAL_LM)
        flat = load_file(str(folder / HEADS_FILE))
        return source_from_parts(str(folder), encoder, meta, flat, load_decoders(folder, meta))
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from err


# ----------------------------------------------------------------------------- checkpoints
def _checkpoint_heads(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    heads: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith(HEADS_PREFIX):
            task, _, rest = key[len(HEADS_PREFIX) :].partition(".")
            heads.setdefault(task, {})[rest] = value
    return heads


def read_checkpoint(path: str | Path) -> ModelSource:
    """Reads a mtlkit checkpoint (``.ckpt``) as a :class:`ModelSource` (``weights_only``)."""
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
        heads=_checkpoint_heads(state),
        tasks=dict(ckpt.get("mtlkit_tasks", {})),
        pooling=meta.get("pooling", "mean"),
    )


def load_source(path: str) -> ModelSource:
    """Reads a mtlkit checkpoint (``.ckpt``) or an exported folder (``mtlkit export``)."""
    resolved = Path(resolve_path(path))
    if resolved.is_dir():
        return read_exported(resolved)
    if not resolved.exists():
        raise ConfigError(f"init/teacher source {path!r} does not exist")
    return read_checkpoint(resolved)
