"""Per-task AdaLoRA through peft, with each task's rank budget allocated from its own steps."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from peft import AdaLoraConfig
from peft.tuners.adalora import RankAllocator
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.model.adapters import InjectedAdapterEncoder


class _TaskView:
    """What peft's ``RankAllocator`` reads of a model: only one task's adapter parameters (its
    name tests are substring tests, which would mix a task ``mood`` with a task ``mood2``)."""

    def __init__(self, model: nn.Module, task: str) -> None:
        self.model, self.task = model, task

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in self.model.named_parameters():
            parts = name.split(".")  # ...query.lora_A.<task>: the adapter right after its part
            pairs = zip(parts, parts[1:], strict=False)
            if any(a.startswith("lora_") and b == self.task for a, b in pairs):
                yield name, param


class AdaLoRAEncoder(InjectedAdapterEncoder):
    """Frozen pretrained encoder plus one AdaLoRA adapter per task (Zhang et al. 2023,
    "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR), built by peft.

    Each adapted matrix gets an SVD-shaped update ``P diag(E) Q`` of ``init_r`` triplets; every
    task prunes its own triplets to an average of ``target_r`` per matrix, by importance
    (sensitivity smoothed over steps, times its uncertainty), on a cubic budget schedule:
    ``init_r`` for ``tinit`` steps, down to ``target_r`` at ``total_step - tfinal``, then fixed.

    In a multi-task run, the budget update (peft's ``RankAllocator``) runs after every optimizer
    step, before the gradients are cleared, for each task whose singular values received a
    gradient in that step (the tasks of the step; the same on every DDP process, since the
    gradients are all-reduced): a task's importance scores see only its own steps, while its
    budget follows the global step. The orthogonality penalty
    ``orth_reg_weight * mean ||P^T P - I||_F`` of every task is :meth:`regularization`.

    Args:
        name_or_path: See :class:`HFEncoder`.
        total_step: The number of optimizer steps of the run (the budget schedule's length).
        init_r: Triplets per matrix at the start.
        target_r: Average triplets per matrix at the end.
        tinit: Steps before pruning starts.
        tfinal: Steps at the end with the final budget.
        delta_t: Steps between two budget allocations.
        beta1: Smoothing of the sensitivity.
        beta2: Smoothing of the uncertainty.
        orth_reg_weight: Weight of the orthogonality penalty.
        alpha: Scaling numerator of the update.
        dropout: Dropout on the adapter's input.
        target_modules: Linear layers to adapt (default: peft's choice for the model type).
        adapters_from: A folder written by :meth:`save_adapters`.
        **kwargs: The other arguments of :class:`HFEncoder` (``config``, ``keep_layers``, ...).
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        total_step: int,
        init_r: int = 12,
        target_r: int = 8,
        tinit: int = 0,
        tfinal: int = 0,
        delta_t: int = 1,
        beta1: float = 0.85,
        beta2: float = 0.85,
        orth_reg_weight: float = 0.5,
        alpha: float = 8.0,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not 1 <= target_r <= init_r or total_step <= tinit + tfinal or delta_t < 1:
            raise ConfigError(
                "AdaLoRA needs 1 <= target_r <= init_r, total_step > tinit + tfinal and "
                f"delta_t >= 1; got target_r={target_r}, init_r={init_r}, total_step="
                f"{total_step}, tinit={tinit}, tfinal={tfinal}, delta_t={delta_t}"
            )
        if orth_reg_weight < 0:
            raise ConfigError(f"orth_reg_weight must be >= 0, got {orth_reg_weight}")
        make_config = partial(
            AdaLoraConfig,
            total_step=total_step,
            init_r=init_r,
            target_r=target_r,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=delta_t,
            beta1=beta1,
            beta2=beta2,
            orth_reg_weight=orth_reg_weight,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(target_modules) if target_modules else None,
            # peft trains one AdaLoRA adapter at a time; mtlkit makes every task's trainable
            # itself and runs each task's budget allocation (after_optimizer_step).
            inference_mode=True,
        )
        super().__init__(make_config, adapters_from, name_or_path=name_or_path, **kwargs)
        self.orth_reg_weight = orth_reg_weight
        self.allocators: dict[str, RankAllocator] = {}
        self.finalised: set[str] = set()

    def add_adapters(self, task_names: list[str]) -> list[str]:
        """Adds an adapter and a rank allocator for each new task."""
        new = super().add_adapters(task_names)
        peft = self.adapters.peft_model
        assert peft is not None
        for name in new:
            self.allocators[name] = RankAllocator(
                _TaskView(self.model, name), peft.peft_config[name], name
            )
        return new

    def rank_pattern(self, task: str) -> dict[str, list[bool]] | None:
        """Which triplets of ``task`` are kept, per ``lora_E`` (``None`` before any pruning)."""
        assert self.adapters.peft_model is not None
        return self.adapters.peft_model.peft_config[task].rank_pattern

    def _stepped(self, task: str) -> bool:
        """Whether ``task``'s singular values got a (finite) gradient in this step; a step the
        fp16 gradient scaler skipped for overflow must not enter the importance averages."""
        view = _TaskView(self.model, task).named_parameters()
        grads = [p.grad for n, p in view if ".lora_E." in f"{n}."]
        grads = [g for g in grads if g is not None]
        if not grads:
            return False
        flat = torch.cat([g.reshape(-1) for g in grads])
        return bool(flat.any()) and bool(torch.isfinite(flat).all())

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """AdaLoRA's budget update after optimizer step ``step`` (peft's ``update_and_allocate``
        per task), before the gradients are cleared."""
        for task, allocator in self.allocators.items():
            config, view = allocator.peft_config, _TaskView(self.model, task)
            final = config.total_step - config.tfinal
            if step < final:
                if self._stepped(task):
                    _, pattern = allocator.update_and_allocate(view, step)
                    if pattern:
                        config.rank_pattern = pattern
            elif task not in self.finalised and allocator.exp_avg_ipt:
                _, pattern = allocator.update_and_allocate(view, step, force_mask=True)
                config.rank_pattern = pattern
                allocator.reset_ipt()
                self.finalised.add(task)
            elif config.rank_pattern:
                allocator.mask_using_rank_pattern(view, config.rank_pattern)

    def get_extra_state(self) -> dict[str, Any]:
        """Each task's importance averages and rank pattern, saved in checkpoints so that a
        resumed run allocates as an unbroken one."""
        state: dict[str, Any] = {"finalised": sorted(self.finalised), "tasks": {}}
        for task, allocator in self.allocators.items():
            state["tasks"][task] = {
                "ipt": dict(allocator.ipt),
                "exp_avg_ipt": dict(allocator.exp_avg_ipt),
                "exp_avg_unc": dict(allocator.exp_avg_unc),
                "rank_pattern": allocator.peft_config.rank_pattern,
            }
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.finalised = set(state.get("finalised", []))
        for task, saved in state.get("tasks", {}).items():
            if task not in self.allocators:
                continue
            allocator = self.allocators[task]
            allocator.ipt = dict(saved["ipt"])
            allocator.exp_avg_ipt = dict(saved["exp_avg_ipt"])
            allocator.exp_avg_unc = dict(saved["exp_avg_unc"])
            allocator.peft_config.rank_pattern = saved["rank_pattern"]

    def regularization(self) -> Tensor | None:
        """``orth_reg_weight`` times each task's mean ``||P^T P - I||_F`` over its matrices."""
        if self.orth_reg_weight == 0 or not self.allocators:
            return None
        total: Tensor | float = 0.0
        for task in self.allocators:
            terms = []
            for name, p in _TaskView(self.model, task).named_parameters():
                if ".lora_A." in name or ".lora_B." in name:
                    cov = p @ p.T if ".lora_A." in name else p.T @ p
                    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
                    terms.append(torch.linalg.matrix_norm(cov - eye))
            if terms:
                total = total + torch.stack(terms).mean()
        return self.orth_reg_weight * total if torch.is_tensor(total) else None
