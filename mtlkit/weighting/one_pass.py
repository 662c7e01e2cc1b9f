"""The ``T x T`` Gramian of the per-task parameter gradients from one backward pass.

In a mixed batch the shared encoder runs once over every task's examples, stacked along the
batch dimension, and task ``t``'s loss reads only its own rows. The encoder treats rows
independently (attention mixes the tokens of one example, never two examples), so the gradient
of ``sum_t L_t`` with respect to a module's output, restricted to task ``t``'s rows, is the
gradient of ``L_t`` alone. One backward pass to the outputs of the modules that hold the
trainable parameters therefore gives every task's output gradient at once, and each task's
parameter gradient follows from its own rows in closed form:

- ``nn.Linear``: ``W_t = g_t^T x_t``, ``b_t = sum g_t`` (over the task's rows and tokens);
- ``nn.LayerNorm``: ``gamma_t = sum g_t * x_hat_t``, ``beta_t = sum g_t``;
- ``nn.Embedding``: the task's output gradients added into the rows of the ids it looked up.

The Gramian accumulates module by module, so no ``[T, P]`` matrix of the whole encoder is
formed. Once the method has its weights, the same output gradients, each row scaled by its
task's weight, give the update ``sum_t w_t g_t`` in closed form again (:meth:`gradients`), so the
step needs no second backward pass through the encoder: one backward pass without parameter
gradients and two passes of closed forms (each about the parameter-gradient half of a
backward pass), for any number of tasks, where the explicit Gramian takes one full backward pass
per task and then the step's own. Used by :class:`~mtlkit.weighting.GradientWeighting` with
``gramian="one_pass"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from mtlkit.errors import ConfigError

#: Module types whose parameter gradients have a closed form here.
SUPPORTED = (nn.Linear, nn.LayerNorm, nn.Embedding)
Rows = Mapping[str, tuple[int, int]]


@dataclass
class _Call:
    """One forward call of a hooked module: its input and output (the output is where the
    backward pass stops to read the gradient)."""

    module: nn.Module
    inputs: Tensor
    output: Tensor


class OnePassGramian:
    """Hooks on the shared module's parameter-holding submodules, rebuilt when the trainable
    set changes.

    The hooks record the forward passes, so they must exist before the forward of a step:
    :meth:`gramian` returns None in the step that (re)builds them, and the caller takes that
    step's Gramian from explicit gradients (as for ``gramian="autogram"``). The module must run
    once per step over all tasks' rows (``encoder_rows``); a forward whose Gramian was never
    taken (a skipped step) is dropped at the next one.
    """

    def __init__(self) -> None:
        self._module: nn.Module | None = None
        self._trainable: tuple[int, ...] = ()
        self._handles: list[RemovableHandle] = []
        self._calls: list[_Call] = []
        self._rows = 0  # rows of the current forward's batch (0: none recorded)
        self._unreadable: str | None = None  # a hooked module whose output was not recorded
        # The last Gramian's output gradients, for :meth:`gradients`.
        self._kept: tuple[list[_Call], list[Tensor | None], list[str], Rows, float] | None = None
        self._others: list[Tensor] = []
        self._other_grads: list[Tensor | None] = []

    def gramian(
        self,
        losses: Mapping[str, Tensor],
        module: nn.Module,
        rows: Rows,
        scale: float = 1.0,
        others: Sequence[Tensor] = (),
    ) -> Tensor | None:
        """``[T, T]`` float32 Gramian of the gradients of ``losses`` (in their order) w.r.t.
        ``module``'s trainable parameters, or None when the hooks are (re)built in this step.

        Args:
            losses: Task -> loss; each task's loss must read only its rows of the module's batch.
            module: The shared module (run once this step, after the hooks existed).
            rows: Task -> ``(start, stop)``, its rows of the module's batch; a task without
                rows there (cached features) has zero gradients.
            scale: The fp16 loss scale (the losses are scaled by it, the Gramian unscaled).
            others: Parameters outside ``module`` (the task heads) whose gradients of
                ``sum_t L_t`` the same backward pass takes, for :meth:`gradients`.
        """
        self._kept, self._others, self._other_grads = None, list(others), []
        if getattr(module, "per_task", False) or not getattr(module, "stack_tasks", True):
            raise ConfigError(
                "gramian='one_pass' needs one encoder pass over all tasks' rows per step; this "
                "encoder runs once per task (per-task parameters or stack_tasks: false): use "
                "gramian='explicit'"
            )
        trainable = tuple(id(p) for p in module.parameters() if p.requires_grad)
        if module is not self._module or trainable != self._trainable:
            self._attach(module, trainable)
            return None
        if not self._rows:  # no forward with grad recorded in this step
            return None
        calls, batch, unreadable = self._calls, self._rows, self._unreadable
        self._calls, self._rows, self._unreadable = [], 0, None
        if unreadable is not None:
            raise ConfigError(
                f"gramian='one_pass': a {unreadable} of the encoder ran without gradients "
                "(activation checkpointing) or with its input by keyword; use gramian='explicit'"
            )
        names = list(losses)
        end = max((stop for _, stop in rows.values()), default=0)
        if end != batch:
            raise ConfigError(
                f"gramian='one_pass': the tasks' rows end at {end}, but the encoder ran over "
                f"{batch} rows this step"
            )
        total = torch.stack([losses[n] for n in names]).sum() * scale
        outputs = [c.output for c in calls]
        grads = torch.autograd.grad(
            total, [*outputs, *others], retain_graph=True, allow_unused=True
        )
        grads, self._other_grads = list(grads[: len(outputs)]), list(grads[len(outputs) :])
        self._kept = (calls, grads, names, rows, scale)
        spans = [rows.get(n) for n in names]
        per_param: dict[int, Tensor] = {}  # parameter -> [T, numel], only for repeated modules
        repeated = _repeated_modules(calls)
        if any(isinstance(m, nn.Embedding) for m in repeated):
            raise ConfigError(
                "gramian='one_pass': an embedding of the encoder ran twice in one step; use "
                "gramian='explicit'"
            )
        gram = torch.zeros(len(names), len(names), device=total.device)
        # Closed forms on the recorded inputs: no graph of their own, float32 under autocast.
        with torch.no_grad(), torch.autocast(total.device.type, enabled=False):
            for call, grad in zip(calls, grads, strict=True):
                if grad is None:
                    continue
                for param, rows_t in _per_task(call, grad.float(), spans):
                    if call.module in repeated:
                        key = id(param)
                        per_param[key] = per_param.get(key, 0) + rows_t
                    else:
                        gram += rows_t @ rows_t.T
            for rows_t in per_param.values():
                gram += rows_t @ rows_t.T
        return gram / scale**2

    def gradients(self, weights: Mapping[str, Tensor]) -> dict[nn.Parameter, Tensor]:
        """The update of the last :meth:`gramian`'s losses, per parameter: ``sum_t w_t g_t`` for
        the module's parameters (its tasks' rows scaled by ``weights``; a task not in
        ``weights`` gets 0) and the plain gradient of ``sum_t L_t`` for ``others``."""
        if self._kept is None:
            raise RuntimeError("OnePassGramian.gradients needs a gramian() of this step first")
        calls, grads, names, rows, scale = self._kept
        out: dict[nn.Parameter, Tensor] = {}
        device = next((g.device for g in grads if g is not None), torch.device("cpu"))
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for call, grad in zip(calls, grads, strict=True):
                if grad is None:
                    continue
                per_row = grad.new_zeros(grad.shape[0], dtype=torch.float32)
                for name in names:
                    if name in weights and name in rows:
                        start, stop = rows[name]
                        per_row[start:stop] = weights[name].float()
                scaled = grad.float() * per_row.reshape(-1, *([1] * (grad.dim() - 1)))
                for param, value in _update(call, scaled):
                    value = value / scale
                    out[param] = out[param] + value if param in out else value
            for param, value in zip(self._others, self._other_grads, strict=True):
                if value is not None:
                    value = value / scale
                    out[param] = out[param] + value if param in out else value
        self._kept, self._others, self._other_grads = None, [], []
        return out

    @property
    def has_gradients(self) -> bool:
        """Whether :meth:`gradients` can answer (a :meth:`gramian` of this step was taken)."""
        return self._kept is not None

    def _attach(self, module: nn.Module, trainable: tuple[int, ...]) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._calls, self._rows = [], [], 0
        self._module, self._trainable = module, trainable
        owners: dict[int, str] = {}
        for name, sub in module.named_modules():
            direct = [p for p in sub.parameters(recurse=False) if p.requires_grad]
            if not direct:
                continue
            if not isinstance(sub, SUPPORTED) or not _plain(sub):
                raise ConfigError(
                    f"gramian='one_pass' supports trainable parameters in nn.Linear, "
                    f"nn.LayerNorm and nn.Embedding (plain lookup); {name or 'the encoder'} is "
                    f"a {type(sub).__name__}: use gramian='explicit'"
                )
            for p in direct:
                if id(p) in owners:  # a tied parameter: per-module Gramians would miss terms
                    raise ConfigError(
                        f"gramian='one_pass': {name} shares a parameter with {owners[id(p)]}; "
                        "use gramian='explicit'"
                    )
                owners[id(p)] = name
            self._handles.append(sub.register_forward_hook(self._on_module))
        self._handles.append(module.register_forward_pre_hook(self._on_forward, with_kwargs=True))

    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not torch.is_grad_enabled():
            return
        ids = args[0] if args else kwargs.get("input_ids")
        self._calls, self._unreadable = [], None  # an untaken forward's record is dropped
        self._rows = int(ids.shape[0]) if isinstance(ids, Tensor) else 0

    def _on_module(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if not self._rows:
            return None
        if not torch.is_grad_enabled() or not args:
            # Inside a forward with gradients, a module ran without them (reentrant activation
            # checkpointing) or took its input by keyword: its output cannot be read back.
            self._unreadable = type(module).__name__
            return None
        inputs = args[0]
        if output.shape[0] != self._rows:
            if not (isinstance(module, nn.Embedding) and output.shape[0] == 1):
                raise ConfigError(
                    f"gramian='one_pass': a {type(module).__name__} of the encoder returned "
                    f"{output.shape[0]} rows for a batch of {self._rows}; use gramian='explicit'"
                )
            # One lookup broadcast over the batch (BERT's position embeddings): the same
            # values per row, so the backward pass gives each row its own gradient.
            output = output.expand(self._rows, *output.shape[1:])
            inputs = inputs.expand(self._rows, *inputs.shape[1:])
        self._calls.append(_Call(module, inputs, output))
        return output


class _Precomputed(torch.autograd.Function):
    """A loss whose backward pass hands each parameter a gradient computed already, times the
    incoming gradient (the fp16 loss scale, gradient accumulation's 1/N), so it accumulates into
    ``.grad`` through autograd as any loss would (DDP hooks, accumulation and clipping alike)."""

    @staticmethod
    def forward(ctx, value: Tensor, grads: tuple[Tensor, ...], *params: Tensor) -> Tensor:  # type: ignore[override]
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, upstream: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return (None, None, *(upstream * g for g in ctx.grads))


def precomputed_loss(value: Tensor, grads: Mapping[nn.Parameter, Tensor]) -> Tensor:
    """``value`` as a loss whose backward pass gives each parameter of ``grads`` its gradient
    (and nothing else): the step's update taken in :meth:`OnePassGramian.gradients`."""
    params = list(grads)
    return _Precomputed.apply(value, tuple(grads[p] for p in params), *params)


def _plain(module: nn.Module) -> bool:
    """An embedding whose backward is a plain scatter-add of the output gradients."""
    if isinstance(module, nn.Embedding):
        return module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
    if isinstance(module, nn.LayerNorm):
        return module.weight is None or module.weight.shape == module.normalized_shape
    return True


def _repeated_modules(calls: Sequence[_Call]) -> set[nn.Module]:
    seen: set[nn.Module] = set()
    repeated: set[nn.Module] = set()
    for call in calls:
        (repeated if call.module in seen else seen).add(call.module)
    return repeated


def _closed_form(
    module: nn.Module, x: Tensor, grad: Tensor, index: Tensor | None = None, columns: int = 0
) -> list[tuple[nn.Parameter, Tensor]]:
    """``(parameter, gradient)`` (float32) of ``module``'s trainable parameters from the inputs
    ``x`` and output gradients ``grad`` of some of its rows. An embedding's gradient is its
    table's, or with ``index`` (each id's place among ``columns`` looked-up ids) only those."""
    width = grad.shape[-1]
    g = grad.reshape(-1, width)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    out = []
    if weight is not None and weight.requires_grad:
        if isinstance(module, nn.Linear):
            value = g.T @ x.reshape(-1, x.shape[-1]).float()
        elif isinstance(module, nn.LayerNorm):
            normed = nn.functional.layer_norm(x.float(), module.normalized_shape, eps=module.eps)
            value = (g * normed.reshape(-1, width)).sum(0)
        else:  # nn.Embedding: a scatter-add; the padding row gets no gradient
            ids = x.reshape(-1)
            if module.padding_idx is not None:
                g = g * (ids != module.padding_idx).unsqueeze(-1)
            rows = ids if index is None else index.reshape(-1)
            value = g.new_zeros(len(weight) if index is None else columns, width)
            value.index_add_(0, rows, g)
        out.append((weight, value))
    if bias is not None and bias.requires_grad:
        out.append((bias, g.sum(0)))
    return out


def _per_task(
    call: _Call, grad: Tensor, spans: Sequence[tuple[int, int] | None]
) -> list[tuple[nn.Parameter, Tensor]]:
    """``(parameter, [T, numel])`` per trainable parameter of ``call.module``: row ``t`` is task
    ``t``'s gradient from its own rows (zero for a task without rows). For an embedding the
    columns are the looked-up ids only (every other row of its gradient is 0 for every task)."""
    module, x = call.module, call.inputs
    index, columns = None, 0
    if isinstance(module, nn.Embedding):
        used, index = torch.unique(x, return_inverse=True)
        columns = len(used)
    by_param: dict[nn.Parameter, dict[int, Tensor]] = {}
    for t, span in enumerate(spans):
        if span is None:
            continue
        start, stop = span
        rows = None if index is None else index[start:stop]
        for param, value in _closed_form(module, x[start:stop], grad[start:stop], rows, columns):
            by_param.setdefault(param, {})[t] = value.reshape(-1)
    out = []
    for param, by_task in by_param.items():
        stacked = grad.new_zeros(len(spans), next(iter(by_task.values())).numel())
        for t, value in by_task.items():
            stacked[t] = value
        out.append((param, stacked))
    return out


def _update(call: _Call, grad: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
    """``(parameter, gradient)`` of ``call.module``'s trainable parameters from the output
    gradient ``grad`` of all its rows, in the parameters' shapes and dtypes."""
    return [
        (param, value.reshape(param.shape).to(param.dtype))
        for param, value in _closed_form(call.module, call.inputs, grad)
    ]
