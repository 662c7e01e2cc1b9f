"""Optimizer and learning-rate schedule defaults (each overridable from the config)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from mtlkit._compat import disable_fused_amp_unscaling, fused_or_foreach


def fastest_kernel(params: Iterable[Any]) -> dict[str, bool | None]:
    """``{"fused": ..., "foreach": ...}`` for the fastest correct Adam kernel of ``params``.

    ``fused`` (one kernel per device and dtype for all tensors) where torch has a fused kernel
    for every parameter's device and dtype (CPU, CUDA, MPS, XPU in torch 2.13, floating point
    only), else ``foreach`` where torch has multi-tensor kernels for the device, else torch's
    default. torch's choice comes through :func:`mtlkit._compat.fused_or_foreach` (a private torch
    function, checked by ``tests/test_compat.py``).
    """
    tensors = [p for item in params for p in _tensors(item)]
    fused, foreach = fused_or_foreach(tensors)
    return (
        {"fused": True, "foreach": None} if fused else {"fused": None, "foreach": foreach or None}
    )


def _tensors(item: Any) -> list[torch.Tensor]:
    return list(item["params"]) if isinstance(item, dict) else [item]


class AdamW(torch.optim.AdamW):
    """:class:`torch.optim.AdamW` on the fastest kernel the parameters' device has.

    torch's own default (``fused=None, foreach=None``) on CPU is the single-tensor loop: a
    handful of small kernels per parameter tensor per step, 56% of a tiny encoder's step. This
    class picks :func:`fastest_kernel` instead when neither ``fused`` nor ``foreach`` is given
    (either given explicitly is passed through to torch). The update is the same AdamW in every
    mode, and so is the state-dict format: a checkpoint saved with torch's AdamW in any mode
    resumes here and the other way round (``tests/test_optim_kernel.py``). The kernel is this
    optimizer's choice, not the checkpoint's: ``load_state_dict`` keeps it (torch's would copy the
    saved groups' ``fused``/``foreach`` flags over it).

    A fused kernel can also unscale fp16 gradients inside its step; this one leaves that to the
    ``GradScaler``, as for any other optimizer, so gradients are unscaled before
    ``on_before_optimizer_step`` (L2-SP, diagnostics) and gradient clipping work under
    ``16-mixed`` (Lightning refuses to clip for an optimizer that unscales in its step).

    Args:
        params: Parameters or parameter groups.
        lr, betas, eps, weight_decay, amsgrad: As :class:`torch.optim.AdamW`.
        foreach, fused: Force torch's kernel choice; ``None`` for both picks the fastest.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        params = list(params)
        kernel = {"fused": fused, "foreach": foreach}
        if fused is None and foreach is None:
            kernel = fastest_kernel(params)
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            **kernel,
        )
        # GradScaler then unscales before the step (see the class docstring); the attribute is
        # the one torch's GradScaler and Lightning's precision plugin read.
        disable_fused_amp_unscaling(self)
        self.register_load_state_dict_pre_hook(_keep_kernel)


def _keep_kernel(optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The saved state with this optimizer's kernel flags in place of the saved ones (so the
    ``step`` counters are also placed where this kernel wants them: on the parameters' device
    for ``fused``, on the CPU otherwise)."""
    groups = [
        {**saved, "fused": group.get("fused"), "foreach": group.get("foreach")}
        for saved, group in zip(state_dict["param_groups"], optimizer.param_groups, strict=False)
    ]
    return {**state_dict, "param_groups": groups}


def adamw(params: Iterable[Any]) -> Optimizer:
    """:class:`AdamW` with the usual fine-tuning defaults (lr 5e-5, weight decay 0.01)."""
    return AdamW(params, lr=5e-5, weight_decay=0.01)


class LinearWarmupDecay(LambdaLR):
    """Linear warm-up to the base learning rate, then linear decay (BERT's schedule).

    Args:
        optimizer: The optimizer.
        total_steps: Number of optimisation steps of the run (filled in by the model).
        warmup: Warm-up length: a fraction of ``total_steps`` if < 1, else a number of steps.
        final_fraction: Learning rate at the end, as a fraction of the base rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup: float = 0.06,
        final_fraction: float = 0.0,
    ) -> None:
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = int(warmup * self.total_steps) if warmup < 1 else int(warmup)
        self.final_fraction = final_fraction
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(self.total_steps - self.warmup_steps, 1)
        done = min((step - self.warmup_steps) / span, 1.0)
        return 1.0 - (1.0 - self.final_fraction) * done


class ConstantWithWarmup(LinearWarmupDecay):
    """Linear warm-up, then a constant learning rate."""

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup: float = 0.06) -> None:
        super().__init__(optimizer, total_steps, warmup, final_fraction=1.0)
