"""Per-task prompt tuning through peft: a trained soft prompt per task before a frozen encoder."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType
from safetensors.torch import save_file
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.model.adapters import AdapterEncoder
from mtlkit.model.task_encoders import PROMPT_FILE, run_with_prompt


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
        prompts = self.adapters.peft_model.get_prompt(batch_size=input_ids.shape[0])
        return run_with_prompt(self.model, prompts, input_ids, attention_mask, token_type_ids, task)

    @torch.no_grad()
    def export_task_encoder(self, folder: str | Path) -> dict[str, Any]:
        """For an export: each task's prompt embeddings, written to ``folder/<task>/`` and read
        back by :class:`~mtlkit.model.task_encoders.PromptEmbeddingEncoder` (no peft needed)."""
        assert self.adapters.peft_model is not None
        for name in self.adapters.names:
            self.adapters.activate(name)
            prompt = self.adapters.peft_model.get_prompt(batch_size=1)[0]
            out = Path(folder) / name
            out.mkdir(parents=True, exist_ok=True)
            save_file({"prompt": prompt.detach().cpu().contiguous()}, str(out / PROMPT_FILE))
        return {"class_path": "mtlkit.model.task_encoders.PromptEmbeddingEncoder", "init_args": {}}
