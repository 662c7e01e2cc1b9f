"""Generation heads: a decoder that reads the shared encoder's token states and writes text.

A generation head reads the whole sub-batch (``reads_batch``): the encoder states, the source
attention mask and the teacher-forced targets (``labels``). Training runs it teacher-forced;
evaluation and inference call :meth:`Seq2SeqHead.generate`, which is transformers' own
``generate`` (greedy, beam search, n-gram blocking, length penalty, key/value cache) on a
Hugging Face encoder-decoder model whose encoder outputs are given, so the shared encoder runs
once per batch and the decoding loop is transformers'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    EncoderDecoderModel,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutput

from mtlkit.errors import ConfigError
from mtlkit.paths import resolve_path

#: The special token ids a decoder needs: ``decoder_start_token_id``, ``eos_token_id``,
#: ``pad_token_id`` (the generation task reads them from the tokenizer).
Tokens = dict[str, int]
TOKEN_KEYS = ("decoder_start_token_id", "eos_token_id", "pad_token_id")
IGNORE_INDEX = -100


def shift_right(labels: Tensor, start: int, pad: int) -> Tensor:
    """Teacher-forced decoder inputs: ``start`` followed by the targets, padding for ignored
    positions (``-100``)."""
    inputs = labels.new_full(labels.shape, pad)
    inputs[:, 1:] = labels[:, :-1]
    inputs[:, 0] = start
    return inputs.masked_fill(inputs == IGNORE_INDEX, pad)


class Seq2SeqHead(nn.Module):
    """Base of generation heads: a Hugging Face encoder-decoder model (``seq2seq``, not a
    submodule: its encoder is the shared encoder, registered elsewhere) whose decoder side is
    this head's parameters.

    Subclasses register the decoder's modules and call :meth:`_attach` with the wrapper model.
    """

    #: The model calls ``head(token_states, sub_batch)`` instead of ``head(features)``.
    reads_batch = True
    seq2seq: PreTrainedModel
    tokens: Tokens

    def _attach(self, seq2seq: PreTrainedModel, tokens: Tokens) -> None:
        # Not a submodule: its encoder is the shared encoder (saved once, under ``encoder.``).
        object.__setattr__(self, "seq2seq", seq2seq)
        self.tokens = {k: int(tokens[k]) for k in TOKEN_KEYS}
        for config in (seq2seq.config, seq2seq.generation_config):
            for key, value in self.tokens.items():
                setattr(config, key, value)

    @property
    def max_positions(self) -> int | None:
        """The longest decoder input the position embeddings take (``None``: no limit known)."""
        config = getattr(self.seq2seq.config, "decoder", self.seq2seq.config)
        limit = getattr(config, "max_position_embeddings", None)
        return limit if isinstance(limit, int) and limit > 0 else None

    def forward(self, hidden: Tensor, batch: dict[str, Any]) -> Tensor:
        """Teacher-forced next-token logits ``[batch, target length, vocab]``.

        Args:
            hidden: The encoder's token states of the sub-batch.
            batch: The sub-batch (``attention_mask`` of the source, ``labels``: target ids,
                ``-100`` where padded).
        """
        labels = batch["labels"]
        decoder_inputs = shift_right(
            labels, self.tokens["decoder_start_token_id"], self.tokens["pad_token_id"]
        )
        out = self.seq2seq(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_inputs,
            decoder_attention_mask=(labels != IGNORE_INDEX).long(),
            use_cache=False,
        )
        return out.logits

    @torch.no_grad()
    def generate(self, hidden: Tensor, attention_mask: Tensor, **settings: Any) -> Tensor:
        """Generated target ids ``[batch, length]`` (without the start token; padded with the
        pad id after the end token), by transformers' ``generate``.

        Args:
            hidden: The encoder's token states.
            attention_mask: The source mask.
            settings: ``generate`` arguments (``num_beams``, ``max_new_tokens``, ...).
        """
        ids = self.seq2seq.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=attention_mask,
            **self.tokens,
            **settings,
        )
        return ids[:, 1:]


class CausalLMDecoder(Seq2SeqHead):
    """A Hugging Face causal LM with cross-attention (``is_decoder=True,
    add_cross_attention=True``) as the decoder on the shared encoder, e.g. one read back from
    an export (``decoders/<task>/``).

    Args:
        encoder: The shared encoder (an ``HFEncoder``: its Hugging Face model is ``.model``).
        tokens: Start, end and padding token ids (:data:`TOKEN_KEYS`).
        decoder: The decoder model.
    """

    def __init__(self, encoder: nn.Module, tokens: Tokens, decoder: PreTrainedModel) -> None:
        super().__init__()
        if not getattr(decoder.config, "add_cross_attention", False):
            raise ConfigError(
                f"{type(decoder).__name__} has no cross-attention: build it with "
                "is_decoder=True, add_cross_attention=True"
            )
        self.decoder = decoder
        seq2seq = EncoderDecoderModel(encoder=encoder.model, decoder=decoder)
        if getattr(seq2seq, "enc_to_dec_proj", None) is not None:  # other hidden sizes
            self.enc_to_dec_proj = seq2seq.enc_to_dec_proj
        self._attach(seq2seq, tokens)

    def save_decoder(self, folder: str | Path) -> None:
        """Writes the decoder as a Hugging Face folder (``save_pretrained``)."""
        self.decoder.save_pretrained(folder)


class WarmStartDecoder(CausalLMDecoder):
    """A Transformer decoder with cross-attention on the shared encoder, warm-started from the
    encoder's own weights (Rothe, Narayan & Severyn 2020, "Leveraging Pre-trained Checkpoints for
    Sequence Generation Tasks", BERT2BERT): the encoder's architecture as a causal decoder
    (``is_decoder=True, add_cross_attention=True``, e.g. ``BertLMHeadModel``), its embeddings
    and layers copied from the encoder, cross-attention and the LM head's transform freshly
    initialised, the output projection tied to the (copied) word embeddings.

    Args:
        encoder: The shared encoder (an ``HFEncoder``: its Hugging Face model is ``.model``).
        tokens: Start, end and padding token ids (:data:`TOKEN_KEYS`).
        tie_encoder: Share the decoder's embeddings and self-attention/feed-forward weights
            with the encoder instead of copying them (Rothe et al.'s BERTShare); only the
            cross-attention and the LM head are the decoder's own.
        name_or_path: Instead of the encoder's weights, a causal LM folder (or hub name) whose
            config gets cross-attention added.
        config: Instead, a config dict (with ``model_type``) of a randomly initialised decoder.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokens: Tokens,
        tie_encoder: bool = False,
        name_or_path: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        if name_or_path is not None and config is not None:
            raise ConfigError("WarmStartDecoder takes name_or_path or config, not both")
        if tie_encoder and (name_or_path is not None or config is not None):
            raise ConfigError("WarmStartDecoder: tie_encoder shares the encoder's own weights")
        hf_encoder = encoder.model
        extra = {"is_decoder": True, "add_cross_attention": True}
        if name_or_path is not None:
            decoder = AutoModelForCausalLM.from_pretrained(resolve_path(name_or_path), **extra)
        else:
            cfg = dict(config) if config is not None else hf_encoder.config.to_dict()
            model_type = cfg.pop("model_type", None)
            if model_type is None:
                raise ConfigError("WarmStartDecoder config needs a 'model_type' key")
            for key in ("architectures", "transformers_version", "_name_or_path"):
                cfg.pop(key, None)
            decoder = AutoModelForCausalLM.from_config(
                AutoConfig.for_model(model_type, **{**cfg, **extra})
            )
            if config is None:
                _warm_start(decoder, hf_encoder, tie_encoder)
        super().__init__(encoder, tokens, decoder.train())


def _warm_start(decoder: PreTrainedModel, hf_encoder: nn.Module, tie: bool) -> None:
    """Copies (or, with ``tie``, shares) the encoder's weights into the decoder."""
    base = decoder.base_model
    state = base.load_state_dict(hf_encoder.state_dict(), strict=False)
    # Only cross-attention is new; anything else missing means another architecture.
    missing = [k for k in state.missing_keys if "crossattention" not in k]
    if missing or state.unexpected_keys:
        raise ConfigError(
            f"cannot warm-start a decoder from {type(hf_encoder).__name__}: missing "
            f"{missing[:5]}, unexpected {state.unexpected_keys[:5]}"
        )
    if tie:
        _share_weights(hf_encoder, base)
        output = decoder.get_output_embeddings()
        if output is not None:  # the LM head reads the (now shared) word embeddings
            output.weight = decoder.get_input_embeddings().weight


def _share_weights(encoder: nn.Module, decoder: nn.Module) -> None:
    """Points the decoder's embeddings and each layer's self-attention and feed-forward blocks
    at the encoder's modules (same architecture, checked by the warm start)."""
    decoder.set_input_embeddings(encoder.get_input_embeddings())
    if hasattr(decoder, "embeddings") and hasattr(encoder, "embeddings"):
        decoder.embeddings = encoder.embeddings
    enc_layers = _layers(encoder)
    for enc_layer, dec_layer in zip(enc_layers, _layers(decoder), strict=True):
        for name, child in enc_layer.named_children():
            if name != "crossattention" and hasattr(dec_layer, name):
                setattr(dec_layer, name, child)


def _layers(model: nn.Module) -> nn.ModuleList:
    n = int(model.config.num_hidden_layers)
    for module in model.modules():
        for child in module.children():
            if isinstance(child, nn.ModuleList) and len(child) == n:
                return child
    raise ConfigError(f"cannot find the {n} layers of {type(model).__name__}")
