"""Predictions from an exported model (``mtlkit export``) with only torch and transformers.

This module deliberately imports nothing of mtlkit's training code (Lightning, datasets,
torchmetrics): a served model needs torch, transformers and safetensors only::

    from mtlkit.inference import ExportedModel

    model = ExportedModel.from_folder("exported/")
    model.predict(["what is a movie", "who is john"])
    # {"trec": [{"label": "what", "probabilities": {...}}, ...], "sentiment": [{"value": 1.7}, ...]}

An exported folder holds ``encoder/`` (a Hugging Face model), ``tokenizer/``,
``heads.safetensors`` (one linear layer per task, keys ``<task>.<param>``), ``decoders/<task>/``
(generation tasks' Hugging Face decoders) and ``mtlkit.json`` (pooling and, per task, how to
tokenize and how to read the head's outputs or generate).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoTokenizer, PreTrainedModel

from mtlkit.dialogue import encode_dialogues
from mtlkit.model.multitask import MultiTaskModel
from mtlkit.model.source import (
    CAUSAL_LM,
    ENCODER_DIR,
    FORMAT,
    FORMAT_VERSION,
    HEADS_FILE,
    META_FILE,
    SEQ2SEQ,
    TASK_ENCODER_DIR,
    TOKENIZER_DIR,
    load_decoders,
    load_encoder,
    quiet_transformers,
    read_meta,
    source_from_parts,
)

__all__ = [
    "ENCODER_DIR",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADS_FILE",
    "META_FILE",
    "TOKENIZER_DIR",
    "ExportedModel",
    "load_encoder",
    "quiet_transformers",
    "read_meta",
]

#: An input: a text, a ``(text, text_pair)`` pair, ``{"text": ..., "text_pair": ...}``, or a
#: dialogue ``{"turns": [...], "speakers": [...]}`` (speakers optional).
Input = str | tuple[str, str] | list[str] | dict[str, Any]


@dataclass(frozen=True)
class Dialogue:
    """A dialogue input: its turns, oldest first, and optionally one speaker per turn."""

    turns: tuple[str, ...]
    speakers: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, item: dict[str, Any], position: int) -> Dialogue:
        """Reads ``{"turns": [...], "speakers": [...]}``; a clear error for a bad input."""
        turns, speakers = item["turns"], item.get("speakers")
        if not isinstance(turns, list | tuple) or not turns:
            raise ValueError(f"input {position}: 'turns' must be a non-empty list of strings")
        if not all(isinstance(t, str) and t.strip() for t in turns):
            raise ValueError(f"input {position}: every turn must be a non-empty string")
        if speakers is not None and (
            not isinstance(speakers, list | tuple) or len(speakers) != len(turns)
        ):
            raise ValueError(
                f"input {position}: 'speakers' must be a list of one name per turn "
                f"({len(turns)} turns)"
            )
        names = tuple(str(s) for s in speakers) if speakers is not None else None
        return cls(tuple(turns), names)


@dataclass
class _Task:
    name: str
    kind: str
    level: str
    head: nn.Module
    spec: dict[str, Any]

    @property
    def weight(self) -> Tensor:
        return self.head.weight

    @property
    def bias(self) -> Tensor | None:
        return self.head.bias

    @property
    def key(self) -> tuple[Any, ...]:
        """Tasks with equal keys share one tokenization and one encoder pass."""
        dialogue = self.spec.get("input") or {}
        if dialogue.get("type") == "dialogue":
            turns, speakers = dialogue.get("max_turns"), bool(dialogue.get("speakers"))
            return "dialogue", int(self.spec.get("max_length", 512)), turns, speakers
        pair = bool(self.spec.get("text_pair_column")) and self.level in ("sequence", "text")
        return int(self.spec.get("max_length", 512)), pair, self.level == "token"


class ExportedModel:
    """An exported multi-task model: encoder, tokenizer and one linear head per task.

    Args:
        encoder: The Hugging Face encoder.
        tokenizer: Its (fast) tokenizer.
        meta: The parsed ``mtlkit.json``.
        heads: ``heads.safetensors`` as a dict of tensors.
        device: Where to run.
        decoders: Generation tasks' decoder models (``decoders/<task>/``).
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        tokenizer: Any,
        meta: dict[str, Any],
        heads: dict[str, Tensor],
        device: str | torch.device = "cpu",
        decoders: dict[str, PreTrainedModel] | None = None,
    ) -> None:
        self.device = torch.device(device)
        # The same model object training runs (encoder, pooling, heads, output decoding).
        source = source_from_parts("exported model", encoder, meta, heads, decoders)
        self.model = MultiTaskModel.from_source(source).to(self.device)
        self.encoder = self.model.encoder
        self.tokenizer = tokenizer
        self.pooling = self.model.pooling
        self.tasks: dict[str, _Task] = {
            name: _Task(name, spec["kind"], spec["level"], self.model.heads[name], spec)
            for name, spec in meta["tasks"].items()
        }

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
        """Loads a folder written by ``mtlkit export``."""
        folder = Path(path)
        meta = read_meta(folder)
        if "task_encoder" in meta:  # per-task encoders: each task's part is read from here
            meta["task_encoder"]["folder"] = str(folder / TASK_ENCODER_DIR)
        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))
        heads = load_file(str(folder / HEADS_FILE))
        kind = meta.get("encoder_type")
        encoder = load_encoder(folder / ENCODER_DIR, kind == SEQ2SEQ, kind == CAUSAL_LM)
        decoders = load_decoders(folder, meta)
        return cls(encoder, tokenizer, meta, heads, device, decoders)

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
    def _items(inputs: Input | Sequence[Input]) -> list[tuple[Any, str | None]]:
        if isinstance(inputs, str | dict):
            inputs = [inputs]
        items: list[tuple[Any, str | None]] = []
        for item in inputs:
            if isinstance(item, str):
                items.append((item, None))
            elif isinstance(item, dict) and "turns" in item:
                items.append((Dialogue.parse(item, len(items)), None))
            elif isinstance(item, dict):
                items.append((str(item["text"]), item.get("text_pair")))
            else:
                text, pair = item
                items.append((str(text), None if pair is None else str(pair)))
        return items

    def _tokenize(self, chunk: list[tuple[Any, str | None]], key: tuple[Any, ...]) -> Any:
        if key[0] == "dialogue":
            enc = self._encode_dialogues(chunk, key, key[1])
            return self.tokenizer.pad(enc, return_tensors="pt")
        max_length, pair, token_level = key
        common = dict(truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        if token_level:  # whitespace words, tokenized as the training data was
            words = [text.split() for text, _ in chunk]
            return self.tokenizer(words, is_split_into_words=True, **common)
        texts = [text for text, _ in chunk]
        return self.tokenizer(texts, [p for _, p in chunk] if pair else None, **common)

    def _encode_dialogues(
        self, chunk: list[tuple[Any, str | None]], key: tuple[Any, ...], max_length: int
    ) -> dict[str, list[list[int]]]:
        """The flat encoding of each input (a text is a dialogue of one turn), as in training."""
        _, _, max_turns, speakers = key
        turns = [d.turns if isinstance(d, Dialogue) else (d,) for d, _ in chunk]
        names = [d.speakers if isinstance(d, Dialogue) else None for d, _ in chunk]
        if speakers and any(n is None for n in names):
            raise ValueError(
                "a dialogue task trained with speakers needs 'speakers' (one per turn) in "
                "every input"
            )
        given = names if speakers else None
        return encode_dialogues(self.tokenizer, turns, max_length, given, max_turns)

    def _truncated(self, chunk: list[tuple[Any, str | None]], key: tuple[Any, ...]) -> list[bool]:
        """Which inputs of ``chunk`` are longer than ``max_length`` tokens (and get cut; for
        dialogues: or have more than ``max_turns`` turns)."""
        if key[0] == "dialogue":
            _, max_length, max_turns, _ = key
            whole = self._encode_dialogues(chunk, (*key[:2], None, key[3]), 1 << 30)
            turns = [len(d.turns) if isinstance(d, Dialogue) else 1 for d, _ in chunk]
            return [
                len(ids) > max_length or (max_turns is not None and n > max_turns)
                for ids, n in zip(whole["input_ids"], turns, strict=True)
            ]
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
            if task.key[0] == "dialogue":
                continue
            if task.key[1] and any(p is None for _, p in items):
                raise ValueError(f"task {task.name!r} takes text pairs; give every input a pair")
            dialogues = [i for i, (text, _) in enumerate(items) if isinstance(text, Dialogue)]
            if dialogues:
                raise ValueError(
                    f"task {task.name!r} reads texts, not dialogues (input(s) {dialogues[:5]}); "
                    "predict it separately with tasks=[...]"
                )
        groups: dict[tuple[Any, ...], list[_Task]] = {}
        for task in tasks:
            groups.setdefault(task.key, []).append(task)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            for key, members in groups.items():
                enc, cut = self._tokenize(chunk, key), self._truncated(chunk, key)
                batch = {k: v.to(self.device) for k, v in enc.items()}
                names = [task.name for task in members if task.level != "text"]
                outputs = self.model.shared_forward(batch, names) if names else {}
                for task in members:
                    if task.level == "text":  # generated token ids
                        settings = task.spec.get("generation", {})
                        ids = self.model.generate(task.name, batch, **settings).cpu()
                        yield start, task, ids, enc, cut
                        continue
                    yield start, task, outputs[task.name].float().cpu(), enc, cut

    def logits(
        self,
        inputs: Input | Sequence[Input],
        tasks: Sequence[str] | None = None,
        batch_size: int = 32,
    ) -> dict[str, list[Tensor]]:
        """Raw head outputs per task and input (token tasks: ``[tokens, tags]`` per input;
        generation tasks: the generated token ids)."""
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
                Dialogue tasks take ``{"turns": [...], "speakers": [...]}`` dicts (speakers
                when the task was trained with them; a plain text is a dialogue of one turn),
                encoded as in training (:func:`mtlkit.dialogue.encode_dialogues`).
            tasks: Task names to predict (default: all).
            batch_size: Inputs per encoder pass.

        Returns:
            ``{task: [prediction per input]}``: ``{"label", "probabilities"}`` for sequence
            classification, ``{"value"}`` for regression (on the data's scale),
            ``{"labels", "probabilities"}`` for multi-label (labels above the task's
            threshold), ``{"words", "tags"}`` for token classification (whitespace words, each
            tagged from its first sub-token; ``None`` for words cut by truncation),
            ``{"text"}`` for generation (the task's exported decoding settings). An input
            longer than the task's ``max_length`` tokens (a dialogue: or with more turns than
            its ``max_turns``) is cut, and its prediction says so with ``"truncated": True``.
        """
        items = self._items(inputs)
        out: dict[str, list[dict[str, Any]]] = {t.name: [] for t in self._select(tasks)}
        for start, task, logits, enc, cut in self._run(items, self._select(tasks), batch_size):
            for i, row in enumerate(logits):
                if task.level == "text":
                    text = self.tokenizer.decode(row, skip_special_tokens=True)
                    out[task.name].append({"text": text, **({"truncated": True} if cut[i] else {})})
                    continue
                inputs = {}
                if task.level == "token":
                    inputs = {
                        "mask": enc["attention_mask"][i],
                        "word_ids": enc.word_ids(i),
                        "words": items[start + i][0].split(),
                    }
                prediction = self.model.decode(task.name, row, **inputs)
                out[task.name].append({**prediction, "truncated": True} if cut[i] else prediction)
        return out
