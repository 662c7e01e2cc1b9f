"""Per-task encoders as exported: what the peft methods become in an export, in torch alone.

``mtlkit export`` of a per-task encoder writes the frozen Hugging Face model to ``encoder/`` and
each task's own part to ``task_encoder/<task>/``; ``mtlkit.json`` names the class that reads them
(``task_encoder``: ``class_path``, ``init_args``). Bottleneck adapters and AdapterFusion are
plain torch and export as themselves; the peft methods export as:

- :class:`MergedWeightsEncoder`: LoRA, AdaLoRA and (IA)^3, each task's update merged into the
  weights it changes (peft's ``merge``), swapped in for the task's pass;
- :class:`PrefixCacheEncoder`: prefix tuning, each task's prefix keys and values as computed by
  its (reparametrised) prefix encoder;
- :class:`PromptEmbeddingEncoder`: prompt tuning, each task's soft prompt embeddings.

Needs torch, transformers and safetensors only (no peft), like :mod:`mtlkit.inference`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor
from transformers import DynamicCache

from mtlkit.errors import ConfigError
from mtlkit.model.encoder import HFEncoder
from mtlkit.paths import resolve_path

MERGED_FILE = "merged_weights.safetensors"
PREFIX_FILE = "prefix.safetensors"
PROMPT_FILE = "prompt.safetensors"


def run_with_prefix(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None,
    cache: Any,
    length: int,
) -> Tensor:
    """Token states of ``model`` with ``cache`` (``length`` prefix keys/values per layer) before
    every attention layer's own: the real tokens attend to the prefix and keep positions from 0.
    """
    batch, tokens = input_ids.shape
    kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    positions = torch.arange(tokens, device=input_ids.device).expand(batch, -1)
    mask = torch.cat([attention_mask.new_ones(batch, length), attention_mask], 1)
    out = model(
        input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, **kwargs
    )
    return out.last_hidden_state


def run_with_prompt(
    model: Any,
    prompts: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None,
    task: str,
) -> Tensor:
    """Token states of ``model`` with soft ``prompts`` (``[batch, n, hidden]``) put before the
    token embeddings (mask 1, token type 0), the prompt's own states dropped: they align with
    ``input_ids``."""
    n, (batch, length) = prompts.shape[1], input_ids.shape
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and n + length > limit:
        raise ConfigError(
            f"task {task!r}: {length} tokens + {n} virtual tokens exceed the encoder's "
            f"{limit} positions; lower the task's max_length"
        )
    embeds = model.get_input_embeddings()(input_ids)
    ones = attention_mask.new_ones(batch, n)
    kwargs = {}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.cat([torch.zeros_like(ones), token_type_ids], 1)
    out = model(
        inputs_embeds=torch.cat([prompts.to(embeds.dtype), embeds], 1),
        attention_mask=torch.cat([ones, attention_mask], 1),
        **kwargs,
    )
    return out.last_hidden_state[:, n:]


def _task_file(folder: str | Path, task: str, name: str) -> dict[str, Tensor]:
    path = Path(resolve_path(str(folder))) / task / name
    if not path.is_file():
        raise ConfigError(f"{path.parent.parent} has no exported part for task {task!r}")
    return load_file(str(path))


class MergedWeightsEncoder(HFEncoder):
    """A frozen encoder whose weights each task replaces in part (merged LoRA, AdaLoRA, IA3).

    Args:
        adapters_from: The folder of ``<task>/merged_weights.safetensors`` files (Hugging Face
            keys to each task's merged tensors).
        **kwargs: The arguments of :class:`HFEncoder`.
    """

    per_task = True

    def __init__(self, adapters_from: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model.requires_grad_(False)
        self.adapters_from = adapters_from
        self.merged: dict[str, dict[str, Tensor]] = {}
        self._base: dict[str, Tensor] = {}
        self._active: str | None = None

    def prepare_tasks(self, task_names: list[str]) -> None:
        """Reads the merged weights of each new task."""
        own = self.model.state_dict()
        for name in task_names:
            if name in self.merged:
                continue
            weights = _task_file(self.adapters_from, name, MERGED_FILE)
            unknown = [k for k in weights if k not in own]
            if unknown:
                raise ConfigError(f"merged weights of task {name!r} name no weight: {unknown[:3]}")
            self.merged[name] = weights
            for key in weights:
                self._base.setdefault(key, own[key].detach().clone())

    @torch.no_grad()
    def activate(self, task: str | None) -> None:
        """Puts ``task``'s merged weights in the model (``None``: the frozen weights)."""
        if task == self._active:
            return
        if task is not None and task not in self.merged:
            raise ConfigError(f"no merged weights for task {task!r}; have {list(self.merged)}")
        own = self.model.state_dict()
        wanted = self.merged.get(task, {}) if task is not None else {}
        for key, base in self._base.items():
            own[key].copy_(wanted.get(key, base))
        self._active = task

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        self.activate(task)
        return super().forward(input_ids, attention_mask, token_type_ids)


class PrefixCacheEncoder(HFEncoder):
    """A frozen encoder with each task's fixed prefix keys and values (exported prefix tuning).

    Args:
        adapters_from: The folder of ``<task>/prefix.safetensors`` files (``keys`` and
            ``values``, each ``[layers, heads, prefix length, head size]``).
        **kwargs: The arguments of :class:`HFEncoder`.
    """

    per_task = True

    def __init__(self, adapters_from: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model.requires_grad_(False)
        self.adapters_from = adapters_from
        self.prefixes: dict[str, dict[str, Tensor]] = {}

    def prepare_tasks(self, task_names: list[str]) -> None:
        """Reads the prefix of each new task."""
        for name in task_names:
            if name not in self.prefixes:
                self.prefixes[name] = _task_file(self.adapters_from, name, PREFIX_FILE)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        if task is None:
            return super().forward(input_ids, attention_mask, token_type_ids)
        if task not in self.prefixes:
            raise ConfigError(f"no prefix for task {task!r}; have {list(self.prefixes)}")
        prefix, batch = self.prefixes[task], input_ids.shape[0]
        cache = DynamicCache(config=self.model.config)
        param = next(self.model.parameters())
        for layer, (keys, values) in enumerate(zip(prefix["keys"], prefix["values"], strict=True)):
            keys, values = (
                t.to(param).unsqueeze(0).expand(batch, -1, -1, -1) for t in (keys, values)
            )
            cache.update(keys, values, layer)
        length = int(prefix["keys"].shape[2])
        return run_with_prefix(self.model, input_ids, attention_mask, token_type_ids, cache, length)


class PromptEmbeddingEncoder(HFEncoder):
    """A frozen encoder with each task's fixed soft prompt (exported prompt tuning).

    Args:
        adapters_from: The folder of ``<task>/prompt.safetensors`` files (``prompt``:
            ``[virtual tokens, hidden size]``).
        **kwargs: The arguments of :class:`HFEncoder`.
    """

    per_task = True

    def __init__(self, adapters_from: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model.requires_grad_(False)
        self.adapters_from = adapters_from
        self.prompts: dict[str, Tensor] = {}

    def prepare_tasks(self, task_names: list[str]) -> None:
        """Reads the prompt of each new task."""
        for name in task_names:
            if name not in self.prompts:
                self.prompts[name] = _task_file(self.adapters_from, name, PROMPT_FILE)["prompt"]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        if task is None:
            return super().forward(input_ids, attention_mask, token_type_ids)
        if task not in self.prompts:
            raise ConfigError(f"no prompt for task {task!r}; have {list(self.prompts)}")
        prompt = self.prompts[task].to(input_ids.device)
        prompts = prompt.unsqueeze(0).expand(input_ids.shape[0], -1, -1)
        return run_with_prompt(self.model, prompts, input_ids, attention_mask, token_type_ids, task)
