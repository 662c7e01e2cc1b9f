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
    \lVert g_t \rVert`. With :math:`D = \mathrm{diag}(\lVert g_t \rVert)` and the Gram matrix of
    the *unit* gradients :math:`A = D^{-1} G G^\top D^{-1}` it is :math:`A \beta = \kappa
    \mathbf 1` with :math:`\beta = D \alpha`, so :math:`\beta = A^{+} \mathbf 1`,
    :math:`\alpha = D^{-1} \beta / \mathbf 1^\top D^{-1} \beta` — identical to Eq. 6 when the
    gradients are linearly independent (tests check it against the literal formula). When they
    are not, the rule has in general no exact solution and this is the minimum-norm
    least-squares one in :math:`\beta`. Working on unit gradients makes the pseudo-inverse's
    cut-off (eigenvalues below ``rtol * lambda_max`` of :math:`A`, i.e. rounding noise) blind to
    the gradients' norms: a task whose gradient is 1e8x smaller than another's keeps its weight
    (a cut-off on :math:`G G^\top` itself, whose eigenvalues spread as the squared norm ratio,
    dropped it).

    Why not torchjd's ``IMTLGWeighting`` (Quinton & Rey's generalisation,
    :math:`\alpha \propto (G G^\top)^{+} d`): it is that cut-off on :math:`G G^\top`. It agrees
    with this to 1e-6 on independent gradients and norm ratios down to 1e-7, but at a ratio of
    1e-8 it puts nearly all the weight on the small gradient, where Eq. 6 gives it 7e-9
    (``tests/test_aggregator_references.py``). With dependent gradients the two least-squares
    choices differ (min-norm in :math:`\beta = D\alpha` here, in :math:`\alpha` there).

    Equal gradients get equal weights. Tasks with a zero gradient have no direction
    to project on: they get weight 0 and the rule holds for the others. If every gradient is
    zero, or :math:`\mathbf 1^\top D^{-1} \beta = 0`, the weights are uniform.

    Args:
        rtol: Relative eigenvalue cut-off of the pseudo-inverse.
    """

    def __init__(self, rtol: float = 1e-6) -> None:
        super().__init__()
        self.rtol = float(rtol)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        t = gram.shape[0]
        uniform = torch.full((t,), 1.0 / t, dtype=gram.dtype)
        norms = torch.sqrt(torch.clamp(gram.diagonal(), min=0))
        live = norms > 1e-12 * float(norms.max()) if float(norms.max()) > 0 else norms > 0
        if not bool(live.any()):
            return uniform
        n = norms[live]
        unit_gram = gram[live][:, live] / torch.outer(n, n)
        beta = torch.linalg.pinv(unit_gram, rtol=self.rtol, hermitian=True) @ torch.ones_like(n)
        v = beta / n
        total = v.sum()
        if float(total.abs()) <= 1e-12 * float(v.abs().sum()) or float(v.abs().sum()) == 0:
            return uniform
        weights = torch.zeros(t, dtype=gram.dtype)
        weights[live] = v / total
        return weights
