"""The minimum-norm point of a convex hull, exactly, on a Gram matrix (MGDA, CAGrad)."""

from __future__ import annotations

import numpy as np


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
