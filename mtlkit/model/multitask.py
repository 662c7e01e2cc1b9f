"""The multi-task model: a shared encoder, sentence pooling, one head per task, one forward.

A plain ``nn.Module`` that knows nothing of training (no Lightning): the LightningModule
(:class:`~mtlkit.training.module.MultiTaskModule`) trains it; export, ``ExportedModel``, the
distillation teacher and the feature cache run the same object.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.model.causal_encoder import CausalLMEncoder
from mtlkit.model.decoders import CausalLMDecoder
from mtlkit.model.encoder import HFEncoder
from mtlkit.model.outputs import OutputDecoder, output_decoder
from mtlkit.model.pooling import Pooling, check_pooling, pool
from mtlkit.model.seq2seq import Seq2SeqBackbone
from mtlkit.model.source import ModelSource, load_source
from mtlkit.model.weights import InitReport, load_weights

if TYPE_CHECKING:
    from mtlkit.tasks.base import Task

Level = Literal["sequence", "token", "dialogue", "text"]
TaskOutput = dict[str, Tensor]
SubBatches = dict[str, dict[str, Tensor]]


class MultiTaskModel(nn.Module):
    """Hard parameter sharing: one encoder under per-task heads.

    Args:
        encoder: The shared encoder (an :class:`HFEncoder`, or any module called as
            ``encoder(input_ids, attention_mask, token_type_ids[, task=])`` that returns token
            states; ``per_task`` encoders run once per task).
        pooling: Sentence vector of sequence-level heads: ``cls``, ``mean`` or ``last`` (the
            last real token, for decoder-only encoders; ``cls`` is refused for them: their
            first token sees only itself).
        heads: Each task's head (input: the pooled vector, or every token state). A head with
            ``reads_batch = True`` (generation decoders, :mod:`mtlkit.model.decoders`) is called
            as ``head(token_states, sub_batch)`` and has a ``generate`` method.
        levels: Each task's level, ``sequence``, ``token``, ``dialogue`` or ``text``
            (generation; default ``sequence``; a ``dialogue`` sub-batch has one encoder row per
            turn and a ``turn_mask``, and its head is called as ``head(turn_vectors,
            turn_mask)``).
        decoders: Each task's output decoding (default: raw logits).
    """

    def __init__(
        self,
        encoder: nn.Module,
        pooling: Pooling = "mean",
        heads: Mapping[str, nn.Module] | None = None,
        levels: Mapping[str, Level] | None = None,
        decoders: Mapping[str, OutputDecoder] | None = None,
    ) -> None:
        super().__init__()
        check_pooling(pooling)
        if pooling == "cls" and getattr(encoder, "is_causal", False):
            raise ConfigError(
                "pooling 'cls' reads the first token, which in a decoder-only (causal) encoder "
                "sees only itself; use pooling 'last' (or 'mean')"
            )
        self.encoder, self.pooling = encoder, pooling
        self.heads = nn.ModuleDict(dict(heads or {}))
        self.levels: dict[str, Level] = dict(levels or {})
        self.decoders: dict[str, OutputDecoder] = dict(decoders or {})

    # ------------------------------------------------------------ building
    def add_task(self, name: str, level: Level, head: nn.Module | None = None) -> None:
        """Declares a task (its level), with its head once the labels are known."""
        self.levels[name] = level
        if head is not None:
            self.heads[name] = head

    @classmethod
    def from_source(
        cls, source: ModelSource, tasks: Mapping[str, Task] | None = None
    ) -> MultiTaskModel:
        """A trained model (checkpoint or exported folder, read by ``load_source``) in eval mode.

        Args:
            source: The weights and metadata.
            tasks: Build these tasks' heads with the task objects (and check their labels
                against the source's); default: every exported head as one linear layer
                (exported folders only).

        Raises:
            ConfigError: Weights that do not fit the config, a missing head, other labels.
        """
        if source.seq2seq:  # the whole encoder-decoder model of a Seq2SeqBackbone
            encoder: HFEncoder = Seq2SeqBackbone(config=dict(source.encoder_config))
            state = encoder.seq2seq.load_state_dict(source.encoder_state, strict=False)
        else:  # a causal LM's base model here, its LM head below
            causal = source.causal_lm
            encoder = (
                CausalLMEncoder(config=dict(source.encoder_config)) if causal else _encoder(source)
            )
            state = encoder.model.load_state_dict(source.encoder_state, strict=False)
            if causal:
                encoder.lm_head.load_state_dict(source.lm_head)
        unexpected = [k for k in state.unexpected_keys if not k.startswith("pooler.")]
        if state.missing_keys or unexpected:
            what = "teacher " if tasks is not None else ""
            raise ConfigError(
                f"{what}{source.path}: encoder weights do not match its config (missing "
                f"{state.missing_keys[:5]}, unexpected {unexpected[:5]})"
            )
        model = cls(encoder, source.pooling)  # type: ignore[arg-type]
        if source.task_encoder is not None:  # each task's own part, once the base is loaded
            encoder.prepare_tasks(list(tasks) if tasks is not None else list(source.specs))
        if tasks is None:
            for name, spec in source.specs.items():
                head = spec["head"]
                if "decoder" in head:  # a generation task: its exported decoder
                    tokens = spec["head_state"]["tokens"]
                    if name in source.decoders:
                        decoder = CausalLMDecoder(encoder, tokens, source.decoders[name])
                        decoder.load_state_dict(source.heads[name])  # with any projection
                    else:  # the seq2seq backbone's own decoder, or the causal LM's head
                        decoder = encoder.decoder_head(tokens)
                    model.add_task(name, spec["level"], decoder)
                    model.decoders[name] = output_decoder(spec, 1)
                    continue
                linear = nn.Linear(
                    head["in_features"], head["out_features"], bias=bool(head["bias"])
                )
                linear.load_state_dict(
                    {"weight": source.heads[name][head["weight"]]}
                    | ({"bias": source.heads[name][head["bias"]]} if head["bias"] else {})
                )
                model.add_task(name, spec["level"], linear)
                model.decoders[name] = output_decoder(spec, int(head["out_features"]))
        else:
            for name, task in tasks.items():
                model.add_task(name, task.level, _source_head(source, name, task, encoder))
        return model.eval().requires_grad_(False)

    def load_frozen_encoder(self, encoder: nn.Module, pooling: str) -> None:
        """Feature-based training: the heads learn on ``encoder``'s (cached) outputs, so this
        model takes its weights and pooling check, and freezes its encoder; the checkpoint is
        then a working text model. The encoder itself is never run nor trained.

        Raises:
            ConfigError: A per-task encoder, another pooling or another architecture.
        """
        if getattr(self.encoder, "per_task", False):
            raise ConfigError("feature-based training needs a plain encoder in the model")
        if self.pooling != pooling:
            raise ConfigError(
                f"model.pooling is {self.pooling!r} but the features were pooled with "
                f"{pooling!r}; set the same pooling in the model and the data module"
            )
        try:
            self.encoder.load_state_dict(encoder.state_dict())
        except RuntimeError as err:
            raise ConfigError(
                "the model's encoder and data.encoder have different architectures; give the "
                f"model the same encoder as the data module: {str(err).splitlines()[0]}"
            ) from err
        self.encoder.requires_grad_(False)

    def load_weights_from(
        self,
        path: str,
        heads: list[str] | dict[str, str] | None = None,
        label_states: Mapping[str, dict[str, Any]] | None = None,
    ) -> InitReport:
        """``init_from``: the encoder (and ``heads``) of a trained model (a ``.ckpt`` or an
        exported folder) copied into this one; see :func:`mtlkit.model.weights.load_weights`."""
        return load_weights(self, load_source(path), heads, label_states)

    # ------------------------------------------------------------- running
    @property
    def task_names(self) -> list[str]:
        return list(self.levels)

    @staticmethod
    def encoder_rows(sub_batches: SubBatches) -> dict[str, tuple[int, int]]:
        """Each task's rows ``(start, stop)`` of the batch the encoder runs over in one step
        (:meth:`encode` stacks the sub-batches in their order; cached ``features`` skip it)."""
        rows, start = {}, 0
        for name, batch in sub_batches.items():
            if "features" not in batch:
                stop = start + int(batch["input_ids"].shape[0])
                rows[name], start = (start, stop), stop
        return rows

    def encode(self, sub_batches: SubBatches) -> dict[str, Tensor]:
        """Runs the encoder over the sub-batches, once over all of them stacked (padded to the
        widest) or, for ``per_task`` encoders and ``stack_tasks = False``, once per sub-batch;
        returns each task's token states."""
        names = list(sub_batches)
        if getattr(self.encoder, "per_task", False):  # task parameters: one pass per task
            return {
                n: self.encoder(
                    b["input_ids"], b["attention_mask"], b.get("token_type_ids"), task=n
                )
                for n, b in sub_batches.items()
            }
        if not getattr(self.encoder, "stack_tasks", True):  # each sub-batch at its own width
            return {
                n: self.encoder(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
                for n, b in sub_batches.items()
            }
        width = max(b["input_ids"].shape[1] for b in sub_batches.values())

        def cat(key: str) -> Tensor | None:
            if not all(key in sub_batches[n] for n in names):
                return None
            parts = [sub_batches[n][key] for n in names]
            return torch.cat([nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])

        hidden = self.encoder(cat("input_ids"), cat("attention_mask"), cat("token_type_ids"))
        sizes = [sub_batches[n]["input_ids"].shape[0] for n in names]
        return {
            n: h[:, : sub_batches[n]["input_ids"].shape[1]]
            for n, h in zip(names, hidden.split(sizes), strict=True)
        }

    def head_inputs(self, sub_batches: SubBatches) -> dict[str, Tensor]:
        """Each task's head input: the pooled vector, the token states (token and text tasks),
        or the pooled turn vectors ``[dialogues, turns, hidden]`` (dialogue tasks; zero past each
        dialogue's last turn).

        Sub-batches with cached ``features`` (feature-based transfer) skip the encoder.
        """
        cached = {n: b["features"] for n, b in sub_batches.items() if "features" in b}
        to_encode = {n: b for n, b in sub_batches.items() if n not in cached}
        hidden = self.encode(to_encode) if to_encode else {}
        out = {}
        for name, batch in sub_batches.items():
            if name in cached:
                out[name] = cached[name]
            elif self.levels.get(name, "sequence") in ("token", "text"):
                out[name] = hidden[name]
            elif self.levels.get(name) == "dialogue":
                turns = pool(hidden[name], batch["attention_mask"], self.pooling)
                out[name] = scatter_turns(turns, batch["turn_mask"])
            else:
                out[name] = pool(hidden[name], batch["attention_mask"], self.pooling)
        return out

    def forward(self, sub_batches: SubBatches) -> dict[str, TaskOutput]:
        """Head outputs (``logits``) and head inputs (``features``) for every task present."""
        return {
            name: {"features": features, "logits": self._head(name, features, sub_batches[name])}
            for name, features in self.head_inputs(sub_batches).items()
        }

    def _head(self, name: str, features: Tensor, batch: dict[str, Tensor]) -> Tensor:
        head = self.heads[name]
        if getattr(head, "reads_batch", False):
            return head(features, batch)
        if self.levels.get(name) == "dialogue":
            return head(features, batch["turn_mask"])
        return head(features)

    def generator(
        self, name: str, features: Tensor, batch: dict[str, Tensor]
    ) -> Callable[..., Tensor]:
        """``generate(**settings)`` of task ``name``'s head on one sub-batch's token states
        (``features`` of :meth:`forward`), for heads that generate; a decoder-only LM head
        (``generates_from_prompts``) continues the sub-batch's ``prompt_ids`` / ``prompt_mask``
        (or, in inference, its ``input_ids``) instead."""
        head = self.heads[name]
        if not hasattr(head, "generate"):
            return _cannot_generate(name)
        if getattr(head, "generates_from_prompts", False):  # a decoder-only LM continues them
            prompts = batch.get("prompt_ids", batch["input_ids"])
            mask = batch.get("prompt_mask", batch["attention_mask"])
            return partial(head.generate, prompts, mask, task=name)
        return partial(head.generate, features, batch["attention_mask"])

    def generate(self, name: str, batch: dict[str, Tensor], **settings: Any) -> Tensor:
        """Generated token ids of task ``name`` for one (source) sub-batch."""
        if getattr(self.heads[name], "generates_from_prompts", False):
            return self.generator(name, batch["input_ids"], batch)(**settings)
        hidden = self.encode({name: batch})[name]
        return self.generator(name, hidden, batch)(**settings)

    def shared_forward(self, batch: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
        """The logits of several tasks that read the same inputs: one encoder pass, one pooling
        (one pass per task for per-task encoders)."""
        if getattr(self.encoder, "per_task", False) and len(names) > 1:
            return {k: v for n in names for k, v in self.shared_forward(batch, [n]).items()}
        hidden = self.encode({names[0]: batch})[names[0]]
        pooled = None
        out = {}
        for name in names:
            if self.levels.get(name, "sequence") == "token":
                out[name] = self.heads[name](hidden)
                continue
            if pooled is None:
                pooled = pool(hidden, batch["attention_mask"], self.pooling)
            out[name] = self.heads[name](pooled)
        return out

    def decode(self, name: str, logits: Tensor, **inputs: Any) -> dict[str, Any]:
        """One input's prediction for task ``name`` (see :class:`OutputDecoder`)."""
        return self.decoders[name].decode(logits, **inputs)


def scatter_turns(vectors: Tensor, turn_mask: Tensor) -> Tensor:
    """Turn vectors in encoder-row order (dialogue by dialogue, turns in order) laid out as
    ``[dialogues, turns, hidden]``, zeros where ``turn_mask`` is false."""
    out = vectors.new_zeros(*turn_mask.shape, vectors.shape[-1])
    out[turn_mask] = vectors
    return out


def _encoder(source: ModelSource) -> HFEncoder:
    """The encoder of a source: a plain one, or the per-task encoder class its export names
    (torch-only classes such as :mod:`mtlkit.model.task_encoders`), reading the task parts."""
    spec = source.task_encoder
    if spec is None:
        return HFEncoder(config=dict(source.encoder_config))
    module_name, _, name = str(spec["class_path"]).rpartition(".")
    if not module_name.startswith("mtlkit.model."):  # only mtlkit's own (torch-only) encoders
        raise ConfigError(f"{source.path}: task_encoder {spec['class_path']!r} is not mtlkit's")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, HFEncoder) and cls.per_task):
        raise ConfigError(
            f"{source.path}: task_encoder {spec['class_path']!r} is no per-task encoder"
        )
    folder = Path(spec["folder"])
    args = dict(spec.get("init_args", {}))
    args |= {k: str(folder / v) for k, v in spec.get("paths", {}).items()}
    return cls(config=dict(source.encoder_config), adapters_from=str(folder), **args)


def _cannot_generate(name: str) -> Callable[..., Tensor]:
    def generate(**_: Any) -> Tensor:
        raise ConfigError(f"task {name!r}: its head does not generate text")

    return generate


def _source_head(source: ModelSource, name: str, task: Task, encoder: HFEncoder) -> nn.Module:
    """``task``'s head (built by the task) with the source's weights; labels checked."""
    if name not in source.heads:
        raise ConfigError(
            f"teacher {source.path} has no head for task {name!r}; "
            f"it has heads for {sorted(source.heads)}"
        )
    saved, own = source.tasks.get(name, {}), task.label_state()
    differ = {
        k: (own[k], saved[k])
        for k in own.keys() & saved.keys()
        if own[k] is not None and saved[k] is not None and own[k] != saved[k]
    }
    if differ:
        detail = ", ".join(f"{k}: student {s!r}, teacher {t!r}" for k, (s, t) in differ.items())
        raise ConfigError(
            f"task {name!r}: the teacher's labels differ from the student's ({detail})"
        )
    head = task.build_head_on(encoder, 0.0)
    try:
        head.load_state_dict(source.heads[name])
    except RuntimeError as err:
        raise ConfigError(
            f"task {name!r}: the teacher's head does not fit a {type(task).__name__} head "
            f"of {encoder.hidden_size} inputs: {err}"
        ) from err
    return head
