"""The gradient-aggregation contract.

Gradient-level multi-task methods look at the per-task gradients of the shared parameters (or of
the shared representation) and combine them into one update direction. This module holds only
the math: the model computes the per-task gradients, stacks them into a ``[T, P]`` matrix (one
row per task present in the step, in ``task_names`` order), calls
:meth:`GradientAggregator.aggregate` and writes the returned ``[P]`` direction into the ``.grad``
fields (Lightning manual optimisation).

Numerics: the input is cast to float32 first (bf16 / fp16 gradients are accepted), the ``T x T``
Gram matrix ``G G^T`` is accumulated in float64 (chunked, so no ``[T, P]`` float64 copy is made
and TF32 never applies) and moved to the CPU, where the small ``T``-dimensional sub-problems are
solved in float64. Only the final combination ``w @ G`` touches the ``[T, P]`` matrix again, in
float32 on its device. The outputs are float32 and detached.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

WorksOn = Literal["parameters", "representation"]

#: Columns of the gradient matrix turned into float64 at once when accumulating the Gram matrix.
GRAM_CHUNK = 1 << 20


@dataclass
class AggregatedGradient:
    """The result of one aggregation.

    Attributes:
        direction: The combined update, ``[P]`` float32 on the input's device. Descending along it
            (``param.grad = direction``) is the method's step.
        weights: ``[T]`` float32: the coefficients of the task gradients in ``direction``, i.e.
            ``direction == weights @ grads`` (up to float32 rounding), for every method here,
            projection methods included (PCGrad tracks its projections as coefficients). For
            representation-level methods (``works_on == "representation"``) these are the loss
            weights to back-propagate ``sum_t w_t L_t`` through the whole model.
        tasks: The task name of each row / weight.
    """

    direction: Tensor
    weights: Tensor
    tasks: list[str]

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

    Subclasses implement :meth:`_aggregate` (or, for methods whose update is a weighted sum of the
    task gradients with weights computed from the Gram matrix, subclass
    :class:`GramianAggregator` and implement :meth:`GramianAggregator.weights_from_gram`).

    Randomness (PCGrad's task order) comes only from :attr:`generator`, a CPU
    :class:`torch.Generator` seeded with ``seed`` whose state is saved in the module's
    ``state_dict`` (``get_extra_state``), so a resumed run continues the exact random stream.

    Args:
        seed: Seed of :attr:`generator`.
    """

    #: Gradient methods need the gradient of every task in every step (``mixed`` batches).
    needs_all_tasks: ClassVar[bool] = True
    #: What the rows of ``grads`` are gradients of: the shared parameters, or the shared
    #: representation (the encoder output), as MGDA-UB.
    works_on: ClassVar[WorksOn] = "parameters"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.task_names: list[str] = []
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

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
        """Combines per-task gradients into one update direction.

        Args:
            grads: ``[T, P]`` per-task gradients (any float dtype; cast to float32), one row per
                task present in the step.
            losses: The ``T`` task losses (values only), needed when :attr:`needs_losses`.
                A mapping is read in row order by task name.
            tasks: The task name of each row, in ``task_names`` order. Defaults to all
                ``task_names`` (then ``T`` must equal their number).

        Returns:
            The float32 direction ``[P]`` and the ``[T]`` weights it implies.
        """
        if grads.ndim != 2 or grads.shape[0] == 0:
            raise ValueError(f"grads must be a non-empty [T, P] matrix, got shape {grads.shape}")
        names = self._row_names(grads.shape[0], tasks)
        loss_vec = self._loss_vector(losses, names)
        if self.needs_losses and loss_vec is None:
            raise ValueError(f"{type(self).__name__} needs the task losses")
        g = grads.detach().to(torch.float32)
        # Under bf16/fp16 autocast a matmul here would run in half precision (and solvers that
        # go through numpy reject bf16): the Gram matrix and the solve are always float32/64.
        with torch.autocast(device_type=g.device.type, enabled=False):
            direction, weights = self._aggregate(g, loss_vec)
        return AggregatedGradient(direction, weights, names)

    @abstractmethod
    def _aggregate(self, grads: Tensor, losses: Tensor | None) -> tuple[Tensor, Tensor]:
        """Returns ``(direction [P], weights [T])`` for float32 ``grads``; ``losses`` is float64
        ``[T]`` on the CPU or None."""

    # ----------------------------------------------------------------------------------- state

    def get_extra_state(self) -> Any:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])

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
    """A method whose update is ``w @ G`` with ``w`` a function of the Gram matrix ``G G^T``.

    Every method of the package but Nash-MTL is of this kind; working in the ``T x T`` Gram space
    makes the solvers independent of the number of parameters.
    """

    def _aggregate(self, grads: Tensor, losses: Tensor | None) -> tuple[Tensor, Tensor]:
        gram = gram_matrix(grads)
        weights = self.weights_from_gram(gram, losses)
        weights = weights.to(device=grads.device, dtype=torch.float32)
        return weights @ grads, weights

    @abstractmethod
    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        """``[T]`` float64 weights from the float64 CPU Gram matrix ``gram[i, j] = g_i . g_j``."""


def min_norm_point(gram: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """Weights ``w`` (on the simplex) of the minimum-norm point of the convex hull of vectors whose
    Gram matrix is ``gram``: ``argmin_w w^T gram w``.

    Wolfe's exact active-set algorithm ("Finding the nearest point in a polytope", Mathematical
    Programming 1976), in float64: finitely many steps, unlike Frank-Wolfe. Used by CAGrad and to
    check MGDA's Frank-Wolfe solver.

    Identical vectors (``||p_i - p_j||^2 <= 1e-12 max_i ||p_i||^2``) are merged first and share
    their weight equally, so that the (then non-unique) solution stays symmetric.
    """
    t = gram.shape[0]
    scale = float(np.max(np.diag(gram)))
    if t == 1 or scale <= 0:
        return np.full(t, 1.0 / t)
    diag = np.diag(gram)
    dist2 = diag[:, None] + diag[None, :] - 2 * gram
    group = np.full(t, -1)
    reps: list[int] = []
    for i in range(t):
        if group[i] < 0:
            group[(group < 0) & (dist2[i] <= 1e-12 * scale)] = len(reps)
            group[i] = len(reps)
            reps.append(i)
    if len(reps) < t:
        w_reps = _wolfe(gram[np.ix_(reps, reps)], tol)
        sizes = np.bincount(group, minlength=len(reps))
        return w_reps[group] / sizes[group]
    return _wolfe(gram, tol)


def _wolfe(gram: np.ndarray, tol: float) -> np.ndarray:
    t = gram.shape[0]
    scale = float(np.max(np.diag(gram)))
    if t == 1 or scale <= 0:
        return np.full(t, 1.0 / t)
    support = [int(np.argmin(np.diag(gram)))]
    lam = np.ones(1)
    max_iter = 50 * t
    for _ in range(max_iter):
        w = np.zeros(t)
        w[support] = lam
        gw = gram @ w
        j = int(np.argmin(gw))
        if gw[j] >= w @ gw - tol * scale or j in support:
            break
        support.append(j)
        lam = np.append(lam, 0.0)
        for _ in range(max_iter):
            idx = np.array(support)
            mu = _affine_min_norm(gram[np.ix_(idx, idx)])
            if np.all(mu > 1e-15):
                lam = mu
                break
            # Move from lam towards mu until a weight hits zero; drop it from the support.
            neg = mu <= 1e-15
            theta = float(np.min(lam[neg] / (lam[neg] - mu[neg])))
            lam = lam + theta * (mu - lam)
            keep = lam > 1e-15
            if keep.all():
                keep[np.argmin(lam)] = False
            support = [s for s, k in zip(support, keep, strict=True) if k]
            lam = lam[keep] / lam[keep].sum()
    w = np.zeros(t)
    w[support] = lam
    return w


def _affine_min_norm(gram: np.ndarray) -> np.ndarray:
    """``argmin_mu mu^T gram mu`` s.t. ``sum(mu) = 1`` (no sign constraint), via its KKT system."""
    n = gram.shape[0]
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = gram
    kkt[:n, n] = 1.0
    kkt[n, :n] = 1.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    return sol[:n]
