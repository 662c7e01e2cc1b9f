"""The shared encoder: any ``AutoModel``, loaded from a folder or built from a config.

Encoders (BERT-like) and decoder-only models (GPT-2, Llama, Qwen, ...) alike: a decoder-only
model's token states are read under its causal mask (each token sees the tokens before it), so
its sentence vector is the last real token's state (pooling ``last``).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from mtlkit._compat import has_causal_attention
from mtlkit.errors import ConfigError
from mtlkit.model.decoders import Tokens, WarmStartDecoder
from mtlkit.paths import resolve_path

# Position ids of these models start after the padding index (fairseq's convention).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer"}


class HFEncoder(nn.Module):
    """Wraps a Hugging Face encoder (or decoder-only model) and returns its last hidden states.

    A decoder-only model (causal self-attention, :attr:`is_causal`) runs without a key/value
    cache, without ``token_type_ids``, and with position ids counted over the real tokens
    (``attention_mask.cumsum - 1``): a left-padded input gets the positions it has unpadded.
    :class:`~mtlkit.model.causal_encoder.CausalLMEncoder` keeps its language-model head too.

    Args:
        name_or_path: Local folder, ``pkg:<package>/<folder>`` or hub name of pretrained weights.
        config: Instead of weights, a config dict (with ``model_type``) for a randomly
            initialised encoder, e.g. ``{"model_type": "bert", "hidden_size": 32, ...}``.
        trust_remote_code: Allow custom model code from the folder. Off unless turned on.
        gradient_checkpointing: Trade compute for memory in the encoder.
        keep_layers: Keep only these transformer layers (indices, bottom first), e.g.
            ``[1, 3, 5]`` for a 3-layer student initialised from a 6-layer model's weights.
        stack_tasks: How a step with several tasks' sub-batches (``batch_mode: mixed``) runs
            the encoder: once over all their rows, padded to the widest sub-batch (``True``), or
            once per sub-batch at its own width (``False``: less padding when the tasks'
            lengths differ, in more and smaller passes). Every row's states are the same either
            way up to float rounding. ``gramian: one_pass`` and ``autogram`` need ``True``.

    Subclasses that give each task its own parameters (soft sharing, per-task adapters) set
    ``per_task = True``: the model then calls ``forward(..., task=name)`` once per task's
    sub-batch, after :meth:`prepare_tasks`; :meth:`regularization` is added to the loss.
    """

    per_task = False
    stack_tasks = True

    def __init__(
        self,
        name_or_path: str | None = None,
        config: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        gradient_checkpointing: bool = False,
        keep_layers: list[int] | None = None,
        stack_tasks: bool = True,
    ) -> None:
        super().__init__()
        self.stack_tasks = stack_tasks
        if (name_or_path is None) == (config is None):
            raise ConfigError("HFEncoder needs exactly one of name_or_path or config")
        if name_or_path is not None:
            self.model = self.load_model(resolve_path(name_or_path), None, trust_remote_code)
        else:
            cfg = dict(config or {})
            model_type = cfg.pop("model_type", None)
            if model_type is None:
                raise ConfigError("HFEncoder config needs a 'model_type' key (e.g. 'bert')")
            built = AutoConfig.for_model(model_type, **cfg)
            self.model = self.load_model(None, built, trust_remote_code)
        #: Decoder-only (causal self-attention): read at the last token, positions by the mask.
        self.is_causal = has_causal_attention(self.model)
        self._takes_token_types = (
            "token_type_ids" in inspect.signature(self.model.forward).parameters
        )
        self.model.train()  # from_pretrained returns eval mode, which would switch dropout off
        if getattr(self.model, "pooler", None) is not None:
            # Heads pool the token states themselves; an unused pooler would only cost memory
            # and make DDP fail on parameters that receive no gradient.
            self.model.pooler = None
        if keep_layers is not None:
            self._keep_layers(list(keep_layers))
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.name_or_path = name_or_path
        # Which layers of the loaded model were kept: init_from maps a source's layers by it.
        self.kept_layers = list(keep_layers) if keep_layers is not None else None

    def load_model(self, path: str | None, config: Any, trust_remote_code: bool) -> PreTrainedModel:
        """The Hugging Face model: pretrained from ``path``, or random from ``config``.
        Subclasses load another head class (the causal LM) and return its base model."""
        if path is not None:
            return AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
        return AutoModel.from_config(config)

    def layer_list_parent(self) -> tuple[nn.Module, str]:
        """Where the ``nn.ModuleList`` of transformer blocks sits: its parent module and the
        attribute name (``(model.encoder, "layer")`` for BERT).

        Raises:
            ConfigError: The model has no module list of ``num_hidden_layers`` blocks.
        """
        n = int(getattr(self.model.config, "num_hidden_layers", -1))
        for module in self.model.modules():
            for attr, child in module.named_children():
                if isinstance(child, nn.ModuleList) and len(child) == n:
                    return module, attr
        raise ConfigError(
            f"cannot find the {n} transformer layers of {type(self.model).__name__}; layer-wise "
            "options (freezing layers, unfreezing, layer-wise lr) need a standard encoder"
        )

    def _keep_layers(self, keep: list[int]) -> None:
        layers = self.layers
        bad = [i for i in keep if not 0 <= i < len(layers)]
        if bad or not keep or len(set(keep)) != len(keep):
            raise ConfigError(
                f"keep_layers {keep} must be distinct indices in [0, {len(layers)}) (the encoder "
                f"has {len(layers)} layers)"
            )
        parent, attr = self.layer_list_parent()
        setattr(parent, attr, nn.ModuleList([layers[i] for i in keep]))
        self.model.config.num_hidden_layers = len(keep)
        for new_index, layer in enumerate(getattr(parent, attr)):
            for module in layer.modules():  # attention layers index their cache by layer
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new_index

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer blocks, bottom (next to the embeddings) first."""
        parent, attr = self.layer_list_parent()
        return getattr(parent, attr)

    @property
    def embeddings(self) -> nn.Module:
        """The input embedding block (token, position and type embeddings and their norm).

        Models without an ``embeddings`` block (GPT-2's ``wte`` and ``wpe``, Llama's
        ``embed_tokens``): the modules with weights that the layer list's parent registers
        before the layers, in one ``ModuleList`` (not registered here: a view, not a copy).
        """
        emb = getattr(self.model, "embeddings", None)
        if isinstance(emb, nn.Module):
            return emb
        parent, attr = self.layer_list_parent()
        before = []
        for name, child in parent.named_children():
            if name == attr:
                break
            if any(True for _ in child.parameters()):
                before.append(child)
        return nn.ModuleList(before) if before else self.model.get_input_embeddings()

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters by depth, bottom first: embeddings, layer 0, ..., layer N-1, and last
        whatever is left (a final norm, ...). Used by layer-wise learning rates."""
        groups = [list(self.embeddings.parameters())] + [list(m.parameters()) for m in self.layers]
        seen = {id(p) for g in groups for p in g}
        groups.append([p for p in self.parameters() if id(p) not in seen])
        return groups

    def decoder_head(self, tokens: Tokens) -> nn.Module:
        """The default generation head on this encoder (a generation task without a ``decoder``
        of its own): a decoder warm-started from this encoder's weights."""
        return WarmStartDecoder(self, tokens)

    def prepare_tasks(self, task_names: list[str]) -> None:
        """Called with the task names before training; per-task subclasses build their parts."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after optimizer step ``step``, before its gradients are cleared (AdaLoRA's
        rank budget update); nothing for a plain encoder."""

    def regularization(self) -> Tensor | None:
        """A penalty added to the training loss (soft sharing); ``None`` for none."""
        return None

    @property
    def max_positions(self) -> int | None:
        """The longest input the position embeddings take (``None`` when the config says
        nothing). Position ids of fairseq-style models (RoBERTa family) start after the padding
        index, so ``max_position_embeddings`` counts ``pad_token_id + 1`` unusable positions."""
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None)
        if not isinstance(limit, int) or limit <= 0:
            return None
        if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
            limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1
        return limit

    def check_max_length(self, task: str, max_length: int) -> None:
        """A task's ``max_length`` fits the position embeddings (else it fails inside the model
        at step 0)."""
        limit = self.max_positions
        if limit is not None and max_length > limit:
            raise ConfigError(
                f"task {task!r}: max_length {max_length} is more than the "
                f"encoder's {limit} positions; set max_length <= {limit}"
            )

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The trainable parameters that belong to ``task`` alone: every entry named ``task`` of
        a ``ModuleDict`` / ``ParameterDict`` inside the encoder (peft's per-adapter dicts, per-task
        prompts); none for a plain encoder. The model touches those of tasks absent from a step
        with a zero, so DDP sees every parameter on every process."""
        params: dict[int, nn.Parameter] = {}
        for module in self.modules():
            if isinstance(module, nn.ModuleDict) and task in module:
                params.update((id(p), p) for p in module[task].parameters())
            elif isinstance(module, nn.ParameterDict) and task in module:
                params[id(module[task])] = module[task]
        return [p for p in params.values() if p.requires_grad]

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        out = self.model(**self.model_inputs(input_ids, attention_mask, token_type_ids))
        return out.last_hidden_state

    def model_inputs(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> dict[str, Any]:
        """The Hugging Face model's keyword arguments for a batch.

        ``token_type_ids`` only when the model takes them (decoder-only models have no
        segments); for a decoder-only model no cache, and position ids that count real tokens
        only, so padding on either side leaves every real token's state as without padding.
        """
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.is_causal:
            positions = attention_mask.long().cumsum(-1) - 1
            inputs["position_ids"] = positions.clamp_min(0)
            inputs["use_cache"] = False
        elif token_type_ids is not None and self._takes_token_types:
            inputs["token_type_ids"] = token_type_ids
        return inputs
