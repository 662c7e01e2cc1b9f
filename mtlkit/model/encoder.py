"""The shared encoder: any ``AutoModel``, loaded from a folder or built from a config."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, AutoModel

from mtlkit.errors import ConfigError
from mtlkit.paths import resolve_path


class HFEncoder(nn.Module):
    """Wraps a Hugging Face encoder and returns its last hidden states.

    Args:
        name_or_path: Local folder, ``pkg:<package>/<folder>`` or hub name of pretrained weights.
        config: Instead of weights, a config dict (with ``model_type``) for a randomly
            initialised encoder, e.g. ``{"model_type": "bert", "hidden_size": 32, ...}``.
        trust_remote_code: Allow custom model code from the folder. Off unless turned on.
        gradient_checkpointing: Trade compute for memory in the encoder.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        config: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if (name_or_path is None) == (config is None):
            raise ConfigError("HFEncoder needs exactly one of name_or_path or config")
        if name_or_path is not None:
            self.model = AutoModel.from_pretrained(
                resolve_path(name_or_path), trust_remote_code=trust_remote_code
            )
        else:
            cfg = dict(config or {})
            model_type = cfg.pop("model_type", None)
            if model_type is None:
                raise ConfigError("HFEncoder config needs a 'model_type' key (e.g. 'bert')")
            self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))
        self.model.train()  # from_pretrained returns eval mode, which would switch dropout off
        if getattr(self.model, "pooler", None) is not None:
            # Heads pool the token states themselves; an unused pooler would only cost memory
            # and make DDP fail on parameters that receive no gradient.
            self.model.pooler = None
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.name_or_path = name_or_path

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out.last_hidden_state
