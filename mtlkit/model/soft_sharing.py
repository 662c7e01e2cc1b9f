"""Soft parameter sharing: one encoder copy per task, tied together by an L2 penalty."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.model.encoder import HFEncoder


class SoftSharedEncoder(HFEncoder):
    """Per-task encoder parameters kept close by an L2 penalty (soft parameter sharing).

    Duong et al. (2015), "Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in a
    Neural Network Parser" (ACL): each task has its own parameters and the training loss adds
    an L2 distance between them. Here every task gets its own copy of the encoder (or of its top
    ``top_layers`` transformer blocks, the embeddings and lower blocks staying shared, as in hard
    sharing), built in :meth:`prepare_tasks` from the loaded weights, and :meth:`regularization`
    returns, over the per-task parameters ``theta_t`` of the ``T`` tasks::

        strength * sum_t || theta_t - mean_s theta_s ||^2

    whose gradient for task ``t`` is ``2 * strength * (theta_t - mean_s theta_s)``. Since
    ``sum_{s<t} ||theta_s - theta_t||^2 = T * sum_t ||theta_t - mean||^2``, this equals Duong's
    pairwise penalty ``lambda * sum_{s<t} ||theta_s - theta_t||^2`` with ``lambda = strength /
    T``; for two tasks it is ``strength / 2 * ||theta_1 - theta_2||^2``. The penalty is a sum
    over all per-task parameters, so a good ``strength`` shrinks as the copies grow.

    The first task's copy is ``self.model`` itself (what checkpoints, ``init_from`` and export
    see as the encoder); the others are ``towers[task]``, whose shared modules are the very
    objects of ``self.model``, so shared parameters exist (and are optimised) once. Loading new
    weights into ``self.model`` alone (``init_from``) re-copies them into every task's copy.

    Args:
        top_layers: Per-task top transformer blocks; ``None`` copies the whole encoder per task.
        strength: ``strength`` of the penalty above (0 disables it: independent copies).
        **kwargs: The arguments of :class:`HFEncoder` (``name_or_path`` or ``config``, ...).
    """

    per_task = True

    def __init__(self, top_layers: int | None = None, strength: float = 1e-3, **kwargs: Any):
        super().__init__(**kwargs)
        n = len(self.layers)
        if top_layers is not None and not 1 <= top_layers <= n:
            raise ConfigError(f"top_layers must be in [1, {n}] (the encoder's layers) or null")
        if strength < 0:
            raise ConfigError(f"strength must be >= 0, got {strength}")
        self.top_layers, self.strength = top_layers, strength
        self.towers = nn.ModuleDict()
        parent, attr = self.layer_list_parent()
        self._layers_path = next(
            f"{name}.{attr}".lstrip(".") for name, m in self.model.named_modules() if m is parent
        )
        resync = _ResyncCopies(self)
        self.model.register_load_state_dict_pre_hook(resync.before)
        self.model.register_load_state_dict_post_hook(resync.after)

    # ------------------------------------------------------------ copies
    def prepare_tasks(self, task_names: list[str]) -> None:
        """Gives every task not seen yet its copy of the current weights (idempotent)."""
        for name in task_names:
            if name not in self.towers:
                self.towers[name] = self.model if not self.towers else self._copy()

    def _copy(self) -> nn.Module:
        """A deep copy of ``self.model`` in which the shared modules are the same objects."""
        # deepcopy returns what its memo already holds: those objects are shared, not copied.
        memo: dict[int, Any] = {id(self.model.config): self.model.config}
        if self.top_layers is not None:
            own = {id(m) for m in self._own_modules(self.model)}
            # The containers down to the layer list are rebuilt (to hold the task's own top
            # layers); tensors they hold directly stay shared.
            path = [self.model]
            for part in self._layers_path.split("."):
                path.append(path[-1].get_submodule(part))
            rebuilt = {id(m) for m in path}
            for module in self.model.modules():
                if id(module) in rebuilt:
                    for tensor in [*module.parameters(False), *module.buffers(False)]:
                        memo[id(tensor)] = tensor
                elif id(module) not in own:
                    memo[id(module)] = module
        return copy.deepcopy(self.model, memo)

    def _own_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules of ``model`` that are per-task (all of them without ``top_layers``)."""
        if self.top_layers is None:
            return list(model.modules())
        layers = model.get_submodule(self._layers_path)
        return [m for layer in layers[len(layers) - self.top_layers :] for m in layer.modules()]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters that belong to ``task`` alone, in the same order for every task."""
        seen: set[int] = set()
        params = []
        for module in self._own_modules(self.towers[task]):
            for p in module.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    @torch.no_grad()
    def reset_copies(self) -> None:
        """Makes every task's parameters equal to ``self.model``'s (the first task's)."""
        source = self.task_parameters(next(iter(self.towers))) if self.towers else []
        for name in list(self.towers)[1:]:
            for p, q in zip(self.task_parameters(name), source, strict=True):
                p.copy_(q)

    # ----------------------------------------------------------- training
    def regularization(self) -> Tensor | None:
        """The penalty of the class docstring; ``None`` with fewer than two tasks."""
        if len(self.towers) < 2:
            return None
        per_task = [self.task_parameters(n) for n in self.towers]
        if self.strength == 0:
            # Still touches every copy: DDP then sees a gradient for each (no unused parameters).
            return sum(p.sum() * 0.0 for params in per_task for p in params)
        total = per_task[0][0].new_zeros((), dtype=torch.float32)
        for copies in zip(*per_task, strict=True):
            stacked = torch.stack([p.float() for p in copies])
            total = total + (stacked - stacked.mean(0)).pow(2).sum()
        return self.strength * total

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """As :meth:`HFEncoder.layer_groups`, with every task's copy of a layer at its depth."""
        n = len(self.layers)
        groups: list[list[nn.Parameter]] = [[] for _ in range(n + 2)]
        seen: set[int] = set()
        for tower in [self.model, *self.towers.values()]:
            emb = getattr(tower, "embeddings", None)
            emb = emb if isinstance(emb, nn.Module) else tower.get_input_embeddings()
            parts = [emb, *tower.get_submodule(self._layers_path)]
            for depth, module in enumerate(parts):
                groups[depth] += [p for p in module.parameters() if id(p) not in seen]
                seen.update(id(p) for p in module.parameters())
        groups[-1] = [p for p in self.parameters() if id(p) not in seen]
        return groups

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        task: str | None = None,
    ) -> Tensor:
        if task is None:
            model = self.model
        elif task in self.towers:
            model = self.towers[task]
        else:
            raise ConfigError(f"no encoder copy for task {task!r}; it has {list(self.towers)}")
        inputs = self.model_inputs(input_ids, attention_mask, token_type_ids)
        return model(**inputs).last_hidden_state


class _ResyncCopies:
    """Load hooks of the base model: weights loaded into it alone reach every task's copy.

    In a full state-dict load the copies are read after the base model and keep their own
    values. Loads without any of the base model's keys (only heads, ...) change nothing, and
    the towers' deep copies of these hooks act on the base model only.
    """

    def __init__(self, owner: SoftSharedEncoder) -> None:
        self.owner, self.loaded = owner, False

    def __deepcopy__(self, memo: dict[int, Any]) -> _ResyncCopies:
        return self  # towers are deep copies of the base model: keep one owner

    def before(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        self.loaded = module is self.owner.model and any(k.startswith(prefix) for k in state_dict)

    def after(self, module: nn.Module, incompatible_keys: Any) -> None:
        if module is self.owner.model and self.loaded:
            self.loaded = False
            self.owner.reset_copies()
