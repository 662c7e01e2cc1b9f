"""The gradient-aggregation contract.

Gradient-level multi-task methods look at the per-task gradients of the shared parameters (or of
the shared representation) and turn them into one weight per task: the update is
``direction = weights @ G``. This module holds only the math. In training,
:class:`~mtlkit.weighting.GradientWeighting` stacks the per-task gradients into a ``[T, P]`` matrix
(one row per task present in the step, in ``task_names`` order), calls
:meth:`GradientAggregator.aggregate`, and back-propagates ``sum_t w_t L_t`` with the returned
weights (Lightning's automatic optimisation): the shared parameters then receive exactly
``weights @ G``, which is therefore never formed in the training path.
:attr:`AggregatedGradient.direction` (or :func:`combine`) forms it on request, for tests and
diagnostics.

As in torchjd (``aggregation/_weighting_bases.py``) most methods are "Gramian -> weights"
(:class:`GramianAggregator`): the weights are a function of the ``T x T`` matrix ``G G^T`` only,
so they can also be computed from a Gramian obtained without the ``[T, P]`` matrix
(:meth:`GramianAggregator.aggregate_gramian`).

Numerics: the input is cast to float32 first (bf16 / fp16 gradients are accepted), the ``T x T``
Gram matrix ``G G^T`` is accumulated in float64 (chunked, so no ``[T, P]`` float64 copy is made
and TF32 never applies) and moved to the CPU, where the small ``T``-dimensional sub-problems are
solved in float64. The weights are float32 and detached.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

WorksOn = Literal["parameters", "representation"]

#: Columns of the gradient matrix turned into float64 at once when accumulating the Gram matrix.
GRAM_CHUNK = 1 << 20


def combine(weights: Tensor, grads: Tensor) -> Tensor:
    """The update ``weights @ grads`` (``[P]`` float32 on the gradients' device)."""
    return weights.to(device=grads.device, dtype=torch.float32) @ grads.to(torch.float32)


@dataclass
class AggregatedGradient:
    """The result of one aggregation.

    Attributes:
        weights: ``[T]`` float32: the coefficients of the task gradients in the method's update,
            ``direction == weights @ grads``, for every method here, projection methods included
            (PCGrad tracks its projections as coefficients). For representation-level methods
            (``works_on == "representation"``) these are the loss weights to back-propagate
            ``sum_t w_t L_t`` through the whole model.
        tasks: The task name of each row / weight.
        grads: The float32 ``[T, P]`` input (None when aggregated from a Gramian).
    """

    weights: Tensor
    tasks: list[str]
    grads: Tensor | None = field(default=None, repr=False)
    _direction: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def direction(self) -> Tensor:
        """The update ``weights @ grads``, ``[P]`` float32 on the input's device, formed on first
        access (training never needs it: back-propagating ``sum_t w_t L_t`` gives it)."""
        if self._direction is None:
            if self.grads is None:
                raise ValueError("aggregated from a Gramian: there is no [T, P] matrix to combine")
            with torch.autocast(device_type=self.grads.device.type, enabled=False):
                self._direction = combine(self.weights, self.grads)
        return self._direction

    @property
    def weights_by_task(self) -> dict[str, Tensor]:
        """``{task: weight}`` (0-d tensors)."""
        return {t: self.weights[i] for i, t in enumerate(self.tasks)}


def gram_matrix(grads: Tensor, chunk: int = GRAM_CHUNK) -> Tensor:
    """``grads @ grads.T`` accumulated in float64, returned on the CPU (``[T, T]`` float64).

    The columns are processed in chunks so that the float64 copy never exceeds ``T x chunk``.
    Devices without float64 (MPS) fall back to a float32 product.
    """
    if grads.device.type == "mps":
        return (grads.float() @ grads.float().T).cpu().double()
    t = grads.shape[0]
    gram = torch.zeros(t, t, dtype=torch.float64, device=grads.device)
    for start in range(0, grads.shape[1], chunk):
        block = grads[:, start : start + chunk].double()
        gram += block @ block.T
    gram = (gram + gram.T) / 2
    return gram.cpu()


class GradientAggregator(nn.Module, ABC):
    """Base class of gradient-level multi-task methods.

    Subclasses implement :meth:`_weights` (or, for methods whose weights are a function of the
    Gram matrix, subclass :class:`GramianAggregator` and implement
    :meth:`GramianAggregator.weights_from_gram`). Methods with state (PCGrad's random generator,
    Nash-MTL's warm start) keep it in ``get_extra_state``, so that a resumed run continues exactly.
    """

    #: Gradient methods need the gradient of every task in every step (``mixed`` batches).
    needs_all_tasks: ClassVar[bool] = True
    #: What the rows of ``grads`` are gradients of: the shared parameters, or the shared
    #: representation (the encoder output), as MGDA-UB.
    works_on: ClassVar[WorksOn] = "parameters"

    def __init__(self) -> None:
        super().__init__()
        self.task_names: list[str] = []

    @property
    def needs_losses(self) -> bool:
        """True when :meth:`aggregate` must be given the task losses (MGDA's loss normalisation)."""
        return False

    def setup(self, task_names: Sequence[str]) -> None:
        """Called once by the model with all task names, in the order of the rows of ``grads``."""
        self.task_names = list(task_names)

    def forward(
        self,
        grads: Tensor,
        losses: Tensor | Sequence[float | Tensor] | Mapping[str, float | Tensor] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> AggregatedGradient:
        """Same as :meth:`aggregate`."""
        return self.aggregate(grads, losses, tasks)

    @torch.no_grad()
    def aggregate(
        self,
        grads: Tensor,
        losses: Tensor | Sequence[float | Tensor] | Mapping[str, float | Tensor] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> AggregatedGradient:
        """The per-task weights of the method's update ``weights @ grads``.

        Args:
            grads: ``[T, P]`` per-task gradients (any float dtype; cast to float32), one row per
                task present in the step.
            losses: The ``T`` task losses (values only), needed when :attr:`needs_losses`.
                A mapping is read in row order by task name.
            tasks: The task name of each row, in ``task_names`` order. Defaults to all
                ``task_names`` (then ``T`` must equal their number).

        Returns:
            The ``[T]`` float32 weights (the direction is formed only on request).
        """
        if grads.ndim != 2 or grads.shape[0] == 0:
            raise ValueError(f"grads must be a non-empty [T, P] matrix, got shape {grads.shape}")
        names = self._row_names(grads.shape[0], tasks)
        loss_vec = self._checked_losses(losses, names)
        g = grads.detach().to(torch.float32)
        # Under bf16/fp16 autocast a matmul here would run in half precision (and solvers that
        # go through numpy reject bf16): the Gram matrix and the solve are always float32/64.
        with torch.autocast(device_type=g.device.type, enabled=False):
            weights = self._weights(g, loss_vec).to(device=g.device, dtype=torch.float32)
        return AggregatedGradient(weights, names, g)

    @abstractmethod
    def _weights(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        """``[T]`` weights for float32 ``grads``; ``losses`` is float64 ``[T]`` on the CPU or
        None."""

    # ----------------------------------------------------------------------------------- state

    def get_extra_state(self) -> Any:
        # Kept (empty) so that checkpoints written when every aggregator carried a seed and a
        # generator still load with strict=True; stateful methods override both.
        return {}

    def set_extra_state(self, state: Any) -> None:
        """Stateless: a legacy ``{"seed", "generator"}`` entry is ignored."""

    # --------------------------------------------------------------------------------- helpers

    def _row_names(self, t: int, tasks: Sequence[str] | None) -> list[str]:
        if tasks is None:
            if not self.task_names:
                return [f"task_{i}" for i in range(t)]
            if len(self.task_names) != t:
                raise ValueError(
                    f"grads has {t} rows but {len(self.task_names)} tasks were set up; pass "
                    "`tasks` to name the rows of a partial step"
                )
            return list(self.task_names)
        names = list(tasks)
        if len(names) != t:
            raise ValueError(f"grads has {t} rows but {len(names)} task names were given")
        if self.task_names:
            unknown = [n for n in names if n not in self.task_names]
            if unknown:
                raise ValueError(f"unknown tasks {unknown}; set up with {self.task_names}")
            positions = [self.task_names.index(n) for n in names]
            if positions != sorted(set(positions)):
                raise ValueError(f"tasks must be distinct and in set-up order, got {names}")
        return names

    def _checked_losses(
        self,
        losses: Tensor | Sequence[float | Tensor] | Mapping[str, float | Tensor] | None,
        names: list[str],
    ) -> Tensor | None:
        loss_vec = self._loss_vector(losses, names)
        if self.needs_losses and loss_vec is None:
            raise ValueError(f"{type(self).__name__} needs the task losses")
        return loss_vec

    @staticmethod
    def _loss_vector(
        losses: Tensor | Sequence[float | Tensor] | Mapping[str, float | Tensor] | None,
        names: list[str],
    ) -> Tensor | None:
        if losses is None:
            return None
        if isinstance(losses, Mapping):
            losses = [losses[n] for n in names]
        if isinstance(losses, Tensor):
            vec = losses.detach().reshape(-1)
        else:
            vec = torch.stack([torch.as_tensor(v).detach().reshape(()).cpu() for v in losses])
        if vec.numel() != len(names):
            raise ValueError(f"got {vec.numel()} losses for {len(names)} gradient rows")
        return vec.to(device="cpu", dtype=torch.float64)


class GramianAggregator(GradientAggregator):
    """A method whose update is ``w @ G`` with ``w`` a function of the Gram matrix ``G G^T``
    (torchjd's "Gramian -> weights").

    Every method of the package but Nash-MTL is of this kind; working in the ``T x T`` Gram space
    makes the solvers independent of the number of parameters, and lets the weights come from a
    Gramian computed without the ``[T, P]`` matrix (:meth:`aggregate_gramian`).
    """

    def _weights(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        return self.weights_from_gram(gram_matrix(grads), losses)

    @torch.no_grad()
    def aggregate_gramian(
        self,
        gram: Tensor,
        losses: Tensor | Sequence[float | Tensor] | Mapping[str, float | Tensor] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> AggregatedGradient:
        """The weights from a ``[T, T]`` Gramian ``G G^T`` (any device and float dtype; solved
        in float64 on the CPU, as :meth:`aggregate`). The result has no ``direction``."""
        if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
            raise ValueError(f"gram must be a non-empty [T, T] matrix, got shape {gram.shape}")
        names = self._row_names(gram.shape[0], tasks)
        loss_vec = self._checked_losses(losses, names)
        g64 = gram.detach().to(device="cpu", dtype=torch.float64)
        with torch.autocast(device_type="cpu", enabled=False):
            weights = self.weights_from_gram((g64 + g64.T) / 2, loss_vec)
        return AggregatedGradient(weights.to(device=gram.device, dtype=torch.float32), names)

    @abstractmethod
    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        """``[T]`` float64 weights from the float64 CPU Gram matrix ``gram[i, j] = g_i . g_j``."""
