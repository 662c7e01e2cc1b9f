"""MGDA and MGDA-UB: the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from mtlkit.weighting.gradient.base import GramianAggregator, WorksOn
from mtlkit.weighting.gradient.min_norm import min_norm_point

Normalization = Literal["none", "l2", "loss", "loss+"]
Solver = Literal["exact", "frank_wolfe"]


def frank_wolfe_min_norm(
    gram: Tensor, max_iter: int = 250, stop_crit: float = 1e-5
) -> tuple[Tensor, int]:
    r"""Sener & Koltun 2018, Algorithm 2: Frank-Wolfe for
    :math:`\min_{\alpha \in \Delta} \lVert \sum_t \alpha_t \theta_t \rVert^2` on a Gram matrix.

    Starting from :math:`\alpha = \frac1T \mathbf 1`: pick
    :math:`\hat t = \arg\min_r \sum_t \alpha_t\, \theta_r \cdot \theta_t`, get
    :math:`\hat\gamma = \arg\min_\gamma \lVert (1-\gamma)\theta + \gamma \theta_{\hat t} \rVert`
    (:math:`\theta = \sum_t \alpha_t \theta_t`) in closed form by Algorithm 1, and set
    :math:`\alpha \leftarrow (1 - \hat\gamma)\alpha + \hat\gamma e_{\hat t}`; stop when
    :math:`\lVert \Delta\alpha \rVert_1 <` ``stop_crit`` (the official code's 1e-5, 250 iterations).

    Algorithm 1 (``min_gamma ||gamma a + (1 - gamma) b||``): ``gamma = 1`` if ``a.b >= a.a``,
    ``0`` if ``a.b >= b.b``, else ``((b - a).b) / ||a - b||^2``. A segment of (numerically) zero
    length stops the loop, so equal gradients keep equal weights.

    Returns the weights and the number of iterations run.
    """
    t = gram.shape[0]
    alpha = torch.full((t,), 1.0 / t, dtype=gram.dtype)
    scale = float(gram.diagonal().max()) if t else 0.0
    if t == 1 or scale <= 0:
        return alpha, 0
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        g_alpha = gram @ alpha
        t_hat = int(torch.argmin(g_alpha))
        aa = float(alpha @ g_alpha)  # theta . theta
        ab = float(g_alpha[t_hat])  # theta . theta_t
        bb = float(gram[t_hat, t_hat])  # theta_t . theta_t
        dist2 = aa + bb - 2 * ab
        if ab >= aa or dist2 <= 1e-12 * scale:
            gamma = 0.0  # Algorithm 1's gamma = 1 on theta: stay
        elif ab >= bb:
            gamma = 1.0  # jump to the vertex
        else:
            gamma = (aa - ab) / dist2  # weight of theta_t: 1 - ((theta_t - theta).theta_t)/dist2
        new = (1 - gamma) * alpha
        new[t_hat] += gamma
        change = float((new - alpha).abs().sum())
        alpha = new
        if change < stop_crit:
            break
    return alpha, it


class MGDA(GramianAggregator):
    r"""MGDA, Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization"
    (NeurIPS).

    The common descent direction is the minimum-norm point of the convex hull of the (optionally
    normalised) task gradients :math:`\hat g_t = g_t / n_t` (paper, Eq. 3):

    .. math::

        \min_{\alpha \in \Delta^T} \Big\lVert \sum_t \alpha_t \hat g_t \Big\rVert^2,

    solved on the Gram matrix by Wolfe's exact active-set algorithm (``solver="exact"``, default,
    :func:`~mtlkit.weighting.gradient.base.min_norm_point`) or by the paper's Frank-Wolfe loop
    (``solver="frank_wolfe"``, :func:`frank_wolfe_min_norm`, as the official code), which stops
    when the weights move by less than ``stop_crit``: on rank-deficient or very unequal-norm
    gradients that can be far from the min-norm point (a rank-2, 3-task case: squared norm 2.60
    where the minimum is 1.57). For two tasks both give the closed form
    :math:`\alpha_1 = \mathrm{clip}_{[0,1]}\big(((g_2 - g_1) \cdot g_2) /
    \lVert g_1 - g_2 \rVert^2\big)`.

    ``normalization`` follows ``gradient_normalizers`` of the official code
    (``isl-org/MultiObjectiveOptimization``): ``"none"`` :math:`n_t = 1` (default, the paper),
    ``"l2"`` :math:`n_t = \lVert g_t \rVert`, ``"loss"`` :math:`n_t = L_t`, ``"loss+"``
    :math:`n_t = L_t \lVert g_t \rVert` (the loss modes need ``losses`` in
    :meth:`aggregate`). As in the official training loop, the solution :math:`\alpha` then scales
    the *unnormalised* task losses, so the update is :math:`\sum_t \alpha_t g_t` and the reported
    weights are :math:`\alpha` (LibMTL instead combines the normalised gradients, i.e. weights
    :math:`\alpha_t / n_t`). Weights sum to 1.

    Why not torchjd's ``MGDAWeighting``: it is the Frank-Wolfe loop (stopping when the step
    falls below 1e-3, at most 100 iterations), which on the rank-2 case of
    ``tests/test_aggregator_references.py`` stops at squared norm 27.9 where the minimum (Wolfe's
    algorithm here, and a conic solver) is 6.1e-3; it also has no gradient normalisations.

    Args:
        normalization: Gradient normalisation before solving, see above.
        solver: ``"exact"`` or ``"frank_wolfe"``.
        max_iter: Frank-Wolfe iteration cap.
        stop_crit: Frank-Wolfe stops when the weights move by less than this (L1).
    """

    def __init__(
        self,
        normalization: Normalization = "none",
        solver: Solver = "exact",
        max_iter: int = 250,
        stop_crit: float = 1e-5,
    ) -> None:
        super().__init__()
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(
                f"normalization must be 'none', 'l2', 'loss' or 'loss+', got {normalization!r}"
            )
        if solver not in ("exact", "frank_wolfe"):
            raise ValueError(f"solver must be 'exact' or 'frank_wolfe', got {solver!r}")
        self.normalization = normalization
        self.solver = solver
        self.max_iter = int(max_iter)
        self.stop_crit = float(stop_crit)

    @property
    def needs_losses(self) -> bool:
        return self.normalization in ("loss", "loss+")

    def normalizers(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        """The per-task :math:`n_t` of ``normalization`` (float64)."""
        t = gram.shape[0]
        norms = torch.sqrt(torch.clamp(gram.diagonal(), min=0))
        if self.normalization == "none":
            return torch.ones(t, dtype=gram.dtype)
        if self.normalization == "l2":
            n = norms
        else:
            if losses is None:
                raise ValueError(f"normalization={self.normalization!r} needs the task losses")
            if (losses < 0).any():
                raise ValueError(f"normalization={self.normalization!r} needs losses >= 0")
            n = losses.to(gram.dtype) * (norms if self.normalization == "loss+" else 1.0)
        # A zero normaliser goes with a zero gradient (or a zero loss): leave that row as it is.
        return torch.where(n > 0, n, torch.ones_like(n))

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        n = self.normalizers(gram, losses)
        normalized = gram / torch.outer(n, n)
        if self.solver == "exact":
            return torch.from_numpy(min_norm_point(normalized.numpy()))
        alpha, _ = frank_wolfe_min_norm(normalized, self.max_iter, self.stop_crit)
        return alpha


class MGDAUB(MGDA):
    r"""MGDA-UB, Sener & Koltun 2018, Sec. 3.3: MGDA applied to the gradients of the task losses
    w.r.t. the shared *representation* :math:`Z` instead of the shared parameters.

    Theorem 1 of the paper bounds the parameter-level objective by
    :math:`\lVert \partial Z / \partial \theta \rVert^2 \,
    \lVert \sum_t \alpha_t \nabla_Z L_t \rVert^2`, so minimising the upper bound is the same
    min-norm problem (same solver, same normalisations) on rows :math:`\nabla_Z L_t` (flattened
    ``[batch * ...]``), which needs one backward pass through the encoder instead of :math:`T`.
    The model back-propagates :math:`\sum_t \alpha_t L_t` with the returned ``weights``; the
    returned direction is the combined representation gradient.
    """

    works_on: ClassVar[WorksOn] = "representation"
