"""Base of the per-task peft methods whose layers peft injects into the Hugging Face model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peft import PeftConfig
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.model.adapters import AdapterEncoder, keep_hf_keys


class InjectedAdapterEncoder(AdapterEncoder):
    """Base of the per-task peft methods whose layers peft injects into :attr:`model` in place
    (AdaLoRA, IA3): the frozen weights keep their Hugging Face keys, as with
    :class:`LoRAEncoder`, and ``task=None`` runs the frozen model with every adapter disabled.

    Args:
        make_config: Builds the peft config of one new adapter.
        adapters_from: See :class:`AdapterEncoder`.
        **kwargs: The arguments of :class:`HFEncoder`; not ``gradient_checkpointing``: a block
            recomputed in the backward pass would run the adapter of the last task encoded.
    """

    def __init__(
        self,
        make_config: Callable[[], PeftConfig],
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("gradient_checkpointing"):
            raise ConfigError(f"{type(self).__name__} does not support gradient_checkpointing")
        super().__init__(make_config, adapters_from, **kwargs)

    def add_adapters(self, task_names: list[str]) -> list[str]:
        """Adds an adapter for each new task; its frozen weights keep their HF keys."""
        try:
            new = super().add_adapters(task_names)
        except ValueError as err:  # peft: unknown model type or target module
            name = type(self.model).__name__
            raise ConfigError(
                f"cannot add {type(self).__name__} adapters to {name}: {err}"
            ) from err
        keep_hf_keys(self.model)
        return new

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        """Token states of a sub-batch through ``task``'s adapter (none: the frozen model)."""
        if task is None:
            if self.adapters.peft_model is None:
                return super().forward(input_ids, attention_mask, token_type_ids)
            with self.adapters.peft_model.disable_adapter():
                return super().forward(input_ids, attention_mask, token_type_ids)
        self.adapters.activate(task)
        return super().forward(input_ids, attention_mask, token_type_ids)
