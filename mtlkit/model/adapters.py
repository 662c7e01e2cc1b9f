"""Per-task LoRA adapters through peft, and the per-task adapter bookkeeping shared with
:mod:`mtlkit.model.prompt_tuning`.

The pretrained weights are frozen and shared; each task trains only its own adapter, which is
switched on for that task's sub-batch (``per_task = True``: the model encodes task by task).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from mtlkit.errors import ConfigError
from mtlkit.model.causal_encoder import CausalLMEncoder
from mtlkit.model.encoder import HFEncoder
from mtlkit.model.task_encoders import MERGED_FILE
from mtlkit.paths import resolve_path


class TaskAdapters:
    """The peft wrapper of an encoder's Hugging Face model, with one adapter per task.

    The wrapper lives outside the module tree: its parameters are the encoder's own (LoRA layers
    are injected into the Hugging Face model in place; soft prompts are registered by the
    encoder), so registering it would store every tensor twice in checkpoints.

    Args:
        make_config: Builds the peft config of one new adapter.
    """

    def __init__(self, make_config: Callable[[], PeftConfig]) -> None:
        self.make_config = make_config
        self.peft_model: PeftModel | None = None

    @property
    def names(self) -> list[str]:
        return [] if self.peft_model is None else list(self.peft_model.peft_config)

    def add(self, model: nn.Module, names: list[str]) -> list[str]:
        """Adds an adapter for every name that has none yet; returns the new names."""
        new = [n for n in names if n not in self.names]
        for name in new:
            if not name.isidentifier():  # adapter names become module keys (no dots, ...)
                raise ConfigError(
                    f"task name {name!r} cannot name a peft adapter; use letters, digits and _"
                )
            with warnings.catch_warnings():  # transformers' deprecation noise inside peft
                warnings.simplefilter("ignore", FutureWarning)
                if self.peft_model is None:
                    self.peft_model = get_peft_model(model, self.make_config(), adapter_name=name)
                else:
                    self.peft_model.add_adapter(name, self.make_config())
        self._all_trainable()
        return new

    def activate(self, name: str) -> None:
        """Makes ``name``'s adapter the one the next forward pass uses."""
        if name not in self.names:
            raise ConfigError(
                f"no adapter for task {name!r}; adapters exist for {self.names} "
                "(prepare_tasks builds them from the model's task list)"
            )
        assert self.peft_model is not None
        if self.peft_model.active_adapter != name:
            self.peft_model.set_adapter(name)
            # peft's set_adapter freezes the inactive adapters. One training step runs several
            # tasks before a single backward pass, and autograd drops the gradient of a tensor
            # that stopped requiring it: every task's adapter must stay trainable.
            self._all_trainable()

    def _all_trainable(self) -> None:
        peft = self.peft_model
        if peft is None:
            return
        if peft.active_peft_config.is_prompt_learning:
            peft.prompt_encoder.requires_grad_(True)  # peft does not toggle prompts
        else:
            peft.set_requires_grad(self.names, requires_grad=True)

    def save(self, folder: str | Path, tasks: list[str] | None = None) -> None:
        """Writes the adapters of ``tasks`` (default all) in peft's format, one subfolder each."""
        names = self._select(tasks)
        assert self.peft_model is not None
        self.peft_model.save_pretrained(str(folder), selected_adapters=names)

    def load(self, folder: str | Path, tasks: list[str] | None = None) -> list[str]:
        """Loads the adapters of ``tasks`` (default all) saved by :meth:`save`; returns them."""
        names = self._select(tasks)
        root = Path(resolve_path(str(folder)))
        missing = [n for n in names if not (root / n / "adapter_config.json").is_file()]
        if missing:
            raise ConfigError(f"{root} has no saved adapter for task(s) {missing}")
        assert self.peft_model is not None
        device = next(self.peft_model.parameters()).device
        for name in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.peft_model.load_adapter(
                    str(root / name), adapter_name=name, is_trainable=True, torch_device=str(device)
                )
        self._all_trainable()
        return names

    def _select(self, tasks: list[str] | None) -> list[str]:
        names = self.names if tasks is None else list(tasks)
        unknown = [n for n in names if n not in self.names]
        if unknown or not names:
            raise ConfigError(f"no adapter for task(s) {unknown or names}; have {self.names}")
        return names


class AdapterEncoder(HFEncoder):
    """Base of the frozen encoders that give each task its own peft adapter (LoRA, soft
    prompts): the per-task bookkeeping, ``adapters_from`` and saving/loading in peft's format.

    Subclasses pass how to build one adapter's peft config and implement :meth:`add_adapters`.

    Args:
        make_config: Builds the peft config of one new adapter.
        adapters_from: A folder written by :meth:`save_adapters`; each task's adapter is loaded
            from it when created.
        **kwargs: The arguments of :class:`HFEncoder` (``name_or_path`` or ``config``, ...).
    """

    per_task = True

    def __init__(
        self,
        make_config: Callable[[], PeftConfig],
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.adapters = TaskAdapters(make_config)
        self.adapters_from = adapters_from

    def add_adapters(self, task_names: list[str]) -> list[str]:
        """Adds an adapter for each task that has none yet; returns the new names."""
        return self.adapters.add(self.model, task_names)

    def prepare_tasks(self, task_names: list[str]) -> None:
        """Adds an adapter for each new task (the pretrained weights stay frozen), loaded from
        ``adapters_from`` when set."""
        new = self.add_adapters(task_names)
        if new and self.adapters_from is not None:
            self.adapters.load(self.adapters_from, new)

    def save_adapters(self, folder: str | Path, tasks: list[str] | None = None) -> None:
        """Saves the adapters of ``tasks`` (default all) in peft's format: ``folder/<task>/``."""
        self.adapters.save(folder, tasks)

    def load_adapters(self, folder: str | Path, tasks: list[str] | None = None) -> list[str]:
        """Loads adapters saved by :meth:`save_adapters` into this encoder's tasks."""
        return self.adapters.load(folder, tasks)

    def export_task_encoder(self, folder: str | Path) -> dict[str, Any]:
        """For an export: each task's update merged into the weights it changes, written to
        ``folder/<task>/`` and read back by
        :class:`~mtlkit.model.task_encoders.MergedWeightsEncoder` (no peft needed to serve).

        Raises:
            ConfigError: No adapters yet, or prompts (their encoders export them themselves).
        """
        peft = self.adapters.peft_model
        if peft is None or peft.active_peft_config.is_prompt_learning:
            raise ConfigError(f"cannot export {type(self).__name__}: no adapters to merge")
        for name in self.adapters.names:
            out = Path(folder) / name
            out.mkdir(parents=True, exist_ok=True)
            save_file(merged_weights(self.model, name), str(out / MERGED_FILE))
        return {"class_path": "mtlkit.model.task_encoders.MergedWeightsEncoder", "init_args": {}}


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

    #: The method's name in messages (default: the class name).
    method: ClassVar[str | None] = None
    #: Whether ``gradient_checkpointing`` is accepted (a block recomputed in the backward pass
    #: runs the adapter of the last task encoded: right with one task per step only).
    allows_checkpointing: ClassVar[bool] = False

    def __init__(
        self,
        make_config: Callable[[], PeftConfig],
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("gradient_checkpointing") and not self.allows_checkpointing:
            raise ConfigError(f"{type(self).__name__} does not support gradient_checkpointing")
        super().__init__(make_config, adapters_from, **kwargs)

    def add_adapters(self, task_names: list[str]) -> list[str]:
        """Adds an adapter for each new task; its frozen weights keep their HF keys."""
        try:
            new = super().add_adapters(task_names)
        except ValueError as err:  # peft: unknown model type or target module
            method, name = self.method or type(self).__name__, type(self.model).__name__
            raise ConfigError(f"cannot add {method} adapters to {name}: {err}") from err
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


class LoRAEncoder(InjectedAdapterEncoder):
    """Frozen pretrained encoder plus one LoRA adapter per task (Hu et al. 2021, "LoRA:
    Low-Rank Adaptation of Large Language Models"), built by peft.

    peft injects the LoRA layers into :attr:`model` in place, so :attr:`model` stays the Hugging
    Face model. Its state dict keeps the Hugging Face keys of the frozen weights
    (``...query.weight``, not peft's ``...query.base_layer.weight``) next to the adapters'
    (``...query.lora_A.<task>.weight``): ``init_from`` and distillation teachers read and write
    the base weights by Hugging Face keys as for a plain :class:`HFEncoder`.

    Args:
        name_or_path: See :class:`HFEncoder`.
        r: Rank of the low-rank update.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: Dropout on the adapter's input.
        target_modules: Names of the linear layers to adapt; default peft's choice for the model
            type (the attention ``query`` and ``value`` projections of BERT-like models).
        adapters_from: A folder written by :meth:`save_adapters`; each task's adapter is loaded
            from it when created.
        **kwargs: The other arguments of :class:`HFEncoder` (``config``, ``keep_layers``, ...).
    """

    method = "LoRA"
    # Accepted as before; with several tasks in one step (mixed batches) the recomputed blocks
    # run the last task's adapter.
    allows_checkpointing = True

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.1,
        target_modules: list[str] | None = None,
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        if r < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
            raise ConfigError(
                f"LoRA needs r >= 1, alpha > 0, 0 <= dropout < 1; got {r}, {alpha}, {dropout}"
            )
        make_config = partial(
            LoraConfig,
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(target_modules) if target_modules else None,
        )
        super().__init__(make_config, adapters_from, name_or_path=name_or_path, **kwargs)
        if any(isinstance(m, Conv1D) for m in self.model.modules()):
            # GPT-2's projections are Conv1D (weights stored transposed): peft needs to know.
            self.adapters.make_config = partial(make_config, fan_in_fan_out=True)
        if self.model.is_gradient_checkpointing:
            # Frozen embeddings: checkpointed blocks need inputs that require grad.
            self.model.enable_input_require_grads()


class CausalLMLoRAEncoder(LoRAEncoder, CausalLMEncoder):
    """A frozen decoder-only causal LM with one LoRA adapter per task (Hu et al. 2021, "LoRA:
    Low-Rank Adaptation of Large Language Models"): :class:`LoRAEncoder` on a
    :class:`~mtlkit.model.causal_encoder.CausalLMEncoder`, so that per-task LoRA also serves
    generation tasks (``decoder_only: true``): a task's sub-batch runs through its own adapter,
    and its generation continues the prompts with :attr:`causal_lm` while that adapter is
    active (the LoRA layers are injected into the causal LM's own modules). The LM head is
    frozen with the rest of the pretrained weights: each task trains its adapter only.

    Args:
        name_or_path: Local folder, ``pkg:<package>/<folder>`` or hub name of a causal LM.
        **kwargs: The arguments of :class:`LoRAEncoder` (``r``, ``alpha``, ``dropout``,
            ``target_modules``, ``adapters_from``) and of :class:`~mtlkit.model.HFEncoder`
            (``config``, ...).
    """

    def __init__(self, name_or_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(name_or_path, **kwargs)
        self.lm_head.requires_grad_(False)

    def activate_task(self, task: str) -> None:
        """Makes ``task``'s adapter the one :attr:`causal_lm` runs (generation)."""
        self.adapters.activate(task)


def keep_hf_keys(model: nn.Module) -> None:
    """Makes the frozen weights of every peft layer injected into ``model`` (LoRA, AdaLoRA,
    IA3) save and load under their Hugging Face keys (``...query.weight``, not peft's
    ``...query.base_layer.weight``)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and not getattr(module, "_mtlkit_hf_keys", False):
            module.register_state_dict_post_hook(_hf_keys)
            module.register_load_state_dict_pre_hook(_peft_keys)
            module._mtlkit_hf_keys = True


@torch.no_grad()
def merged_weights(model: nn.Module, adapter: str) -> dict[str, Tensor]:
    """The weights of ``model``'s peft layers with ``adapter`` merged in (peft's ``merge``), by
    Hugging Face key; the model's own weights are restored bit for bit afterwards."""
    merged = {}
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or not any(
            adapter in getattr(module, layer) for layer in module.adapter_layer_names
        ):
            continue
        base = module.get_base_layer()
        saved = {k: v.clone() for k, v in base.named_parameters(recurse=False)}
        module.merge(adapter_names=[adapter])
        for key, value in base.named_parameters(recurse=False):
            if not torch.equal(value, saved[key]):
                merged[f"{name}.{key}"] = value.detach().cpu().clone().contiguous()
        module.unmerge()
        for key, value in base.named_parameters(recurse=False):
            value.copy_(saved[key])
    return merged


def _base_params(module: nn.Module) -> list[str]:
    base = module.base_layer
    return [n for n, _ in base.named_parameters(recurse=False)] + [
        n for n, _ in base.named_buffers(recurse=False)
    ]


def _hf_keys(module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    """State-dict hook of a LoRA layer: its frozen weights under their Hugging Face keys."""
    for name in _base_params(module):
        key = f"{prefix}base_layer.{name}"
        if key in state:
            state[prefix + name] = state.pop(key)


def _peft_keys(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load hook of a LoRA layer: Hugging Face keys go to peft's ``base_layer``."""
    for name in _base_params(module):
        if prefix + name in state and f"{prefix}base_layer.{name}" not in state:
            state[f"{prefix}base_layer.{name}"] = state.pop(prefix + name)
