"""The private attributes of other libraries that mtlkit relies on, each in one function.

Where a library has no public call for what mtlkit needs, the private name is used here and
nowhere else, and ``tests/test_compat.py`` checks that it still exists and behaves as relied on,
so an upgrade that changes it fails there first rather than in a training run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: this module imports none of these libraries
    from datasets import Dataset
    from torch.optim.lr_scheduler import LRScheduler


def dataset_fingerprint(ds: Dataset) -> str:
    """The fingerprint ``datasets`` gives a dataset: the same for the same data and the same
    transforms, across processes (datasets' own cache key; no public accessor)."""
    return ds._fingerprint


def chained_schedulers(scheduler: Any) -> list[Any]:
    """The schedulers a ``SequentialLR`` or ``ChainedScheduler`` runs (torch keeps them in
    ``_schedulers``, with no public accessor); ``[]`` for any other scheduler."""
    return list(getattr(scheduler, "_schedulers", []))


def last_lrs(scheduler: LRScheduler) -> list[Any] | None:
    """The list behind ``scheduler.get_last_lr()`` (torch's ``_last_lr``), to extend in place
    when parameter groups are added; ``None`` before the scheduler has set it."""
    values = getattr(scheduler, "_last_lr", None)
    return values if isinstance(values, list) else None


def rebuild_nash_problem(weighting: Any) -> None:
    """Rebuilds the cvxpy problem of torchjd's Nash-MTL weighting from its ``prvs_alpha``.

    torchjd builds it in its first step only (``_init_optim_problem``); a weighting restored
    from a checkpoint past that step needs it rebuilt from the restored ``prvs_alpha``.
    """
    weighting._init_optim_problem()


def reset_engine(engine: Any) -> None:
    """Forgets the forward passes a torchjd autogram ``Engine`` recorded (its
    ``compute_gramian`` does this when it finishes; torchjd has no public call for it)."""
    engine._gramian_accumulator.reset()
    engine._target_edges.reset()
    for computer in engine._gramian_computers.values():
        computer.reset()


def fused_or_foreach(tensors: list[Any]) -> tuple[bool, bool]:
    """torch's own choice of Adam kernel for ``tensors``: ``(fused, foreach)``, with the fused
    kernel allowed (``torch.optim.optimizer._default_to_fused_or_foreach``; no public call says
    which devices and dtypes have the fused kernel)."""
    from torch.optim.optimizer import _default_to_fused_or_foreach

    fused, foreach = _default_to_fused_or_foreach(tensors, differentiable=False, use_fused=True)
    return bool(fused), bool(foreach)


def disable_fused_amp_unscaling(optimizer: Any) -> None:
    """Makes the GradScaler unscale gradients before a fused optimizer's step, as for any other
    optimizer: torch's fused kernels set ``_step_supports_amp_scaling`` (which Lightning reads
    too) to unscale inside the step, after clipping and gradient callbacks have run."""
    optimizer._step_supports_amp_scaling = False


def has_causal_attention(model: Any) -> bool:
    """Whether a Hugging Face model's self-attention is causal (decoder-only: GPT-2, Llama,
    Qwen, ...): transformers' attention modules carry an ``is_causal`` flag (``True`` in
    decoder-only models, ``False`` or absent in encoders such as BERT), with no public config
    field that says "decoder-only"."""
    return any(getattr(m, "is_causal", None) is True for m in model.modules())
