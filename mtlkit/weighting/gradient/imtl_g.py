"""IMTL-G: impartial multi-task learning, gradient balance."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.weighting.gradient.base import GramianAggregator


class IMTLG(GramianAggregator):
    r"""IMTL-G, Liu et al. 2021, "Towards Impartial Multi-task Learning" (ICLR), Sec. 3.2.

    The update :math:`g = \sum_t \alpha_t g_t` with :math:`\sum_t \alpha_t = 1` has equal
    projections onto every unit task gradient :math:`u_t = g_t / \lVert g_t \rVert`:
    :math:`g \cdot (u_1 - u_t) = 0` for :math:`t = 2..T`. With the row matrices
    :math:`D = [g_1 - g_t]_{t=2..T}` and :math:`U = [u_1 - u_t]_{t=2..T}` the paper's closed form
    (Eq. 6) is

    .. math::

        \alpha_{2:T} = g_1 U^\top (D U^\top)^{-1}, \qquad \alpha_1 = 1 - \sum_{t \ge 2} \alpha_t.

    Computed here in the Gram space: the condition reads :math:`(G G^\top \alpha)_t = \kappa\,
    \lVert g_t \rVert`, so :math:`\alpha = M^{+} n / \mathbf 1^\top M^{+} n` with
    :math:`M = G G^\top` and :math:`n_t = \lVert g_t \rVert` — identical to Eq. 6 when the
    gradients are linearly independent (the test checks it against the literal formula), and the
    generalisation of Quinton & Rey (torchjd, "Jacobian Descent for Multi-Objective
    Optimization") when they are not: the pseudo-inverse ignores eigenvalues below
    ``rtol * lambda_max`` (rounding noise of a float32 Gram matrix), so equal gradients get equal
    weights. If :math:`\mathbf 1^\top M^{+} n = 0` (all gradients zero) the weights are uniform.

    Args:
        rtol: Relative eigenvalue cut-off of the pseudo-inverse.
        seed: Unused (no randomness); kept for the common signature.
    """

    def __init__(self, rtol: float = 1e-6, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.rtol = float(rtol)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        t = gram.shape[0]
        norms = torch.sqrt(torch.clamp(gram.diagonal(), min=0))
        v = torch.linalg.pinv(gram, rtol=self.rtol, hermitian=True) @ norms
        total = v.sum()
        if float(total.abs()) <= 1e-12 * float(v.abs().sum()) or float(v.abs().sum()) == 0:
            return torch.full((t,), 1.0 / t, dtype=gram.dtype)
        return v / total
