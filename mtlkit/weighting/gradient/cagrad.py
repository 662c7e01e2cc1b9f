"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mtlkit.weighting.gradient.base import GramianAggregator
from mtlkit.weighting.gradient.min_norm import min_norm_point


class CAGrad(GramianAggregator):
    r"""CAGrad, Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning"
    (NeurIPS).

    With :math:`g_0 = \frac1T \sum_i g_i` the average gradient, the update maximises the worst
    local improvement in a ball around :math:`g_0`:
    :math:`\max_d \min_i g_i \cdot d` s.t. :math:`\lVert d - g_0 \rVert \le c \lVert g_0 \rVert`.
    Its dual, over the simplex :math:`\mathcal W`, with :math:`g_w = \sum_i w_i g_i` and
    :math:`\phi = c^2 \lVert g_0 \rVert^2`, is (paper, Sec. 3.1)

    .. math::

        w^* = \arg\min_{w \in \mathcal W}\; F(w) = g_w \cdot g_0 + \sqrt{\phi}\, \lVert g_w \rVert,
        \qquad d^* = g_0 + \frac{\sqrt{\phi}}{\lVert g_{w^*} \rVert}\, g_{w^*}.

    As in the official code (``Cranial-XIX/CAGrad``), :math:`d^*` is then divided by
    :math:`1 + c^2` (``rescale="1+c^2"``, its default ``rescale=1``), by :math:`1 + c`
    (``"1+c"``) or not at all (``"none"``). ``c = 0`` gives the mean gradient.

    Solver (the official code calls scipy's SLSQP; here it is exact and scipy-free): at the
    optimum, :math:`g_{w^*} + \alpha g_0 \propto d^*` with :math:`\alpha = \lVert g_{w^*}
    \rVert / \sqrt\phi`, and the optimality condition :math:`d^* \cdot (g_i - g_{w^*}) \ge 0`
    says that :math:`g_{w^*}` is the point of the hull of the :math:`g_i` whose translate by
    :math:`\alpha g_0` has minimum norm. So for a scalar :math:`\alpha` the weights
    :math:`w(\alpha)` come from Wolfe's exact min-norm-point algorithm on the shifted Gram matrix,
    and :math:`\alpha^*` is the root of :math:`\lVert g_{w(\alpha)} \rVert - \sqrt\phi\,\alpha`
    (Illinois regula falsi, about a dozen evaluations). All in float64 on the ``T x T`` Gram
    matrix, normalised to a unit largest diagonal (which leaves :math:`w^*` unchanged). When the
    hull contains 0, :math:`\alpha = 0` is a spurious root (:math:`g_w = 0`); the solver then
    looks for the positive root, which exists whenever the dual optimum is not at
    :math:`g_w = 0` (always for ``c < 1`` and 0 inside the hull). Only if there is none (e.g.
    ``c >= 1``, when :math:`F \ge 0` on the simplex) is the update :math:`g_0` (rescaled).

    The reported weights are the exact coefficients of the update:
    :math:`(\frac1T + \lambda w^*_i) / r` with :math:`\lambda = \sqrt\phi / \lVert g_{w^*}
    \rVert` and :math:`r` the rescale factor.

    Args:
        c: The ball radius, relative to :math:`\lVert g_0 \rVert`, in ``[0, 1)`` (the paper's
            default 0.5).
        rescale: Division of the update, see above.
        tol: Relative tolerance on :math:`\alpha`.
    """

    def __init__(
        self,
        c: float = 0.5,
        rescale: Literal["1+c^2", "1+c", "none"] = "1+c^2",
        tol: float = 1e-13,
    ) -> None:
        super().__init__()
        if not 0 <= c < 1:
            # The paper's convergence result (Theorem 3.2) needs 0 <= c < 1; for c >= 1 the ball
            # contains d = 0 and the dual optimum sits at the non-smooth point g_w = 0.
            raise ValueError(f"c must be in [0, 1) (Liu et al. 2021, Theorem 3.2), got {c}")
        if rescale not in ("1+c^2", "1+c", "none"):
            raise ValueError(f"rescale must be '1+c^2', '1+c' or 'none', got {rescale!r}")
        self.c = float(c)
        self.rescale = rescale
        self.tol = float(tol)

    @property
    def rescale_factor(self) -> float:
        return {"1+c^2": 1 + self.c**2, "1+c": 1 + self.c, "none": 1.0}[self.rescale]

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        t = gram.shape[0]
        mean = torch.full((t,), 1.0 / t, dtype=torch.float64)
        scale = float(gram.diagonal().max())
        if self.c == 0 or scale <= 0:
            return mean / self.rescale_factor
        a = (gram / scale).numpy()
        sqrt_phi = self.c * math.sqrt(max(float(mean.numpy() @ a @ mean.numpy()), 0.0))
        if sqrt_phi == 0:
            return mean / self.rescale_factor
        w = self.solve(a, sqrt_phi)
        if w is None:
            return mean / self.rescale_factor
        gw_norm = math.sqrt(max(float(w @ a @ w), 0.0))
        lam = sqrt_phi / gw_norm if gw_norm > 1e-12 else 0.0
        return (mean + lam * torch.from_numpy(w)) / self.rescale_factor

    def solve(self, a: np.ndarray, sqrt_phi: float, max_eval: int = 200) -> np.ndarray | None:
        """``argmin_w w.A.b + sqrt_phi * sqrt(w.A.w)`` over the simplex (``b`` uniform), or None
        when the minimum is at ``g_w = 0`` (then the update is ``g_0``)."""
        t = a.shape[0]
        b = np.full(t, 1.0 / t)
        ab = a @ b
        one = np.ones(t)
        cross = np.outer(ab, one) + np.outer(one, ab)
        square = float(b @ ab) * np.outer(one, one)

        def residual(alpha: float) -> tuple[float, np.ndarray]:
            # Gram of {g_i + alpha g_0}: A + alpha (A b 1^T + 1 b^T A) + alpha^2 (b^T A b) 1 1^T.
            w = min_norm_point(a + alpha * cross + alpha**2 * square)
            return math.sqrt(max(float(w @ a @ w), 0.0)) - sqrt_phi * alpha, w

        # f(hi) < 0, since ||g_w|| <= sqrt(max diag) = sqrt_phi * hi / 2. Bracket a root from
        # above by halving: the first probe with f > 0 gives [probe, hi]. f(0) is the norm of the
        # hull's min-norm point, so when the hull contains 0 (up to rounding) alpha = 0 is a
        # root with g_w = 0, yet the dual optimum can lie elsewhere (for c < 1 and 0 inside the
        # hull, f(alpha) = alpha ||g_0|| (1 - c) > 0 for small alpha): searching from above
        # finds the root away from 0.
        hi = 2.0 * math.sqrt(float(np.max(np.diag(a)))) / sqrt_phi
        f_hi, _ = residual(hi)
        for _ in range(64):
            lo = hi / 2
            f_lo, w = residual(lo)
            if f_lo > 0:
                break
            hi, f_hi = lo, f_lo
        else:
            return None  # no positive root: g_w = 0 is the optimum (update g_0)
        side = 0
        for _ in range(max_eval):
            mid = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
            if not lo < mid < hi:
                mid = 0.5 * (lo + hi)
            f_mid, w = residual(mid)
            if f_mid == 0:
                break
            if f_mid > 0:
                lo, f_lo = mid, f_mid
                if side == 1:
                    f_hi /= 2
                side = 1
            else:
                hi, f_hi = mid, f_mid
                if side == -1:
                    f_lo /= 2
                side = -1
            if hi - lo <= self.tol * hi:
                break
        return w
