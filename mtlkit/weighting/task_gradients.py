"""Per-task gradients: the one place where mtlkit differentiates each task's loss on its own.

Gradient methods (:class:`~mtlkit.weighting.GradientWeighting`), GradNorm and the gradient
diagnostics all need ``grad L_t`` for every task ``t`` of a step, of the shared parameters (or one
layer of them) or of each task's shared representation. :func:`task_gradients` takes them;
:class:`TaskGradients` (one per step, carried by :class:`~mtlkit.weighting.StepContext`) keeps what
was taken, so that a second consumer in the same step (the diagnostics after the method) reuses
the rows instead of running the backward passes again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def task_gradients(
    losses: Mapping[str, Tensor],
    wrt: Sequence[Tensor] | Mapping[str, Tensor],
    scale: float = 1.0,
) -> dict[str, Tensor]:
    """Flattened float32 gradient of each task loss, the graph kept for the step's backward.

    Args:
        losses: ``{task: scalar loss}``; every loss must require grad.
        wrt: Tensors shared by all tasks (parameters: the row is their gradients concatenated,
            zeros for a tensor the loss does not reach), or ``{task: representation}``: each
            task's gradient of its own representation, summed over every dimension but the last
            (examples and tokens), a row of the representation's width.
        scale: Each loss is multiplied by ``scale`` (the fp16 gradient scaler's, so small
            gradients do not underflow) and the gradient divided by it in float32.
    """
    out = {}
    for task, loss in losses.items():
        if isinstance(wrt, Mapping):
            (grad,) = torch.autograd.grad(loss * scale, wrt[task], retain_graph=True)
            out[task] = grad.float().reshape(-1, grad.shape[-1]).sum(0) / scale
        else:
            grads = torch.autograd.grad(loss * scale, wrt, retain_graph=True, allow_unused=True)
            out[task] = torch.cat([_flat(p, g) for p, g in zip(wrt, grads, strict=True)]) / scale
    return out


def _flat(param: Tensor, grad: Tensor | None) -> Tensor:
    return torch.zeros(param.numel(), device=param.device) if grad is None else grad.float().ravel()


class TaskGradients:
    """The per-task gradients of one training step, each ``(task, tensor)`` taken at most once.

    The model creates one per step in :class:`~mtlkit.weighting.StepContext` (``ctx.gradients``).
    :meth:`of_parameters` returns the rows for any list of shared parameters: those already taken
    in this step (for the same loss tensor) are read back, so the diagnostics' last shared layer
    is a slice of a gradient method's full rows, or GradNorm's own. Rows are float32, unscaled.

    Attributes:
        backward_passes: ``torch.autograd.grad`` calls made so far (one per task and request
            that was not cached).
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[int, int], Tensor] = {}  # (loss, tensor) -> the tensor's block
        self._whole: dict[tuple[int, tuple[int, ...]], Tensor] = {}  # (loss, tensors) -> row
        self._losses: list[Tensor] = []  # keeps the keyed loss tensors alive (ids stay unique)
        self._unused: set[tuple[str, int]] = set()
        self.backward_passes = 0

    def of_parameters(
        self,
        losses: Mapping[str, Tensor],
        params: Sequence[Tensor],
        tasks: Sequence[str] | None = None,
        scale: float = 1.0,
    ) -> Tensor:
        """``[T, P]`` gradients of ``losses`` w.r.t. ``params``, one row per name in ``tasks``
        (default: the losses' order); zeros for a task without a loss or whose loss has no
        graph (present on other processes only, under DDP)."""
        names = list(losses) if tasks is None else list(tasks)
        width = sum(p.numel() for p in params)
        device = params[0].device if params else torch.device("cpu")
        rows = []
        for task in names:
            loss = losses.get(task)
            if loss is None or not loss.requires_grad:
                rows.append(torch.zeros(width, device=device))
                continue
            whole = (id(loss), tuple(id(p) for p in params))
            if whole not in self._whole:
                missing = [p for p in params if (id(loss), id(p)) not in self._rows]
                if missing:
                    self._whole[(id(loss), tuple(id(p) for p in missing))] = self._take(
                        task, loss, missing, scale
                    )
                if whole not in self._whole:
                    self._whole[whole] = torch.cat([self._rows[(id(loss), id(p))] for p in params])
            rows.append(self._whole[whole])
        return torch.stack(rows) if rows else torch.zeros(0, width, device=device)

    def of_representations(
        self,
        losses: Mapping[str, Tensor],
        representations: Mapping[str, Tensor],
        tasks: Sequence[str] | None = None,
        scale: float = 1.0,
    ) -> Tensor:
        """``[T, width]``: each task's gradient of its own representation, summed over examples
        and tokens (zeros as in :meth:`of_parameters`)."""
        names = list(losses) if tasks is None else list(tasks)
        width = next(iter(representations.values())).shape[-1]
        device = next(iter(losses.values())).device
        rows = []
        for task in names:
            loss = losses.get(task)
            if loss is None or not loss.requires_grad:
                rows.append(torch.zeros(width, device=device))
                continue
            rep = representations[task]
            if (id(loss), id(rep)) not in self._rows:
                self.backward_passes += 1
                row = task_gradients({task: loss}, {task: rep}, scale)[task]
                self._keep(loss, rep, row)
            rows.append(self._rows[(id(loss), id(rep))])
        return torch.stack(rows)

    def _take(self, task: str, loss: Tensor, params: list[Tensor], scale: float) -> Tensor:
        self.backward_passes += 1
        grads = torch.autograd.grad(loss * scale, params, retain_graph=True, allow_unused=True)
        row = torch.cat([_flat(p, g) for p, g in zip(params, grads, strict=True)]) / scale
        start = 0
        for p, g in zip(params, grads, strict=True):
            if g is None:
                self._unused.add((task, id(p)))
            self._keep(loss, p, row[start : start + p.numel()])  # views: no second copy
            start += p.numel()
        return row

    def _keep(self, loss: Tensor, tensor: Tensor, row: Tensor) -> None:
        if not any(kept is loss for kept in self._losses):
            self._losses.append(loss)
        self._rows[(id(loss), id(tensor))] = row

    def is_unused(self, task: str, param: Tensor) -> bool:
        """True when ``task``'s loss did not reach ``param`` (its row there is zeros)."""
        return (task, id(param)) in self._unused
