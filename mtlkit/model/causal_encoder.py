"""A decoder-only model (GPT-2, Llama, Qwen, ...) as the shared encoder, with its language-model
head kept reachable for generation.

:class:`~mtlkit.model.encoder.HFEncoder` already runs a decoder-only model as an encoder (causal
attention detected, positions by the mask, no cache); classification, regression and token
tasks need nothing more (use pooling ``last``). This subclass loads the model through
``AutoModelForCausalLM`` instead, so that the pretrained LM head (untied in Llama and most Qwen
models) is not dropped, and exposes the whole causal LM for a generation head::

    encoder = CausalLMEncoder("Qwen/Qwen2-0.5B")
    lm = encoder.causal_lm              # the Hugging Face *ForCausalLM: the encoder's modules
    out = lm(input_ids=ids, attention_mask=mask, labels=labels)   # prompt tokens: label -100
    text_ids = lm.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=32)
    logits = encoder.lm_logits(encoder(ids, mask))                # from shared token states

A generation task (``Seq2SeqGeneration(..., decoder_only=True)``) trains on prompt + target
with the loss on target tokens only, through :meth:`CausalLMEncoder.decoder_head`
(:class:`~mtlkit.model.prompt_lm.PromptLMHead`): the whole causal LM's parameters are this
encoder's own (the same tensors), so it trains, saves and moves between devices with the
encoder.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from mtlkit.errors import ConfigError
from mtlkit.model.decoders import Tokens
from mtlkit.model.encoder import HFEncoder
from mtlkit.model.prompt_lm import PromptLMHead


class CausalLMEncoder(HFEncoder):
    """A decoder-only causal language model (Radford et al. 2019, "Language Models are
    Unsupervised Multitask Learners"; Touvron et al. 2023, "LLaMA") whose transformer is the
    shared encoder and whose LM head stays available for generation.

    :attr:`model` is the base model (``GPT2Model``, ``LlamaModel``, ...), as for
    :class:`HFEncoder`, so checkpoints, ``init_from``, export and ``ExportedModel`` see the same
    keys (``encoder.model.*``); the LM head is registered as :attr:`lm_head`
    (``encoder.lm_head.*``; tied to the input embedding where the model ties them, as GPT-2
    does). Export writes the base model only (the heads of the exported tasks read it).

    An untied LM head (Llama) receives gradients only from tasks that use it: training only
    classification tasks on this encoder leaves it unused (use :class:`HFEncoder` there, which
    does not load it; DDP would need ``find_unused_parameters``).

    Args:
        name_or_path: Local folder, ``pkg:<package>/<folder>`` or hub name of a causal LM.
        **kwargs: The other arguments of :class:`HFEncoder` (``config``, ``keep_layers``, ...).

    Raises:
        ConfigError: The model's self-attention is not causal (an encoder such as BERT).
    """

    def __init__(self, name_or_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(name_or_path=name_or_path, **kwargs)
        if not self.is_causal:
            raise ConfigError(
                f"CausalLMEncoder needs a decoder-only model; {type(self.model).__name__} has "
                "bidirectional attention (use HFEncoder)"
            )
        self.lm_head: nn.Module = self.causal_lm.get_output_embeddings()

    def load_model(self, path: str | None, config: Any, trust_remote_code: bool) -> PreTrainedModel:
        """Loads the ``*ForCausalLM`` model and returns its base model (the transformer)."""
        if path is not None:
            lm = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
        else:
            lm = AutoModelForCausalLM.from_config(config)
        if lm.get_output_embeddings() is None or lm.base_model is lm:
            raise ConfigError(f"{type(lm).__name__} has no separate LM head and base model")
        # The whole causal LM, outside the module tree: its modules are this encoder's own
        # (model, lm_head), so registering it too would store every tensor twice.
        object.__setattr__(self, "_causal_lm", lm)
        return lm.base_model

    @property
    def causal_lm(self) -> PreTrainedModel:
        """The Hugging Face causal LM (``generate``, ``labels=`` loss), made of this encoder's
        modules. After ``keep_layers``, it runs the kept layers."""
        return self._causal_lm

    @property
    def lm_head_tied(self) -> bool:
        """Whether the LM head is the input embedding matrix (GPT-2, tied Qwen models)."""
        return self.lm_head.weight is self.model.get_input_embeddings().weight

    def decoder_head(self, tokens: Tokens) -> nn.Module:
        """The default generation head: the causal LM continuing the prompt
        (:class:`~mtlkit.model.prompt_lm.PromptLMHead`; the task needs ``decoder_only: true``)."""
        return PromptLMHead(self, tokens)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Next-token logits ``[batch, length, vocab]`` from token states of :meth:`forward`."""
        return self.lm_head(hidden)
