"""Thin wrappers of torchjd aggregators (UPGrad, Nash-MTL): torchjd does the math, these classes
own only the integration (Gram matrix, float32 / float64 handling, weights, state)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchjd.aggregation import NashMTL as _TorchJDNashMTL
from torchjd.aggregation import UPGradWeighting
from torchjd.linalg import DualConeProjector, QuadprogProjector

from mtlkit._compat import rebuild_nash_problem
from mtlkit.weighting.gradient.base import GradientAggregator, GramianAggregator


class NNLSDualConeProjector(DualConeProjector):
    r"""A dependency-free :class:`torchjd.linalg.DualConeProjector`.

    Solves, for each row :math:`u` of ``U``, the same quadratic program as torchjd's default
    :class:`~torchjd.linalg.QuadprogProjector`,

    .. math::  \min_v\; v^\top G v \quad \text{s.t.} \quad v \succeq u,

    with the same preprocessing (``G`` divided by its trace, then ``reg_eps * I`` added), but
    exactly, in float64, by the Lawson-Hanson active-set NNLS algorithm on :math:`x = v - u \ge 0`
    (:math:`\min_{x \ge 0} x^\top G x + 2 (G u)^\top x`) instead of the optional ``quadprog`` /
    ``qpsolvers`` packages, which torchjd does not install by default.
    """

    def __init__(self, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:  # noqa: N803 (torchjd's names)
        g = G.detach().cpu().to(torch.float64).numpy()
        trace = float(np.trace(g))
        g = g / trace if trace >= self.norm_eps else np.zeros_like(g)
        g = g + self.reg_eps * np.eye(g.shape[0])
        u = U.detach().cpu().to(torch.float64).numpy()
        flat = u.reshape(-1, u.shape[-1])
        out = np.stack([u_row + _nnls_gram(g, -(g @ u_row)) for u_row in flat])
        return torch.as_tensor(out.reshape(u.shape), device=G.device, dtype=G.dtype)


def _nnls_gram(ata: np.ndarray, atb: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Lawson & Hanson (1974) NNLS, ``min_{x >= 0} ||A x - b||^2``, given ``A^T A`` (positive
    definite) and ``A^T b``: ``min_{x >= 0} x^T ata x - 2 atb^T x``."""
    n = ata.shape[0]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * n * np.finfo(np.float64).eps * max(float(np.abs(atb).max()), 1e-300)
    max_iter = max_iter or 3 * n + 10
    grad = atb - ata @ x
    for _ in range(max_iter):
        candidates = np.where(~passive & (grad > tol))[0]
        if candidates.size == 0:
            break
        passive[candidates[np.argmax(grad[candidates])]] = True
        while True:
            s = np.zeros(n)
            idx = np.where(passive)[0]
            s[idx] = np.linalg.solve(ata[np.ix_(idx, idx)], atb[idx])
            if np.all(s[idx] > 0):
                break
            # Step from x towards s until a passive weight hits zero, and release it.
            bad = idx[s[idx] <= 0]
            denom = x[bad] - s[bad]
            ratios = np.divide(x[bad], denom, out=np.zeros_like(denom), where=denom > 0)
            k = int(np.argmin(ratios))
            x = x + ratios[k] * (s - x)
            x[bad[k]] = 0.0
            passive &= x > tol
            passive[bad[k]] = False
            x[~passive] = 0.0
            if not passive.any():
                s = np.zeros(n)
                break
        x = s
        grad = atb - ata @ x
    return x


class UPGrad(GramianAggregator):
    r"""UPGrad, Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", through
    :class:`torchjd.aggregation.UPGradWeighting`.

    Each task gradient is projected onto the dual cone of all task gradients (the set of
    directions with a non-negative inner product with every :math:`g_t`), and the projections
    are combined with the preference vector (default :math:`\frac1T \mathbf 1`, so the update is
    a mean): :math:`w = \sum_t \pi(e_t / T)` in Gram space, update :math:`G^\top w`. The update
    therefore never conflicts with any task: :math:`g_t \cdot G^\top w \ge 0` (up to the
    ``reg_eps`` regularisation of the projector).

    torchjd's weighting runs on the float64 Gram matrix. Its default projector needs the
    optional ``quadprog`` and ``qpsolvers`` packages
    (``pip install "torchjd[quadprog_projector]"``); ``projector="nnls"`` (default) uses
    :class:`NNLSDualConeProjector`, the same program solved without them;
    ``projector="quadprog"`` uses torchjd's.

    Args:
        pref_vector: Optional preference vector (one weight per gradient row).
        projector: ``"nnls"`` or ``"quadprog"``.
    """

    def __init__(
        self,
        pref_vector: Sequence[float] | None = None,
        projector: Literal["nnls", "quadprog"] = "nnls",
    ) -> None:
        super().__init__()
        if projector == "nnls":
            proj: DualConeProjector = NNLSDualConeProjector()
        elif projector == "quadprog":
            proj = QuadprogProjector()
        else:
            raise ValueError(f"projector must be 'nnls' or 'quadprog', got {projector!r}")
        pref = None if pref_vector is None else torch.tensor(pref_vector, dtype=torch.float64)
        self.torchjd_weighting = UPGradWeighting(pref, projector=proj)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        return self.torchjd_weighting(gram).to(torch.float64)


_NASH_DEPS = ("cvxpy", "ecos")


class NashMTL(GradientAggregator):
    r"""Nash-MTL, Navon et al. 2022, "Multi-Task Learning as a Bargaining Game" (ICML),
    Algorithm 1, through :class:`torchjd.aggregation.NashMTL`.

    The weights solve the bargaining condition :math:`G G^\top \alpha = 1 / \alpha` (elementwise)
    by the paper's sequence of convex programs (cvxpy + ECOS), warm-started from the previous
    step's weights; the update :math:`G^\top \alpha` is rescaled so that its norm is at most
    ``max_norm`` (0 disables). A step in which a task's gradient is zero (bargaining undefined)
    keeps the previous step's weights (uniform ones before the first solve), as the reference
    code and torchjd do, without advancing the solver. Stateful: the previous weights and the
    step counter are saved in the module's ``state_dict``. Needs every task in every step
    (``T`` fixed at :meth:`setup`).

    Raises:
        ImportError: when ``cvxpy`` / ``ecos`` are missing
            (``pip install "torchjd[nash_mtl]"``, i.e. ``pip install cvxpy ecos``).
    """

    def __init__(
        self,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
    ) -> None:
        missing = [name for name in _NASH_DEPS if find_spec(name) is None]
        if missing:
            raise ImportError(
                f'NashMTL needs the packages {missing}: pip install "torchjd[nash_mtl]" '
                "(or pip install cvxpy ecos)"
            )
        super().__init__()
        self.max_norm = float(max_norm)
        self.update_weights_every = int(update_weights_every)
        self.optim_niter = int(optim_niter)
        self._nash: _TorchJDNashMTL | None = None

    def setup(self, task_names: Sequence[str]) -> None:
        super().setup(task_names)
        self._build(len(self.task_names))

    def _build(self, n_tasks: int) -> None:
        self._nash = _TorchJDNashMTL(
            n_tasks=n_tasks,
            max_norm=self.max_norm,
            update_weights_every=self.update_weights_every,
            optim_niter=self.optim_niter,
        )

    def _weights(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        if self._nash is None:
            self._build(grads.shape[0])
        assert self._nash is not None
        nash = self._nash
        if grads.shape[0] not in (1, nash.n_tasks):
            # Mixed batches draw each step's task counts at random, so a small task can be
            # absent: bargain over the tasks present, with a one-off solver (the warm-started
            # one keeps its task count and state for the full steps).
            nash = _TorchJDNashMTL(
                n_tasks=grads.shape[0], max_norm=self.max_norm, optim_niter=self.optim_niter
            )
        if not bool((grads.norm(dim=1) > 0).all()):
            # Nash bargaining is undefined when a task has no gradient (its utility log(g_t.d)
            # is -inf for every d). The reference implementation (AvivNavon/nash-mtl) and
            # torchjd then keep the previous step's weights (their solver fails on the zero row
            # and falls back to them): so does this, rescaled to max_norm as usual; the solver's
            # warm start and step counter are left as they were.
            alpha = torch.as_tensor(np.asarray(nash.weighting.prvs_alpha, dtype=np.float64))
            weights = alpha.to(device=grads.device, dtype=torch.float32)
            return self._clip(weights, grads)
        if grads.shape[0] == 1:  # the bargaining solution alpha ||g||^2 = 1/alpha, in closed form
            return 1.0 / grads.norm(dim=1)
        return nash.weighting(grads).to(device=grads.device, dtype=torch.float32)

    def _clip(self, weights: Tensor, grads: Tensor) -> Tensor:
        """torchjd's ``max_norm`` rule: scale ``w`` so that ``||w @ G|| <= max_norm``."""
        norm = (weights @ grads).norm()
        if self.max_norm > 0 and norm > self.max_norm:
            weights = weights / norm * self.max_norm
        return weights

    def get_extra_state(self) -> Any:
        state: dict[str, Any] = {}
        if self._nash is not None:
            w = self._nash.weighting
            state["nash"] = {
                "n_tasks": self._nash.n_tasks,
                "step": float(w.step),
                # In its own dtype: float32 before the first solve, float64 (cvxpy's) after.
                "prvs_alpha": torch.from_numpy(np.array(w.prvs_alpha)),
            }
        return state

    def set_extra_state(self, state: Any) -> None:
        nash = state.get("nash")  # checkpoints from before also hold an unused seed/generator
        if nash is None:
            return
        self._build(int(nash["n_tasks"]))
        assert self._nash is not None
        w = self._nash.weighting
        w.prvs_alpha = nash["prvs_alpha"].numpy().copy()
        w.step = float(nash["step"])
        if w.step > 0:
            # torchjd builds its cvxpy problem at step 0 only, from prvs_alpha: rebuild it.
            rebuild_nash_problem(w)
