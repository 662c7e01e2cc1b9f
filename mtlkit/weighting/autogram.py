"""The ``T x T`` Gramian of the task losses without the ``[T, P]`` gradients: torchjd's autogram.

:class:`torchjd.autogram.Engine` hooks the shared encoder's modules; back-propagating the vector
of task losses through those hooks accumulates ``J J^T`` module by module, so no per-task
gradient of all the parameters is ever stored. Used by
:class:`~mtlkit.weighting.GradientWeighting` with ``gramian="autogram"``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchjd.autogram import Engine

from mtlkit._compat import reset_engine
from mtlkit.errors import ConfigError


class AutogramGramian:
    """An autogram engine bound to one shared module, rebuilt when its trainable set changes.

    The engine's hooks record the module's forward passes, so it must exist before the forward
    of a step: :meth:`gramian` returns None in the step that (re)builds it, and the caller takes
    that step's Gramian from explicit gradients. The module must run once per step (not once per
    task); a forward whose Gramian was never taken (a skipped step) is discarded at the next one.
    """

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._module: nn.Module | None = None
        self._trainable: tuple[int, ...] = ()
        self._handle: RemovableHandle | None = None
        self._pending = 0  # forward passes with grad recorded since the last Gramian

    def gramian(self, losses: Tensor, module: nn.Module, scale: float = 1.0) -> Tensor | None:
        """``[T, T]`` float32 Gramian of ``losses`` (``[T]``) w.r.t. ``module``'s trainable
        parameters, or None when the engine is (re)built in this step."""
        if getattr(module, "per_task", False) or not getattr(module, "stack_tasks", True):
            raise ConfigError(
                "gramian='autogram' needs one encoder pass per step; this encoder runs once per "
                "task (per-task parameters or stack_tasks: false): use gramian='explicit'"
            )
        trainable = tuple(id(p) for p in module.parameters() if p.requires_grad)
        if module is not self._module or trainable != self._trainable:
            self._attach(module, trainable)
            return None
        if not self._pending:  # no forward with grad recorded in this step
            return None
        self._pending = 0
        assert self._engine is not None
        return self._engine.compute_gramian(losses * scale) / scale**2

    def _attach(self, module: nn.Module, trainable: tuple[int, ...]) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._engine = Engine(module, batch_dim=None)  # task losses have no batch dimension
        self._module, self._trainable, self._pending = module, trainable, 0
        self._handle = module.register_forward_pre_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, args: object) -> None:
        if not torch.is_grad_enabled():
            return
        if self._pending:  # the previous step's graph was never used: drop what it recorded
            assert self._engine is not None
            reset_engine(self._engine)
            self._pending = 0
        self._pending += 1
