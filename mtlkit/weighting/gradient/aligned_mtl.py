"""Aligned-MTL: independent component alignment of the task gradients."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mtlkit.weighting.gradient.base import GramianAggregator


class AlignedMTL(GramianAggregator):
    r"""Aligned-MTL, Senushkin et al. 2023, "Independent Component Alignment for Multi-Task
    Learning" (CVPR), Algorithm 1.

    The gradient system :math:`G` (rows :math:`g_t`) is replaced by the closest (Procrustes)
    system with orthogonal, equal-norm components, whose condition number is 1. With the
    eigen-decomposition of the Gram matrix :math:`M = G G^\top = V \Lambda V^\top` (rank
    :math:`R`, eigenvalues :math:`\lambda_1 \ge \dots \ge \lambda_R > 0`) and
    :math:`\Sigma = \Lambda^{1/2}` (the singular values of :math:`G`):

    .. math::

        B = \sqrt{\lambda_R}\; V \Sigma^{-1} V^\top, \qquad \hat G^\top = G^\top B,
        \qquad \alpha = B \mathbf 1, \qquad \theta \leftarrow \theta - \eta\, G^\top \alpha,

    i.e. the aligned gradients are rescaled to the smallest singular value ("min"); the update is
    the sum of the aligned gradients, as ``grads.sum(-1)`` / ``weights.sum(-1)`` in the official
    code (``SamsungLabs/MTL``) and ``alpha = B.sum(0)`` in LibMTL. ``scale_mode`` ``"median"``
    / ``"rmse"`` use the median / mean eigenvalue instead of :math:`\lambda_R`, as the official
    code. Eigenvalues below ``rtol * lambda_1`` are dropped (rank truncation; the official code
    uses ``T * eps_float32``); an all-zero system gives weights 1.

    For orthogonal gradients :math:`\alpha_t = \sigma_{min} / \lVert g_t \rVert`: the update
    :math:`\sigma_{min} \sum_t u_t` has equal projections onto every task direction.

    Why not torchjd's ``AlignedMTLWeighting``: with a preference vector of ones it gives the same
    weights on well-conditioned gradients (tested), but cuts the rank at ``T * eps(float64)``.
    The gradients are float32, so two tasks whose gradients differ only by rounding (1e-7
    relative) count there as two directions, and scaling to the smallest singular value shrinks
    the update about 1e7-fold; ``rtol = 1e-6`` here treats them as one direction. torchjd's cut-off
    is inside a private method, so it cannot be passed in.

    Args:
        scale_mode: ``"min"`` (paper), ``"median"`` or ``"rmse"``.
        rtol: Relative eigenvalue cut-off.
    """

    def __init__(
        self,
        scale_mode: Literal["min", "median", "rmse"] = "min",
        rtol: float = 1e-6,
    ) -> None:
        super().__init__()
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
        self.scale_mode = scale_mode
        self.rtol = float(rtol)

    def balance_matrix(self, gram: Tensor) -> Tensor:
        """:math:`B` of Algorithm 1 (float64)."""
        t = gram.shape[0]
        lam, vec = torch.linalg.eigh(gram)
        lam_max = float(lam.max())
        if lam_max <= 0:
            return torch.eye(t, dtype=gram.dtype)
        keep = lam > self.rtol * lam_max
        lam, vec = lam[keep], vec[:, keep]
        if self.scale_mode == "min":
            scale = lam.min()
        elif self.scale_mode == "median":
            scale = torch.median(lam)
        else:
            scale = lam.mean()
        return torch.sqrt(scale) * (vec / torch.sqrt(lam)) @ vec.T

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        return self.balance_matrix(gram).sum(1)
