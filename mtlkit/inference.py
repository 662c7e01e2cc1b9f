"""Predictions from an exported model (``mtlkit export``) with only torch and transformers.

This module deliberately imports nothing of mtlkit's training code (Lightning, datasets,
torchmetrics): a served model needs torch, transformers and safetensors only::

    from mtlkit.inference import ExportedModel

    model = ExportedModel.from_folder("exported/")
    model.predict(["what is a movie", "who is john"])
    # {"trec": [{"label": "what", "probabilities": {...}}, ...], "sentiment": [{"value": 1.7}, ...]}

An exported folder holds ``encoder/`` (a Hugging Face model), ``tokenizer/``,
``heads.safetensors`` (one linear layer per task, keys ``<task>.<param>``) and ``mtlkit.json``
(pooling and, per task, how to tokenize and how to read the head's outputs).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

FORMAT = "mtlkit-export"
FORMAT_VERSION = 1
META_FILE = "mtlkit.json"
HEADS_FILE = "heads.safetensors"
ENCODER_DIR = "encoder"
TOKENIZER_DIR = "tokenizer"
#: What ``predict`` returns per kind of task; ``logits`` for task types it does not know.
KINDS = ("sequence_classification", "regression", "multi_label", "token_classification", "logits")

#: An input: a text, a ``(text, text_pair)`` pair, or ``{"text": ..., "text_pair": ...}``.
Input = str | tuple[str, str] | list[str] | dict[str, str]


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


def load_encoder(folder: str | Path) -> PreTrainedModel:
    """The exported encoder, without the pooler it was trained without.

    Raises:
        ValueError: Weights other than the pooler's are missing from the folder.
    """
    with quiet_transformers():
        model, info = AutoModel.from_pretrained(str(folder), output_loading_info=True)
    missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
    if missing:
        raise ValueError(f"encoder in {folder} lacks weights {sorted(missing)[:5]}")
    if info["missing_keys"] and getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model.eval()


def pool(hidden: Tensor, attention_mask: Tensor, how: str) -> Tensor:
    """``cls``: the first token's state; ``mean``: the mask-weighted mean (as in training)."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@dataclass
class _Task:
    name: str
    kind: str
    level: str
    weight: Tensor
    bias: Tensor | None
    labels: list[str]
    spec: dict[str, Any]

    @property
    def key(self) -> tuple[int, bool, bool]:
        """Tasks with equal keys share one tokenization and one encoder pass."""
        pair = bool(self.spec.get("text_pair_column")) and self.level == "sequence"
        return int(self.spec.get("max_length", 512)), pair, self.level == "token"


class ExportedModel:
    """An exported multi-task model: encoder, tokenizer and one linear head per task.

    Args:
        encoder: The Hugging Face encoder.
        tokenizer: Its (fast) tokenizer.
        meta: The parsed ``mtlkit.json``.
        heads: ``heads.safetensors`` as a dict of tensors.
        device: Where to run.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        tokenizer: Any,
        meta: dict[str, Any],
        heads: dict[str, Tensor],
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.tokenizer = tokenizer
        self.pooling = meta.get("pooling", "mean")
        self.tasks: dict[str, _Task] = {}
        for name, spec in meta["tasks"].items():
            head = spec["head"]
            bias = heads.get(f"{name}.{head['bias']}") if head.get("bias") else None
            state = spec.get("head_state", {})
            n = int(head["out_features"])
            self.tasks[name] = _Task(
                name=name,
                kind=spec["kind"],
                level=spec["level"],
                weight=heads[f"{name}.{head['weight']}"].to(self.device),
                bias=bias.to(self.device) if bias is not None else None,
                labels=[str(x) for x in state.get("label_names") or range(n)],
                spec=spec,
            )

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
        """Loads a folder written by ``mtlkit export``."""
        folder = Path(path)
        meta = read_meta(folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))
        heads = load_file(str(folder / HEADS_FILE))
        return cls(load_encoder(folder / ENCODER_DIR), tokenizer, meta, heads, device)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    # ------------------------------------------------------------------ running
    def _select(self, tasks: Sequence[str] | None) -> list[_Task]:
        names = list(self.tasks) if tasks is None else list(tasks)
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; the model has {list(self.tasks)}")
        return [self.tasks[n] for n in names]

    @staticmethod
    def _items(inputs: Input | Sequence[Input]) -> list[tuple[str, str | None]]:
        if isinstance(inputs, str | dict):
            inputs = [inputs]
        items = []
        for item in inputs:
            if isinstance(item, str):
                items.append((item, None))
            elif isinstance(item, dict):
                items.append((str(item["text"]), item.get("text_pair")))
            else:
                text, pair = item
                items.append((str(text), None if pair is None else str(pair)))
        return items

    def _tokenize(self, chunk: list[tuple[str, str | None]], key: tuple[int, bool, bool]) -> Any:
        max_length, pair, token_level = key
        common = dict(truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        if token_level:  # whitespace words, tokenized as the training data was
            words = [text.split() for text, _ in chunk]
            return self.tokenizer(words, is_split_into_words=True, **common)
        texts = [text for text, _ in chunk]
        return self.tokenizer(texts, [p for _, p in chunk] if pair else None, **common)

    def _truncated(
        self, chunk: list[tuple[str, str | None]], key: tuple[int, bool, bool]
    ) -> list[bool]:
        """Which inputs of ``chunk`` are longer than ``max_length`` tokens (and get cut)."""
        max_length, pair, token_level = key
        common = dict(truncation=False, verbose=False)  # verbose: no over-length warning
        if token_level:
            full = self.tokenizer([t.split() for t, _ in chunk], is_split_into_words=True, **common)
        else:
            pairs = [p for _, p in chunk] if pair else None
            full = self.tokenizer([t for t, _ in chunk], pairs, **common)
        return [len(ids) > max_length for ids in full["input_ids"]]

    @torch.no_grad()
    def _run(
        self, items: list[tuple[str, str | None]], tasks: list[_Task], batch_size: int
    ) -> Iterator[tuple[int, _Task, Tensor, Any, list[bool]]]:
        """Yields ``(offset, task, logits, encoding, truncated)`` per chunk of inputs and task
        (``truncated``: per input, whether it was longer than the task's ``max_length``)."""
        for task in tasks:
            if task.key[1] and any(p is None for _, p in items):
                raise ValueError(f"task {task.name!r} takes text pairs; give every input a pair")
        groups: dict[tuple[int, bool, bool], list[_Task]] = {}
        for task in tasks:
            groups.setdefault(task.key, []).append(task)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            for key, members in groups.items():
                enc, cut = self._tokenize(chunk, key), self._truncated(chunk, key)
                batch = {k: v.to(self.device) for k, v in enc.items()}
                hidden = self.encoder(**batch).last_hidden_state
                pooled = None if key[2] else pool(hidden, batch["attention_mask"], self.pooling)
                for task in members:
                    features = hidden if key[2] else pooled
                    logits = F.linear(features, task.weight, task.bias).float().cpu()
                    yield start, task, logits, enc, cut

    def logits(
        self,
        inputs: Input | Sequence[Input],
        tasks: Sequence[str] | None = None,
        batch_size: int = 32,
    ) -> dict[str, list[Tensor]]:
        """Raw head outputs per task and input (token tasks: ``[tokens, tags]`` per input)."""
        items = self._items(inputs)
        out: dict[str, list[Tensor]] = {t.name: [] for t in self._select(tasks)}
        for _, task, logits, enc, _ in self._run(items, self._select(tasks), batch_size):
            masks = enc["attention_mask"].bool()
            for row, mask in zip(logits, masks, strict=True):
                out[task.name].append(row[mask] if task.level == "token" else row)
        return out

    def predict(
        self,
        inputs: Input | Sequence[Input],
        tasks: Sequence[str] | None = None,
        batch_size: int = 32,
    ) -> dict[str, list[dict[str, Any]]]:
        """Each task's prediction for each input, as JSON-ready dicts.

        Args:
            inputs: Texts, ``(text, text_pair)`` pairs or ``{"text", "text_pair"}`` dicts. Pair
                tasks need a pair for every input; other tasks read the first text only.
            tasks: Task names to predict (default: all).
            batch_size: Inputs per encoder pass.

        Returns:
            ``{task: [prediction per input]}``: ``{"label", "probabilities"}`` for sequence
            classification, ``{"value"}`` for regression (on the data's scale),
            ``{"labels", "probabilities"}`` for multi-label (labels above the task's
            threshold), ``{"words", "tags"}`` for token classification (whitespace words, each
            tagged from its first sub-token; ``None`` for words cut by truncation). An input
            longer than the task's ``max_length`` tokens is cut, and its prediction says so
            with ``"truncated": True``.
        """
        items = self._items(inputs)
        out: dict[str, list[dict[str, Any]]] = {t.name: [] for t in self._select(tasks)}
        for start, task, logits, enc, cut in self._run(items, self._select(tasks), batch_size):
            for i, row in enumerate(logits):
                if task.kind == "token_classification":
                    words = items[start + i][0].split()
                    prediction = _tag_words(task, row, enc.word_ids(i), words)
                elif task.level == "token":
                    mask = enc["attention_mask"][i].bool()
                    prediction = {"logits": row[mask].tolist()}
                else:
                    prediction = _read_sequence(task, row)
                out[task.name].append({**prediction, "truncated": True} if cut[i] else prediction)
        return out


def _read_sequence(task: _Task, logits: Tensor) -> dict[str, Any]:
    if task.kind == "sequence_classification":
        probs = logits.softmax(-1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        named = dict(zip(task.labels, probs, strict=True))
        return {"label": task.labels[best], "probabilities": named}
    if task.kind == "regression":
        state = task.spec.get("head_state", {})
        scale, shift = state.get("target_scale", 1.0), state.get("target_shift", 0.0)
        return {"value": float(logits.reshape(-1)[0]) * scale + shift}
    if task.kind == "multi_label":
        probs = torch.sigmoid(logits).tolist()
        threshold = float(task.spec.get("threshold", 0.5))
        chosen = [name for name, p in zip(task.labels, probs, strict=True) if p > threshold]
        return {"labels": chosen, "probabilities": dict(zip(task.labels, probs, strict=True))}
    return {"logits": logits.tolist()}


def _tag_words(
    task: _Task, logits: Tensor, word_ids: list[int | None], words: list[str]
) -> dict[str, Any]:
    best = logits.argmax(-1).tolist()
    tags: list[str | None] = [None] * len(words)
    previous = None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:  # a word's first sub-token carries its tag
            tags[word] = task.labels[best[position]]
        previous = word
    return {"words": words, "tags": tags}
