"""An encoder-decoder backbone (T5, BART families): its encoder is the shared encoder, its
decoder the generation heads' decoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForSeq2SeqLM, PreTrainedModel

from mtlkit.errors import ConfigError
from mtlkit.model.decoders import TOKEN_KEYS, Seq2SeqHead, Tokens
from mtlkit.model.encoder import HFEncoder
from mtlkit.paths import resolve_path


class Seq2SeqBackbone(HFEncoder):
    """The encoder of a Hugging Face sequence-to-sequence model as the shared encoder.

    Every task reads the seq2seq model's encoder (classification heads pool its token states);
    a generation task's head is the same model's decoder and LM head
    (:meth:`decoder_head`), so the pretrained encoder-decoder pair is kept as trained (T5:
    Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
    Transformer"; BART: Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training").
    The model has one decoder, so one generation task uses it (a second one is a
    ``ConfigError``; give it a ``decoder`` of its own).

    The checkpoint holds the encoder under ``encoder.model.*`` and the decoder under
    ``heads.<task>.*``.

    Args:
        name_or_path: Local folder, ``pkg:<package>/<folder>`` or hub name of a seq2seq model.
        config: Instead, a config dict (with ``model_type``, e.g. ``t5`` or ``bart``) of a
            randomly initialised model.
        trust_remote_code: Allow custom model code from the folder.
        gradient_checkpointing: Trade compute for memory.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        config: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        if (name_or_path is None) == (config is None):
            raise ConfigError("Seq2SeqBackbone needs exactly one of name_or_path or config")
        if name_or_path is not None:
            full = AutoModelForSeq2SeqLM.from_pretrained(
                resolve_path(name_or_path), trust_remote_code=trust_remote_code
            )
        else:
            cfg = dict(config or {})
            model_type = cfg.pop("model_type", None)
            if model_type is None:
                raise ConfigError("Seq2SeqBackbone config needs a 'model_type' key (e.g. 't5')")
            full = AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(model_type, **cfg))
        full.train()
        if gradient_checkpointing:
            full.gradient_checkpointing_enable()
        self.model = full.get_encoder()
        # Not a submodule: its encoder is registered above, its decoder by the generation head.
        object.__setattr__(self, "seq2seq", full)
        self.name_or_path = name_or_path
        self.kept_layers = None
        self._head_built = False

    @property
    def hidden_size(self) -> int:
        return int(self.seq2seq.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.seq2seq.config.vocab_size)

    def decoder_head(self, tokens: Tokens) -> nn.Module:
        """The backbone's decoder and LM head as a generation head; its own special token ids
        (``decoder_start_token_id``, ...) where its config has them, else ``tokens``."""
        if self._head_built:
            raise ConfigError(
                "Seq2SeqBackbone has one decoder; it already serves another generation task"
            )
        self._head_built = True
        return BackboneDecoder(self.seq2seq, tokens)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class BackboneDecoder(Seq2SeqHead):
    """The decoder side of a seq2seq model (decoder stack, LM head and top-level buffers such
    as BART's ``final_logits_bias``) as a generation head; the encoder side is the shared
    :class:`Seq2SeqBackbone`.

    Args:
        seq2seq: The full Hugging Face seq2seq model.
        tokens: Fallback special token ids (used where the model's config has none).
    """

    def __init__(self, seq2seq: PreTrainedModel, tokens: Tokens) -> None:
        super().__init__()
        self.decoder = seq2seq.get_decoder()
        self.lm_head = seq2seq.get_output_embeddings()
        for name, buffer in seq2seq.named_buffers(recurse=False):
            self.register_buffer(name, buffer)
        own = {k: getattr(seq2seq.config, k, None) for k in TOKEN_KEYS}
        self._attach(seq2seq, {k: own[k] if own[k] is not None else tokens[k] for k in TOKEN_KEYS})

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> BackboneDecoder:
        super()._apply(fn, recurse)
        for name in list(self.seq2seq._buffers):  # the model reads the moved buffers
            if name in self._buffers:
                self.seq2seq._buffers[name] = self._buffers[name]
        return self
