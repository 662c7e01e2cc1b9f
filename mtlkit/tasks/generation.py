"""Text-to-text generation: a source text (or text pair) in, a target text out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import PreTrainedTokenizerBase

from mtlkit.dialogue import encode_dialogues
from mtlkit.errors import ConfigError, DataError
from mtlkit.metrics.generation import generation_metrics
from mtlkit.sources import DataSource
from mtlkit.tasks._checks import check_text_column
from mtlkit.tasks._dialogue import check_turn_lists
from mtlkit.tasks.base import IGNORE_INDEX, Task, _pad, text_inputs

#: Builds a generation head from the shared encoder and the special token ids
#: (``decoder_start_token_id``, ``eos_token_id``, ``pad_token_id``), e.g.
#: ``mtlkit.model.decoders.WarmStartDecoder``.
DecoderBuilder = Callable[[nn.Module, dict[str, int]], nn.Module]
METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "chrf", "exact_match")


class Seq2SeqGeneration(Task):
    """Sequence-to-sequence generation (summaries, headlines, replies, translation).

    The shared encoder reads the source; a decoder head (cross-attending to the encoder's token
    states) is trained teacher-forced with token cross-entropy, the mean over target tokens
    (``loss_count`` = target tokens). Evaluation generates with transformers' ``generate`` and
    scores the decoded text against the raw target text: corpus ``bleu`` (sacreBLEU's 13a
    tokenization), ``rouge1``/``rouge2``/``rougeL`` F-measures, ``chrf`` and ``exact_match``
    (:mod:`mtlkit.metrics.generation`), all in ``[0, 1]``.

    The default primary metric is ROUGE-L: an average of per-example scores, so small or early
    validation sets give informative values where corpus BLEU, needing matching 4-grams, is
    often 0.

    Targets are tokenized with the tokenizer's special tokens; a leading classification token
    that is not also the sequence-start token (BERT's ``[CLS]``) is dropped, since the decoder
    starts from it. The end token is ``[SEP]`` (BERT-style tokenizers) or ``eos``.

    Args:
        name: Task name.
        source: Data source.
        text_column: Column of the source text.
        target_column: Column of the target text.
        text_pair_column: Column of a second source text (encoded as a text pair).
        decoder: Builds the generation head from the encoder and the special token ids, e.g.
            ``mtlkit.model.decoders.WarmStartDecoder`` (with ``tie_encoder``, ``name_or_path``
            or ``config``); default: the encoder's own ``decoder_head`` (a warm-started decoder
            for an ``HFEncoder``, the backbone's decoder for a ``Seq2SeqBackbone``).
        max_length: Truncation length of the source in tokens.
        max_target_length: Truncation length of the target in tokens (the end token included).
        loss_weight: Static multiplier of this task's loss.
        label_smoothing: Cross-entropy label smoothing over the vocabulary.
        num_beams: Beam width at evaluation (1: greedy).
        max_new_tokens: Most tokens generated (default: ``max_target_length``).
        length_penalty: Beam search's length exponent (``> 1`` favours longer outputs).
        no_repeat_ngram_size: Forbid repeating n-grams of this size (0: off).
        do_sample: Sample instead of searching (off: deterministic evaluation).
        primary_metric: One of ``bleu``, ``rouge1``, ``rouge2``, ``rougeL``, ``chrf``,
            ``exact_match``.
        bleu_tokenize: sacreBLEU tokenizer of the BLEU score (``13a``; ``zh`` for Chinese).
        dialogue: The source column holds a dialogue context (a list of turns, oldest first),
            encoded flat as :class:`~mtlkit.tasks.DialogueClassification` does
            (:func:`mtlkit.dialogue.encode_dialogues`: turns joined with separators, the oldest
            dropped first when longer than ``max_length``, so the latest turns survive).
        speakers_column: With ``dialogue``: a column of one speaker name per turn.
        max_turns: With ``dialogue``: keep only the latest ``max_turns`` turns.
        decoder_only: The shared encoder is a decoder-only causal LM
            (:class:`~mtlkit.model.CausalLMEncoder`; GPT-2, Llama, Qwen): each example is one
            sequence, the source (the prompt, with the tokenizer's special tokens, truncated to
            ``max_length``) then the target (without special tokens, truncated to
            ``max_target_length - 1``, then the end token). The labels are the next tokens
            (shifted by one), ``-100`` over the prompt and padding, so the loss is on target
            tokens only; the sub-batch also holds the prompts (``prompt_ids``, left-padded
            ``prompt_mask``) that evaluation continues with the causal LM's ``generate``
            (:class:`~mtlkit.model.prompt_lm.PromptLMHead`). The prompt, the target and the
            generated tokens must fit the encoder's positions.

    Decoder-only generation follows Radford et al. 2019, "Language Models are Unsupervised
    Multitask Learners" (tasks as continuation of a prompt).
    """

    level = "text"

    def __init__(
        self,
        name: str,
        source: DataSource,
        text_column: str = "text",
        target_column: str = "target",
        text_pair_column: str | None = None,
        decoder: DecoderBuilder | None = None,
        max_length: int = 128,
        max_target_length: int = 64,
        loss_weight: float = 1.0,
        label_smoothing: float = 0.0,
        num_beams: int = 1,
        max_new_tokens: int | None = None,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        do_sample: bool = False,
        primary_metric: str = "rougeL",
        bleu_tokenize: str = "13a",
        dialogue: bool = False,
        speakers_column: str | None = None,
        max_turns: int | None = None,
        decoder_only: bool = False,
    ) -> None:
        super().__init__(
            name, source, text_column, target_column, max_length, loss_weight, text_pair_column
        )
        if primary_metric not in METRICS:
            raise ConfigError(
                f"task {name!r}: primary_metric must be one of {list(METRICS)}, got "
                f"{primary_metric!r}"
            )
        for key, value, low in (
            ("max_target_length", max_target_length, 2),
            ("num_beams", num_beams, 1),
            ("max_new_tokens", max_new_tokens or 1, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"task {name!r}: {key} must be an integer >= {low}, got {value!r}"
                )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"task {name!r}: label_smoothing must be in [0, 1)")
        if (speakers_column is not None or max_turns is not None) and not dialogue:
            raise ConfigError(
                f"task {name!r}: speakers_column and max_turns apply to a dialogue source; set "
                "dialogue: true"
            )
        if dialogue and text_pair_column is not None:
            raise ConfigError(f"task {name!r}: a dialogue source has no text_pair_column")
        if max_turns is not None and (isinstance(max_turns, bool) or max_turns < 1):
            raise ConfigError(f"task {name!r}: max_turns must be >= 1, got {max_turns!r}")
        self.dialogue, self.speakers_column, self.max_turns = dialogue, speakers_column, max_turns
        self.decoder_only = bool(decoder_only)
        self.target_column = target_column
        self.decoder = decoder
        self.max_target_length = max_target_length
        self.label_smoothing = label_smoothing
        self.primary_metric = primary_metric
        self.bleu_tokenize = bleu_tokenize
        self.generation = {
            "num_beams": num_beams,
            "max_new_tokens": max_new_tokens or max_target_length,
            "length_penalty": length_penalty,
            "no_repeat_ngram_size": no_repeat_ngram_size,
            "do_sample": do_sample,
        }
        self.tokens: dict[str, int] | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None

    # ----------------------------------------------------------------- data
    def bind_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.tokens = special_tokens(tokenizer, self.name)

    def text_columns(self) -> list[str]:
        if not self.dialogue:
            return super().text_columns()
        return [self.text_column, *([self.speakers_column] if self.speakers_column else [])]

    def check_rows(self, split: str, ds: Dataset) -> None:
        if self.dialogue:
            check_turn_lists(self, split, ds, self.text_column, self.speakers_column)
        else:
            super().check_rows(split, ds)  # the source text(s)
        check_text_column(self, split, ds, self.target_column)

    def prepare(self, data: DatasetDict) -> DatasetDict:
        return data

    def tokenize(self, batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase) -> dict:
        if self.dialogue:
            speakers = batch[self.speakers_column] if self.speakers_column else None
            out = encode_dialogues(
                tokenizer, batch[self.text_column], self.max_length, speakers, self.max_turns
            )
        else:
            out = text_inputs(self, batch, tokenizer)
        targets = [str(t) for t in batch[self.target_column]]
        if self.decoder_only:
            return self._prompt_then_target(out, targets, tokenizer)
        drop = _drops_leading_cls(tokenizer)
        ids = tokenizer(targets, truncation=True, max_length=self.max_target_length + drop)
        out["labels"] = [row[drop:] for row in ids["input_ids"]]
        out["target_text"] = targets
        return out

    def _prompt_then_target(
        self, prompts: dict[str, Any], targets: list[str], tokenizer: PreTrainedTokenizerBase
    ) -> dict[str, Any]:
        """Decoder-only rows: ``input_ids`` = prompt + target without its last token,
        ``labels`` = the next token at each position (``-100`` over the prompt but its last
        token, which predicts the first target token), ``prompt_ids`` = the prompt."""
        end = special_tokens(tokenizer, self.name)["eos_token_id"]
        ids = tokenizer(
            targets,
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_target_length - 1,
        )["input_ids"]
        out: dict[str, Any] = {"input_ids": [], "attention_mask": [], "labels": []}
        for prompt, target in zip(prompts["input_ids"], ids, strict=True):
            target = [*target, end]
            out["input_ids"].append([*prompt, *target[:-1]])
            out["attention_mask"].append([1] * (len(prompt) + len(target) - 1))
            out["labels"].append([IGNORE_INDEX] * (len(prompt) - 1) + target)
        out["prompt_ids"] = list(prompts["input_ids"])
        out["target_text"] = targets
        return out

    def fingerprint(self) -> str:
        dialogue = (self.dialogue, self.speakers_column, self.max_turns)
        target = (self.target_column, self.max_target_length, self.decoder_only)
        return repr((super().fingerprint(), *target, dialogue))

    def input_spec(self) -> dict[str, Any]:
        """A dialogue source: how an exported model encodes it (see :mod:`mtlkit.dialogue`)."""
        if not self.dialogue:
            return {}
        speakers = self.speakers_column is not None
        return {"type": "dialogue", "encoding": "flat", "max_turns": self.max_turns} | {
            "speakers": speakers
        }

    def collate(self, rows: dict[str, list[Any]], pad_token_id: int) -> dict[str, Any]:
        out: dict[str, Any] = super().collate(rows, pad_token_id)
        if "target_text" in rows:
            out["target_text"] = [str(t) for t in rows["target_text"]]
        if "prompt_ids" in rows:  # decoder-only: the prompts, left-padded for generate
            prompts = rows["prompt_ids"]
            width = max(len(p) for p in prompts)
            out["prompt_ids"] = _pad(
                [[pad_token_id] * (width - len(p)) + list(p) for p in prompts], width, pad_token_id
            )
            out["prompt_mask"] = _pad(
                [[0] * (width - len(p)) + [1] * len(p) for p in prompts], width, 0
            )
        return out

    def collate_labels(self, labels: list[Any], width: int) -> Tensor:
        """Target ids padded to the longest target with ``-100`` (ignored by the loss)."""
        return _pad(labels, max(len(x) for x in labels), IGNORE_INDEX)

    # ---------------------------------------------------------------- model
    @property
    def is_ready(self) -> bool:
        """The special token ids are known (from the tokenizer, or a checkpoint)."""
        return self.tokens is not None

    def build_head(self, hidden_size: int, dropout: float) -> nn.Module:
        raise ConfigError(
            f"task {self.name!r}: a generation head is built from the encoder (build_head_on)"
        )

    def build_head_on(self, encoder: nn.Module, dropout: float) -> nn.Module:
        if self.tokens is None:
            raise ConfigError(f"task {self.name!r}: special token ids unknown; set up the data")
        if self.decoder_only and (self.decoder is not None or not hasattr(encoder, "lm_logits")):
            raise ConfigError(
                f"task {self.name!r}: decoder_only: true continues prompts with the encoder's own "
                "LM head: it needs a decoder-only causal LM encoder (mtlkit.model.CausalLMEncoder)"
                f" and no decoder; got {type(encoder).__name__}"
                + (f" and decoder {self.decoder!r}" if self.decoder is not None else "")
            )
        if self.decoder is not None:
            head = self.decoder(encoder, dict(self.tokens))
        elif hasattr(encoder, "decoder_head"):
            head = encoder.decoder_head(dict(self.tokens))
        else:
            raise ConfigError(
                f"task {self.name!r}: {type(encoder).__name__} has no default decoder; give the "
                "task a decoder (e.g. mtlkit.model.decoders.WarmStartDecoder)"
            )
        if getattr(head, "generates_from_prompts", False) and not self.decoder_only:
            raise ConfigError(
                f"task {self.name!r}: {type(encoder).__name__} is a decoder-only causal LM whose "
                "head continues prompts; set decoder_only: true"
            )
        limit = getattr(head, "max_positions", None)
        if self.decoder_only:  # prompt, then the target or the generated tokens
            longest = self.max_length + max(
                self.max_target_length - 1, self.generation["max_new_tokens"]
            )
            if limit is not None and longest > limit:
                raise ConfigError(
                    f"task {self.name!r}: max_length + max_target_length / max_new_tokens allow "
                    f"{longest} positions (prompt then target) but the encoder has {limit}"
                )
            return head
        longest = max(self.max_target_length, self.generation["max_new_tokens"]) + 1
        if limit is not None and longest > limit:  # the start token comes first
            raise ConfigError(
                f"task {self.name!r}: max_target_length / max_new_tokens allow {longest} decoder "
                f"positions (with the start token) but the decoder has {limit}"
            )
        return head

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Token cross-entropy, mean over the target tokens (padding ignored)."""
        return F.cross_entropy(
            logits.float().flatten(0, 1),
            labels.flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )

    def loss_count(self, labels: Tensor) -> int:
        return int((labels != IGNORE_INDEX).sum())

    def build_metrics(self) -> MetricCollection:
        return generation_metrics(self.bleu_tokenize)

    def eval_metric_inputs(
        self, logits: Tensor, batch: dict[str, Any], generate: Callable[..., Tensor]
    ) -> tuple[list[str], list[str]]:
        """Generated texts and the raw target texts."""
        return self.decode(generate(**self.generation)), list(batch["target_text"])

    def decode(self, ids: Tensor) -> list[str]:
        """Generated ids as text (special tokens dropped)."""
        if self.tokenizer is None:
            raise ConfigError(f"task {self.name!r}: no tokenizer to decode with; set up the data")
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def output_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": "text", "generation": dict(self.generation)}
        return spec | ({"decoder_only": True} if self.decoder_only else {})

    def label_state(self) -> dict[str, Any]:
        return {"tokens": dict(self.tokens) if self.tokens is not None else None}

    def load_label_state(self, state: dict[str, Any]) -> None:
        """Restores the decoder's special token ids.

        Raises:
            DataError: They differ from those of the tokenizer already bound (the run's data
                tokenizer is not the one the checkpoint was trained with).
        """
        if state.get("tokens") is None:
            return
        saved = {k: int(v) for k, v in state["tokens"].items()}
        if self.tokens is not None and self.tokens != saved:
            raise DataError(
                f"task {self.name!r}: the checkpoint's decoder token ids {saved} differ from the "
                f"tokenizer's {self.tokens}; use the tokenizer the checkpoint was trained with"
            )
        self.tokens = saved


def _drops_leading_cls(tokenizer: PreTrainedTokenizerBase) -> int:
    """1 when the tokenizer starts texts with a classification token that is not a sequence
    start (BERT's ``[CLS]``): the decoder starts from it, so it is no target."""
    cls, bos = tokenizer.cls_token_id, tokenizer.bos_token_id
    return int(cls is not None and cls != bos)


def special_tokens(tokenizer: PreTrainedTokenizerBase, task: str) -> dict[str, int]:
    """Start, end and padding ids of a decoder trained with ``tokenizer``: BERT-style
    ``[CLS]``/``[SEP]``/``[PAD]``, else ``bos`` (or ``pad``, T5's start)/``eos``/``pad``."""
    pad = tokenizer.pad_token_id
    if _drops_leading_cls(tokenizer):
        start, end = tokenizer.cls_token_id, tokenizer.sep_token_id
    else:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad
        end = (
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        )
    if start is None or end is None or pad is None:
        raise ConfigError(
            f"task {task!r}: the tokenizer lacks a start ({start}), end ({end}) or padding "
            f"({pad}) token, which a decoder needs"
        )
    return {
        "decoder_start_token_id": int(start),
        "eos_token_id": int(end),
        "pad_token_id": int(pad),
    }
