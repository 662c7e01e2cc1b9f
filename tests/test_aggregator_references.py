"""Gradient aggregators against independent references: exact solvers (cvxpy's conic solvers,
scipy's root finder), the papers' closed forms evaluated on the gradient vectors (not on the
Gram matrix the implementations use), and hand-computed cases.

Every case here failed on the implementation before it was fixed (issue 10): IMTL-G dropped a
task whose gradient was ~1000x smaller, CAGrad returned the mean when the hull of the gradients
contains 0, MGDA's Frank-Wolfe loop stopped far from the min-norm point, Nash-MTL crashed under
bf16 autocast, returned zero weights for a zero gradient and did not resume exactly.
"""

import cvxpy as cp
import numpy as np
import pytest
import torch
from scipy.optimize import fsolve
from torchjd.aggregation import AlignedMTLWeighting, IMTLGWeighting, MGDAWeighting

from mtlkit.testing.methods import weighting_methods
from mtlkit.weighting.gradient import IMTLG, MGDA, AlignedMTL, CAGrad, NashMTL, UPGrad, gram_matrix
from mtlkit.weighting.gradient.torchjd_aggregators import NNLSDualConeProjector

GRADIENT_METHODS = {n: m for n, m in weighting_methods().items() if m.is_gradient_method}


def _random_cases(n, seed=0, max_t=6, max_p=9):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        t, p = int(rng.integers(2, max_t + 1)), int(rng.integers(2, max_p + 1))
        scales = rng.choice([1.0, 1.0, 10.0, 0.1], size=(t, 1))
        yield rng.normal(size=(t, p)) * scales


# --------------------------------------------------------------------------------------- IMTL-G
def _imtlg_paper(grads: np.ndarray) -> np.ndarray:
    """Liu et al. 2021, Eq. 6 on the vectors: alpha_{2:T} = g_1 U^T (D U^T)^{-1}."""
    u = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    big_d = grads[0] - grads[1:]
    big_u = u[0] - u[1:]
    rest = grads[0] @ big_u.T @ np.linalg.inv(big_d @ big_u.T)
    return np.concatenate([[1 - rest.sum()], rest])


@pytest.mark.parametrize("ratio", [1e-3, 1e-4, 1e-5])
def test_imtlg_keeps_a_task_with_a_much_smaller_gradient(ratio):
    grads = np.array([[ratio, 0.0, 0.0], [1.0, 1.0, 0.0]])
    expected = _imtlg_paper(grads)  # about [1 - 0.7 ratio, 0.7 ratio]
    out = IMTLG().aggregate(torch.tensor(grads, dtype=torch.float32))
    np.testing.assert_allclose(out.weights.double().numpy(), expected, rtol=1e-4)
    d = out.direction.double().numpy()
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    projections = units @ d
    # The method's rule: equal projections on the unit gradients (both positive).
    assert projections.min() > 0
    np.testing.assert_allclose(projections[0], projections[1], rtol=1e-3)


def test_imtlg_matches_the_paper_on_random_independent_gradients():
    for grads in _random_cases(50, seed=1, max_t=5, max_p=12):
        if grads.shape[0] > grads.shape[1]:
            continue
        out = IMTLG().aggregate(torch.tensor(grads))
        np.testing.assert_allclose(
            out.weights.double().numpy(), _imtlg_paper(grads), rtol=2e-3, atol=1e-5
        )


def test_imtlg_zero_gradient_gets_no_weight_and_the_rule_holds_for_the_rest():
    grads = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 2.0, 0.0]])
    out = IMTLG().aggregate(torch.tensor(grads, dtype=torch.float32))
    w = out.weights.double().numpy()
    assert w[1] == 0
    np.testing.assert_allclose(w[[0, 2]], _imtlg_paper(grads[[0, 2]]), rtol=1e-5)


# --------------------------------------------------------------------------------------- CAGrad
def _cagrad_primal(grads: np.ndarray, c: float) -> float:
    """max_d min_i g_i.d s.t. ||d - g_0|| <= c ||g_0|| (Liu et al. 2021, Eq. 2), as an SOCP."""
    g0 = grads.mean(0)
    d, worst = cp.Variable(grads.shape[1]), cp.Variable()
    problem = cp.Problem(
        cp.Maximize(worst), [grads @ d >= worst, cp.norm(d - g0) <= c * np.linalg.norm(g0)]
    )
    problem.solve(solver=cp.CLARABEL)
    return float(worst.value)


@pytest.mark.parametrize(
    ("grads", "optimum"),
    [
        # g_0 = (-2/3, 0); 0 = g1/2 + g2/4 + g3/4 is inside the hull. By hand: the dual optimum
        # is w = e_1, d = g_0 + (c ||g_0|| / ||g_1||) g_1 = (-1/3, 0), worst g_i.d = -2/3,
        # where the mean g_0 gives -4/3.
        ([[2.0, 0.0], [-2.0, 2.0], [-2.0, -2.0]], -2 / 3),
        # The example: the mean gives -1/3, the method -1/6.
        ([[3.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]], -1 / 6),
    ],
)
def test_cagrad_when_the_hull_contains_zero(grads, optimum):
    grads = np.array(grads)
    out = CAGrad(c=0.5, rescale="none").aggregate(torch.tensor(grads, dtype=torch.float32))
    d = out.direction.double().numpy()
    assert (grads @ d).min() == pytest.approx(optimum, abs=1e-6)
    assert _cagrad_primal(grads, 0.5) == pytest.approx(optimum, abs=1e-6)
    assert np.linalg.norm(d - grads.mean(0)) <= 0.5 * np.linalg.norm(grads.mean(0)) + 1e-6


@pytest.mark.parametrize("c", [0.1, 0.5, 0.9])
def test_cagrad_reaches_the_socp_optimum_on_random_cases(c):
    """Measured gap to the SOCP optimum over these 60 cases: < 1e-7 of max|g|^2 (float32
    inputs); tolerance 1e-5."""
    for grads in _random_cases(60, seed=int(c * 10)):
        out = CAGrad(c=c, rescale="none").aggregate(torch.tensor(grads))
        d = out.direction.double().numpy()
        scale = float(np.abs(grads).max()) ** 2
        assert (grads @ d).min() >= _cagrad_primal(grads, c) - 1e-5 * scale
        g0 = grads.mean(0)
        assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-4)


def test_cagrad_rejects_c_outside_the_papers_range():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        CAGrad(c=1.0)


# ----------------------------------------------------------------------------------------- MGDA
def _min_norm_qp(grads: np.ndarray) -> float:
    """min ||sum_i a_i g_i||^2 over the simplex, by a conic solver."""
    a = cp.Variable(grads.shape[0], nonneg=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(grads.T @ a)), [cp.sum(a) == 1])
    problem.solve(solver=cp.CLARABEL)
    return float(problem.value)


RANK2 = np.array(
    [
        [79.931, -12.585, 79.078, -242.621, -79.178],
        [75.715, 333.6, -135.212, -122.28, 136.07],
        [-11.292, -49.871, 20.237, 18.2, -20.366],
    ]
)


def test_mgda_reaches_the_min_norm_point_where_frank_wolfe_stops_early():
    exact = _min_norm_qp(RANK2)
    out = MGDA().aggregate(torch.tensor(RANK2, dtype=torch.float32))
    d = out.direction.double().numpy()
    assert d @ d == pytest.approx(exact, rel=1e-3, abs=1e-6 * np.abs(RANK2).max() ** 2)
    # The paper's loop (kept as an option) stops with a far larger norm on this case.
    fw = MGDA(solver="frank_wolfe").aggregate(torch.tensor(RANK2, dtype=torch.float32))
    assert float(fw.direction.double() @ fw.direction.double()) > 10 * exact


def test_mgda_matches_the_qp_on_random_cases():
    for grads in _random_cases(80, seed=3):
        d = MGDA().aggregate(torch.tensor(grads)).direction.double().numpy()
        scale = float(np.abs(grads).max()) ** 2
        assert d @ d <= _min_norm_qp(grads) + 1e-6 * scale


# --------------------------------------------------------------------------------------- UPGrad
def _upgrad_projections(grads: np.ndarray, reg_eps=1e-4, norm_eps=1e-4):
    """Quinton & Rey 2024: pi_i = argmin_{v >= e_i / T} v^T G v, with torchjd's preprocessing
    (G / trace(G) + reg_eps I), by a conic solver; UPGrad's weights are sum_i pi_i."""
    gram = grads @ grads.T
    trace = np.trace(gram)
    g = (gram / trace if trace >= norm_eps else np.zeros_like(gram)) + reg_eps * np.eye(len(gram))
    t = len(gram)
    rows = []
    for i in range(t):
        v = cp.Variable(t)
        cp.Problem(cp.Minimize(cp.quad_form(v, cp.psd_wrap(g))), [v >= np.eye(t)[i] / t]).solve(
            solver=cp.CLARABEL
        )
        rows.append(v.value)
    return g, np.array(rows)


def test_upgrad_projector_and_weights_match_a_qp_solver_on_random_cases():
    """Each projection is feasible and at least as good as the conic solver's (objective within
    1e-9 relative; measured: ours lower by up to 4e-13). The weights themselves can differ by
    up to 6e-3 relative (measured): the objective is flat along the gradients' near-null
    directions (eigenvalue reg_eps = 1e-4), where the solver's 1e-8 accuracy moves the
    minimiser; the update w @ G, which those directions barely change, agrees to 1e-3."""
    for grads in _random_cases(40, seed=4):
        grads = grads.astype(np.float32).astype(np.float64)  # what the aggregator sees
        g, reference = _upgrad_projections(grads)
        t = len(g)
        proj = NNLSDualConeProjector()(
            torch.eye(t, dtype=torch.float64) / t, torch.tensor(grads @ grads.T)
        ).numpy()
        for i in range(t):
            assert (proj[i] - np.eye(t)[i] / t).min() >= -1e-12
            mine, theirs = proj[i] @ g @ proj[i], reference[i] @ g @ reference[i]
            assert mine <= theirs * (1 + 1e-9) + 1e-15
        out = UPGrad().aggregate(torch.tensor(grads))
        expected = reference.sum(0) @ grads
        error = np.linalg.norm(out.direction.double().numpy() - expected)
        assert error <= 1e-3 * np.linalg.norm(expected)


# ------------------------------------------------------------------------------------- Nash-MTL
def _bargaining_solution(gram: np.ndarray) -> np.ndarray:
    """Navon et al. 2022, Eq. 2: alpha > 0 with (G G^T alpha)_i = 1 / alpha_i, by scipy."""
    x0 = 1 / np.sqrt(np.diag(gram))
    log_alpha = fsolve(lambda y: np.exp(y) * (gram @ np.exp(y)) - 1, np.log(x0), xtol=1e-12)
    return np.exp(log_alpha)


@pytest.mark.filterwarnings("ignore:.*DPP.*")
def test_nash_mtl_solves_the_bargaining_condition():
    grads = np.array([[1.0, 0.2, 0.0, 0.3], [0.1, 2.0, 0.5, 0.0], [0.0, -0.3, 0.7, 0.2]])
    agg = NashMTL(max_norm=0.0, optim_niter=200)
    agg.setup(["a", "b", "c"])
    w = agg.aggregate(torch.tensor(grads, dtype=torch.float32)).weights.double().numpy()
    gram = grads @ grads.T
    expected = _bargaining_solution(gram)
    np.testing.assert_allclose(w * (gram @ w), 1.0, rtol=2e-2)
    np.testing.assert_allclose(w, expected, rtol=2e-2)


@pytest.mark.filterwarnings("ignore:.*DPP.*")
def test_nash_mtl_max_norm_rescales_the_update():
    grads = torch.tensor([[1.0, 0.2, 0.0], [0.1, 2.0, 0.5]]) * 1e-2  # small: norm of d is large
    free, capped = NashMTL(max_norm=0.0), NashMTL(max_norm=0.5)
    free.setup(["a", "b"])
    capped.setup(["a", "b"])
    d_free = free.aggregate(grads).direction
    d_capped = capped.aggregate(grads).direction
    assert float(d_free.norm()) > 0.5
    assert float(d_capped.norm()) == pytest.approx(0.5, rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(d_free, d_capped, dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.filterwarnings("ignore:.*DPP.*")
def test_nash_mtl_zero_gradient_keeps_the_previous_weights():
    """The reference code's solver fails on the zero row and falls back to the previous
    weights; mtlkit does the same (before it returned zero weights: no update at all)."""
    agg = NashMTL(max_norm=0.0)
    agg.setup(["a", "b"])
    first = agg.aggregate(torch.tensor([[1.0, 0.0], [0.0, 2.0]])).weights
    stuck = agg.aggregate(torch.tensor([[0.0, 0.0], [0.5, 1.0]])).weights
    torch.testing.assert_close(stuck, first)
    fresh = NashMTL(max_norm=0.0)
    fresh.setup(["a", "b"])
    np.testing.assert_allclose(fresh.aggregate(torch.zeros(2, 3)).weights.numpy(), [1.0, 1.0])


@pytest.mark.filterwarnings("ignore:.*DPP.*")
def test_nash_mtl_resumes_bit_for_bit_after_its_float64_warm_start():
    rng = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 20, generator=rng) for _ in range(4)]
    a = NashMTL()
    a.setup(["x", "y", "z"])
    for g in grads[:2]:
        a.aggregate(g)
    b = NashMTL()
    b.setup(["x", "y", "z"])
    b.load_state_dict(a.state_dict())
    # The warm start is cvxpy's float64 solution: restored as it was (it came back as float32,
    # and the next outputs then differed by up to 6e-8 with other solver versions).
    saved, restored = a._nash.weighting.prvs_alpha, b._nash.weighting.prvs_alpha
    assert restored.dtype == saved.dtype == np.float64
    assert np.array_equal(restored, saved)
    for g in grads[2:]:
        assert torch.equal(a.aggregate(g).weights, b.aggregate(g).weights)


# --------------------------------------------------------------------------- autocast, all methods
@pytest.mark.filterwarnings("ignore:.*DPP.*")
@pytest.mark.parametrize("name", list(GRADIENT_METHODS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_gradient_method_solves_in_full_precision_under_autocast(name, dtype):
    """Under autocast a matmul would run in half precision (and Nash-MTL's numpy step raised
    "Got unsupported ScalarType BFloat16"): the result must equal the one without autocast."""
    grads = torch.randn(3, 64, generator=torch.Generator().manual_seed(5))
    losses = torch.tensor([0.5, 1.0, 2.0])

    def run():
        agg = GRADIENT_METHODS[name].build().aggregator
        agg.setup(["a", "b", "c"])
        return agg.aggregate(grads, losses)

    plain = run()
    with torch.autocast("cpu", dtype=dtype):
        mixed = run()
    assert mixed.direction.dtype == torch.float32
    torch.testing.assert_close(mixed.weights, plain.weights, rtol=0, atol=0)
    torch.testing.assert_close(mixed.direction, plain.direction, rtol=0, atol=0)


# --------------------------------------------- torchjd's weightings (why mtlkit keeps its own)
def test_imtlg_agrees_with_torchjd_except_where_torchjd_drops_a_small_task():
    """torchjd's ``IMTLGWeighting`` (pinv of G G^T, whose eigenvalues spread as the squared norm
    ratio) agrees with mtlkit (pinv on unit gradients) to 1e-6 on independent gradients and on
    norm ratios down to 1e-7; at 1e-8 the small task's eigenvalue falls under its cut-off and it
    puts nearly all the weight on the *small* gradient, where the paper gives it 7e-9."""
    for grads in _random_cases(30, seed=6, max_t=5, max_p=12):
        if grads.shape[0] > grads.shape[1]:
            continue
        g = torch.tensor(grads, dtype=torch.float32)
        ours = IMTLG().aggregate(g).weights.double()
        theirs = IMTLGWeighting()(gram_matrix(g))
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    for ratio in (1e-7, 1e-8):
        grads = np.array([[ratio, 0.0, 0.0], [1.0, 1.0, 0.0]])
        g = torch.tensor(grads, dtype=torch.float32)
        expected = _imtlg_paper(g.double().numpy())
        ours = IMTLG().aggregate(g).weights.double().numpy()
        np.testing.assert_allclose(ours, expected, rtol=1e-4)
        theirs = IMTLGWeighting()(gram_matrix(g)).numpy()
        if ratio == 1e-8:
            assert theirs[0] < 1e-6 and theirs[1] > 0.99  # expected: [1 - 7e-9, 7e-9]


def test_mgda_torchjd_frank_wolfe_stops_far_from_the_min_norm_point():
    """torchjd's ``MGDAWeighting`` is the paper's Frank-Wolfe loop (stops when the step is below
    1e-3): on the rank-2 case its squared norm is 27.9 where the minimum (a conic solver, and
    mtlkit's exact solver) is 6.1e-3."""
    g = torch.tensor(RANK2, dtype=torch.float32)
    exact = _min_norm_qp(RANK2)
    theirs = MGDAWeighting()(gram_matrix(g)) @ g.double()
    ours = MGDA().aggregate(g).direction.double()
    assert float(ours @ ours) == pytest.approx(exact, rel=1e-3, abs=1e-6 * np.abs(RANK2).max() ** 2)
    assert float(theirs @ theirs) > 1000 * exact


def test_aligned_mtl_is_torchjds_with_a_float32_rank_cut_off():
    """mtlkit's weights are torchjd's ``AlignedMTLWeighting`` with a preference vector of ones
    (the sum, as the official code) on well-conditioned gradients. The rank cut-off differs:
    torchjd keeps eigenvalues above ``T * eps(float64)`` of the largest; the gradients are
    float32, so two tasks whose gradients differ by 1e-7 relative (rounding) count as two
    directions there and scaling to the smallest singular value shrinks the update about 1e7-fold
    (measured: norm 1e-6 where it is 13.8). mtlkit cuts at ``rtol = 1e-6`` (the official code's
    ``T * eps(float32)`` order) and treats them as one direction."""
    for seed in range(5):
        g = torch.randn(4, 64, generator=torch.Generator().manual_seed(seed))
        ones = torch.ones(4, dtype=torch.float64)
        theirs = AlignedMTLWeighting(pref_vector=ones)(gram_matrix(g))
        torch.testing.assert_close(
            AlignedMTL().aggregate(g).weights.double(), theirs, rtol=1e-5, atol=1e-7
        )
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 64))
    grads = np.stack([a[0], a[0] + 1e-7 * rng.normal(size=64), a[1]])
    g = torch.tensor(grads, dtype=torch.float32)
    ours = AlignedMTL().aggregate(g).direction.double()
    ones = torch.ones(3, dtype=torch.float64)
    theirs = AlignedMTLWeighting(pref_vector=ones)(gram_matrix(g)) @ g.double()
    assert float(ours.norm()) > 0.5 * float(torch.tensor(a).norm(dim=1).min())
    assert float(theirs.norm()) < 1e-4 * float(ours.norm())
