"""Per-task prefix tuning through peft: trained key/value prefixes in every attention layer."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from peft import PrefixTuningConfig, TaskType
from safetensors.torch import save_file
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.model.adapters import AdapterEncoder
from mtlkit.model.task_encoders import PREFIX_FILE, run_with_prefix


class PrefixTuningEncoder(AdapterEncoder):
    """Frozen pretrained encoder plus a trained prefix per task (Li & Liang 2021, "Prefix-Tuning:
    Optimizing Continuous Prompts for Generation", ACL), built by peft.

    Each task's ``num_virtual_tokens`` key/value vectors (peft's ``PrefixEncoder``, optionally
    through a reparametrising MLP) are put before every attention layer's keys and values: every
    real token attends to them, but they are no input tokens, so the returned states align with
    ``input_ids`` and the position ids of the real tokens start at 0 as without a prefix.

    Args:
        name_or_path: See :class:`HFEncoder`.
        num_virtual_tokens: Length of each task's prefix.
        projection: Reparametrise the prefix through an MLP of ``projection_hidden`` units
            (Li & Liang's stabilisation); off: the prefix is trained directly.
        projection_hidden: Hidden units of that MLP.
        adapters_from: A folder written by :meth:`save_adapters`; each task's prefix is loaded
            from it when created.
        **kwargs: The other arguments of :class:`HFEncoder` (``config``, ``keep_layers``, ...).
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        num_virtual_tokens: int = 10,
        projection: bool = False,
        projection_hidden: int = 512,
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        if num_virtual_tokens < 1 or projection_hidden < 1:
            raise ConfigError(
                "num_virtual_tokens and projection_hidden must be >= 1, got "
                f"{num_virtual_tokens} and {projection_hidden}"
            )
        if kwargs.get("gradient_checkpointing"):
            raise ConfigError("PrefixTuningEncoder does not support gradient_checkpointing")
        make_config = partial(
            PrefixTuningConfig,
            task_type=TaskType.FEATURE_EXTRACTION,
            num_virtual_tokens=num_virtual_tokens,
            prefix_projection=projection,
            encoder_hidden_size=projection_hidden,
        )
        super().__init__(make_config, adapters_from, name_or_path=name_or_path, **kwargs)
        self.num_virtual_tokens = num_virtual_tokens

    def add_adapters(self, task_names: list[str]) -> list[str]:
        """Adds a prefix for each new task."""
        new = super().add_adapters(task_names)
        assert self.adapters.peft_model is not None
        # The prefixes are the only new parameters: registered here, saved with the model.
        self.prompts = self.adapters.peft_model.prompt_encoder
        return new

    def prefix(self, task: str, batch: int) -> Any:
        """``task``'s prefix as the key/value cache the attention layers extend."""
        self.adapters.activate(task)
        assert self.adapters.peft_model is not None
        return self.adapters.peft_model.get_prompt(batch_size=batch)

    @torch.no_grad()
    def export_task_encoder(self, folder: str | Path) -> dict[str, Any]:
        """For an export: each task's prefix keys and values (after the reparametrising MLP),
        written to ``folder/<task>/`` and read back by
        :class:`~mtlkit.model.task_encoders.PrefixCacheEncoder` (no peft needed to serve)."""
        for name in self.adapters.names:
            cache = self.prefix(name, 1)
            tensors = {
                "keys": torch.stack([layer.keys[0] for layer in cache.layers]),
                "values": torch.stack([layer.values[0] for layer in cache.layers]),
            }
            out = Path(folder) / name
            out.mkdir(parents=True, exist_ok=True)
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                str(out / PREFIX_FILE),
            )
        return {"class_path": "mtlkit.model.task_encoders.PrefixCacheEncoder", "init_args": {}}

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        """Token states of a sub-batch under ``task``'s prefix (none: the frozen model)."""
        if task is None:
            return super().forward(input_ids, attention_mask, token_type_ids)
        cache = self.prefix(task, input_ids.shape[0])
        n = self.num_virtual_tokens
        return run_with_prefix(self.model, input_ids, attention_mask, token_type_ids, cache, n)
