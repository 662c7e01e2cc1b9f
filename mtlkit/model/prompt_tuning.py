"""Per-task prompt tuning through peft: a trained soft prompt per task before a frozen encoder."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.model.adapters import AdapterEncoder


class PromptTuningEncoder(AdapterEncoder):
    """Frozen pretrained encoder plus a soft prompt per task (Lester et al. 2021, "The Power of
    Scale for Parameter-Efficient Prompt Tuning"), built by peft.

    Each task's ``num_virtual_tokens`` trained embeddings are put before the sub-batch's token
    embeddings (attention mask 1 and token type 0 for them), and their output states are dropped:
    the returned states align with ``input_ids`` again, so token-level labels and the sentence
    pooling (over the real tokens, by the sub-batch's own mask) work unchanged, while every real
    token has attended to the prompt. The concatenation is done here rather than in peft's
    ``PeftModelForFeatureExtraction.forward``, which drops ``token_type_ids`` (sentence pairs).

    Prefix tuning (key/value prefixes in every layer) is
    :class:`~mtlkit.model.prefix_tuning.PrefixTuningEncoder`.

    Args:
        name_or_path: See :class:`HFEncoder`.
        num_virtual_tokens: Length of each task's soft prompt.
        init: ``sample_vocab`` starts each prompt from embeddings of random vocabulary tokens,
            ``random`` from a standard normal.
        adapters_from: A folder written by :meth:`save_adapters`; each task's prompt is loaded
            from it when created.
        **kwargs: The other arguments of :class:`HFEncoder` (``config``, ``keep_layers``, ...).
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        num_virtual_tokens: int = 20,
        init: Literal["sample_vocab", "random"] = "sample_vocab",
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        if num_virtual_tokens < 1:
            raise ConfigError(f"num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
        if init not in ("sample_vocab", "random"):
            raise ConfigError(f"init must be 'sample_vocab' or 'random', got {init!r}")
        make_config = partial(
            PromptTuningConfig,
            task_type=TaskType.FEATURE_EXTRACTION,
            num_virtual_tokens=num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit[init.upper()],
        )
        super().__init__(make_config, adapters_from, name_or_path=name_or_path, **kwargs)
        self.num_virtual_tokens = num_virtual_tokens

    def add_adapters(self, task_names: list[str]) -> list[str]:
        """Adds a soft prompt for each new task."""
        new = super().add_adapters(task_names)
        assert self.adapters.peft_model is not None
        # The prompts are the only new parameters: registered here, saved with the model.
        self.prompts = self.adapters.peft_model.prompt_encoder
        return new

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        """Token states of a sub-batch after ``task``'s prompt (none: the frozen model alone)."""
        if task is None:
            return super().forward(input_ids, attention_mask, token_type_ids)
        self.adapters.activate(task)
        assert self.adapters.peft_model is not None
        n, (batch, length) = self.num_virtual_tokens, input_ids.shape
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and n + length > limit:
            raise ConfigError(
                f"task {task!r}: {length} tokens + {n} virtual tokens exceed the encoder's "
                f"{limit} positions; lower the task's max_length"
            )
        embeds = self.model.get_input_embeddings()(input_ids)
        prompts = self.adapters.peft_model.get_prompt(batch_size=batch).to(embeds.dtype)
        ones = attention_mask.new_ones(batch, n)
        kwargs = {}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.cat([torch.zeros_like(ones), token_type_ids], 1)
        out = self.model(
            inputs_embeds=torch.cat([prompts, embeds], 1),
            attention_mask=torch.cat([ones, attention_mask], 1),
            **kwargs,
        )
        return out.last_hidden_state[:, n:]
