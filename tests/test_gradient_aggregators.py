"""Gradient aggregators: the papers' math on hand-made gradients, and a contract every aggregator
of ``mtlkit.weighting.gradient`` (found automatically) must meet."""

from __future__ import annotations

import inspect
import math
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from mtlkit.registry import aggregator_classes
from mtlkit.weighting.gradient import (
    IMTLG,
    MGDA,
    MGDAUB,
    AlignedMTL,
    CAGrad,
    GradientAggregator,
    NashMTL,
    PCGrad,
    UPGrad,
    min_norm_point,
)
from mtlkit.weighting.gradient.mgda import frank_wolfe_min_norm


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def run(agg: GradientAggregator, grads: torch.Tensor, **kw):
    agg.setup([f"t{i}" for i in range(grads.shape[0])])
    return agg.aggregate(grads, **kw)


def conflicting_grads(T: int = 4, P: int = 256, seed: int = 0) -> torch.Tensor:
    """Well-conditioned gradients of different norms with at least one conflicting pair and no
    nearly orthogonal pair (so that PCGrad's conflict tests are robust to bf16 rounding)."""
    g = torch.Generator().manual_seed(seed)
    shifts = torch.tensor([1.0, -0.6, 0.4, 0.8, -0.3, 0.5])[:T]
    for _ in range(100):
        base = torch.randn(P, generator=g)
        grads = torch.randn(T, P, generator=g) + shifts[:, None] * base
        grads = grads * torch.linspace(0.5, 2.0, T)[:, None]
        unit = torch.nn.functional.normalize(grads, dim=1)
        off = (unit @ unit.T)[~torch.eye(T, dtype=torch.bool)]
        if off.abs().min() > 0.05 and (off < 0).any():
            return grads
    raise AssertionError("no suitable gradients")


# ------------------------------------------------------------------------------------ PCGrad


def pcgrad_reference(grads: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Yu et al. 2020, Algorithm 1, literally, in parameter space (float64)."""
    g = grads.double()
    pc = g.clone()
    n = len(g)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in torch.randperm(n - 1, generator=gen).tolist():
            j = others[k]
            dot = pc[i] @ g[j]
            if dot < 0:
                pc[i] -= dot / (g[j] @ g[j]) * g[j]  # the ORIGINAL g_j
    return pc.sum(0)


def test_pcgrad_leaves_orthogonal_gradients_unchanged():
    g = t([2.0, 0.0, 0.0], [0.0, 3.0, 1.0])
    out = run(PCGrad(), g)
    torch.testing.assert_close(out.direction, g[0] + g[1])
    torch.testing.assert_close(out.weights, torch.tensor([1.0, 1.0]))


def test_pcgrad_projects_a_conflicting_pair_exactly():
    # g1.g2 = -1: g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1).
    g = t([1.0, 0.0], [-1.0, 1.0])
    out = run(PCGrad(), g)
    torch.testing.assert_close(out.direction, torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(out.weights, torch.tensor([2.0, 1.5]))  # g1' + g2' = 2 g1 + 1.5 g2
    mean = run(PCGrad(reduction="mean"), g)
    torch.testing.assert_close(mean.direction, torch.tensor([0.25, 0.75]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pcgrad_matches_the_paper_algorithm_in_parameter_space(seed):
    grads = conflicting_grads(T=5, P=64, seed=seed)
    out = run(PCGrad(seed=seed), grads)
    ref = pcgrad_reference(grads, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(out.direction.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.weights @ grads, out.direction, rtol=1e-5, atol=1e-5)


def test_pcgrad_order_is_random_seeded_and_resumable():
    # Three gradients where the projection order changes the result.
    g = t([1.0, 0.0], [-0.5, 1.0], [-0.5, -1.0])
    outs = {tuple(run(PCGrad(seed=s), g).direction.tolist()) for s in range(20)}
    assert len(outs) > 1
    a = PCGrad(seed=7)
    a.setup(["a", "b", "c"])
    for _ in range(3):
        a.aggregate(g)
    b = PCGrad(seed=123)
    b.setup(["a", "b", "c"])
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        torch.testing.assert_close(a.aggregate(g).direction, b.aggregate(g).direction)


# -------------------------------------------------------------------------------------- MGDA


@pytest.mark.parametrize(
    "g1,g2",
    [
        ([1.0, 0.0], [0.0, 2.0]),  # interior
        ([1.0, 0.0], [-1.0, 0.5]),  # conflicting
        ([1.0, 0.0], [2.0, 0.1]),  # clipped: all weight on the shorter g1
        ([3.0, 1.0, 0.0], [0.5, 0.2, 0.1]),  # clipped at the other end
        ([0.3, -1.2, 2.0], [1.5, 0.4, -0.7]),
    ],
)
def test_mgda_two_tasks_is_the_closed_form_min_norm_point(g1, g2):
    a, b = torch.tensor(g1, dtype=torch.float64), torch.tensor(g2, dtype=torch.float64)
    gamma = float(((b - a) @ b) / ((a - b) @ (a - b)))
    gamma = min(max(gamma, 0.0), 1.0)
    out = run(MGDA(), t(g1, g2))
    torch.testing.assert_close(out.weights.double(), torch.tensor([gamma, 1 - gamma]).double())
    torch.testing.assert_close(
        out.direction.double(), gamma * a + (1 - gamma) * b, atol=1e-6, rtol=0
    )


def test_mgda_orthogonal_equal_norms_get_equal_weights():
    out = run(MGDA(), t([2.0, 0.0, 0.0], [0.0, 0.0, 2.0]))
    torch.testing.assert_close(out.weights, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(out.direction, torch.tensor([1.0, 0.0, 1.0]))


def test_mgda_frank_wolfe_reaches_the_exact_min_norm_point():
    grads = conflicting_grads(T=5, P=64)
    gram = (grads.double() @ grads.double().T).clone()
    exact = min_norm_point(gram.numpy())
    fw, _ = frank_wolfe_min_norm(gram, max_iter=20000, stop_crit=1e-12)
    np.testing.assert_allclose(fw.numpy(), exact, atol=1e-6)
    # With the default (official) tolerance the norm is within 1e-4 of the minimum.
    w = run(MGDA(), grads).weights.double()
    assert float(w @ gram @ w) <= float(exact @ gram.numpy() @ exact) * (1 + 1e-4)
    # Optimality: no gradient has a smaller inner product with the min-norm point than itself.
    d = exact @ gram.numpy()
    assert d.min() >= exact @ d - 1e-9


def test_mgda_normalizations():
    g = t([3.0, 0.0], [0.0, 1.0])
    # l2: the normalised gradients are orthonormal -> alpha = 1/2, applied to the raw gradients.
    out = run(MGDA(normalization="l2"), g)
    torch.testing.assert_close(out.weights, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(out.direction, torch.tensor([1.5, 0.5]))
    # loss: g / L = (1, 0), (0, 1) -> alpha = 1/2 again.
    agg = MGDA(normalization="loss")
    assert agg.needs_losses and not MGDA().needs_losses
    with pytest.raises(ValueError, match="losses"):
        run(agg, g)
    out = run(agg, g, losses=torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(out.weights, torch.tensor([0.5, 0.5]))
    out = run(MGDA(normalization="loss+"), g, losses={"t0": 2.0, "t1": 2.0})
    torch.testing.assert_close(out.weights, torch.tensor([0.5, 0.5]))


def test_mgda_ub_is_mgda_on_representation_gradients():
    assert MGDAUB.works_on == "representation" and MGDA.works_on == "parameters"
    grads = conflicting_grads(T=3, P=32)
    torch.testing.assert_close(run(MGDAUB(), grads).weights, run(MGDA(), grads).weights)


# ------------------------------------------------------------------------------------ IMTL-G


def imtlg_paper_weights(grads: torch.Tensor) -> torch.Tensor:
    """Liu et al. 2021 (ICLR), Eq. 6, literally: alpha = g_1 U^T (D U^T)^-1."""
    g = grads.double()
    u = g / g.norm(dim=1, keepdim=True)
    d_mat = g[0] - g[1:]
    u_mat = u[0] - u[1:]
    alpha = g[0] @ u_mat.T @ torch.linalg.inv(d_mat @ u_mat.T)
    return torch.cat([1 - alpha.sum(0, keepdim=True), alpha])


@pytest.mark.parametrize("T", [2, 3, 5])
def test_imtlg_has_equal_projections_on_unit_gradients(T):
    grads = conflicting_grads(T=T, P=64, seed=T)
    out = run(IMTLG(), grads)
    units = torch.nn.functional.normalize(grads.double(), dim=1)
    proj = units @ out.direction.double()
    torch.testing.assert_close(proj, proj.mean().expand(T), rtol=1e-4, atol=1e-5)
    assert float(out.weights.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(
        out.weights.double(), imtlg_paper_weights(grads), rtol=1e-4, atol=1e-5
    )


# ------------------------------------------------------------------------------------ CAGrad


def test_cagrad_with_c0_is_the_mean_gradient():
    grads = conflicting_grads(T=4, P=32)
    out = run(CAGrad(c=0.0), grads)
    torch.testing.assert_close(out.direction, grads.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.weights, torch.full((4,), 0.25))


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
@pytest.mark.parametrize(
    "g1,g2",
    [([1.0, 0.0], [-0.8, 0.3]), ([2.0, 1.0, 0.0], [0.1, 0.5, 3.0]), ([1.0, 0.2], [0.9, 0.25])],
)
def test_cagrad_two_tasks_matches_brute_force_over_the_simplex(c, g1, g2):
    """F(w) = g_w.g_0 + c ||g_0|| ||g_w|| on a 200,001-point grid of the simplex; then
    d = g_0 + c ||g_0|| g_w / ||g_w||, divided by 1 + c^2."""
    a, b = torch.tensor(g1, dtype=torch.float64), torch.tensor(g2, dtype=torch.float64)
    g0 = (a + b) / 2
    x = torch.linspace(0, 1, 200_001, dtype=torch.float64)[:, None]
    gw = x * a + (1 - x) * b
    f = gw @ g0 + c * g0.norm() * gw.norm(dim=1)
    best = int(torch.argmin(f))
    d_brute = (g0 + c * g0.norm() * gw[best] / gw[best].norm()) / (1 + c**2)

    agg = CAGrad(c=c)
    out = run(agg, t(g1, g2))
    # The solver's objective is at most the grid minimum (up to the grid's resolution).
    w1 = _cagrad_dual_weight(agg, t(g1, g2))
    f_solver = float((w1 * a + (1 - w1) * b) @ g0 + c * g0.norm() * (w1 * a + (1 - w1) * b).norm())
    assert f_solver <= float(f[best]) + 1e-9
    torch.testing.assert_close(out.direction.double(), d_brute, rtol=1e-4, atol=1e-4)


def _cagrad_dual_weight(agg: CAGrad, grads: torch.Tensor) -> float:
    gram = (grads.double() @ grads.double().T).numpy()
    a = gram / gram.diagonal().max()
    b = np.full(2, 0.5)
    w = agg.solve(a, agg.c * math.sqrt(b @ a @ b))
    return float(w[0])


def test_cagrad_direction_maximises_the_worst_task_improvement_in_the_ball():
    """The primal of the paper: max_d min_i g_i.d s.t. ||d - g_0|| <= c ||g_0||."""
    grads = conflicting_grads(T=4, P=8, seed=5).double()
    c = 0.5
    out = run(CAGrad(c=c, rescale="none"), grads.float())
    d = out.direction.double()
    g0 = grads.mean(0)
    radius = c * g0.norm()
    assert float((d - g0).norm()) == pytest.approx(float(radius), rel=1e-4)
    worst = float((grads @ d).min())
    gen = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(20000, 8, generator=gen, dtype=torch.float64))
    candidates = g0 + radius * u
    assert worst >= float((candidates @ grads.T).min(1).values.max()) - 1e-4 * float(radius)
    # Rescaling divides by 1 + c^2 (official default) or 1 + c.
    torch.testing.assert_close(run(CAGrad(c=c), grads.float()).direction, out.direction / 1.25)
    torch.testing.assert_close(
        run(CAGrad(c=c, rescale="1+c"), grads.float()).direction, out.direction / 1.5
    )


# ------------------------------------------------------------------------------- Aligned-MTL


def test_aligned_mtl_on_orthogonal_gradients_aligns_the_projections():
    # Singular values 3, 1, 2 -> B = sigma_min * diag(1/3, 1, 1/2); weights = B 1; update
    # = (1, 1, 1): the same projection 1 onto every task direction.
    g = t([3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0])
    out = run(AlignedMTL(), g)
    torch.testing.assert_close(out.weights, torch.tensor([1 / 3, 1.0, 0.5]))
    torch.testing.assert_close(out.direction, torch.tensor([1.0, 1.0, 1.0]))
    # "median" rescales to the median singular value 2.
    torch.testing.assert_close(
        run(AlignedMTL(scale_mode="median"), g).direction, torch.tensor([2.0, 2.0, 2.0])
    )


def test_aligned_mtl_aligned_system_is_orthogonal_with_equal_norms():
    grads = conflicting_grads(T=4, P=64).double()
    agg = AlignedMTL()
    b = agg.balance_matrix(grads @ grads.T)
    aligned = b @ grads  # rows: the aligned task gradients (B symmetric)
    gram = aligned @ aligned.T
    torch.testing.assert_close(gram, gram[0, 0] * torch.eye(4, dtype=torch.float64))
    direction = run(agg, grads.float()).direction.double()
    torch.testing.assert_close(direction, aligned.sum(0), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ torchjd


def test_upgrad_never_conflicts_with_a_task():
    # torchjd's documented example (computed there with quadprog).
    out = run(UPGrad(), t([-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]))
    torch.testing.assert_close(
        out.direction, torch.tensor([0.2929, 1.9004, 1.9004]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(out.weights, torch.tensor([1.1109, 0.7894]), atol=1e-4, rtol=0)
    for seed in range(5):
        grads = conflicting_grads(T=5, P=32, seed=seed)
        d = run(UPGrad(), grads).direction
        inner = grads @ d
        assert (inner >= -1e-3 * grads.norm(dim=1) * d.norm()).all(), inner


@pytest.mark.skipif(find_spec("cvxpy") is not None, reason="cvxpy is installed")
def test_nash_mtl_without_cvxpy_names_the_package_to_install():
    with pytest.raises(ImportError, match=r"torchjd\[nash_mtl\]"):
        NashMTL()


# ---------------------------------------------------------------------------------- contract


def discover() -> list[type[GradientAggregator]]:
    return list(aggregator_classes().values())


AGGREGATORS = discover()


def test_discovery_finds_every_method():
    names = {c.__name__ for c in AGGREGATORS}
    expected = {"PCGrad", "CAGrad", "MGDA", "MGDAUB", "IMTLG", "AlignedMTL", "UPGrad", "NashMTL"}
    assert expected <= names


def make(cls, **kw) -> GradientAggregator:
    try:
        return cls(**kw)
    except ImportError as e:
        pytest.skip(f"{cls.__name__}: {e}")


def losses_for(agg, T):
    return torch.linspace(0.5, 2.0, T) if agg.needs_losses else None


@pytest.fixture(params=AGGREGATORS, ids=lambda c: c.__name__)
def cls(request):
    return request.param


def test_contract_output_shapes_and_consistency(cls):
    agg = make(cls)
    assert cls.needs_all_tasks is True and cls.works_on in ("parameters", "representation")
    grads = conflicting_grads(T=4, P=100)
    out = run(agg, grads, losses=losses_for(agg, 4))
    assert out.direction.shape == (100,) and out.direction.dtype == torch.float32
    assert out.weights.shape == (4,) and out.weights.dtype == torch.float32
    assert torch.isfinite(out.direction).all() and torch.isfinite(out.weights).all()
    assert out.tasks == ["t0", "t1", "t2", "t3"] and set(out.weights_by_task) == set(out.tasks)
    # The update is a descent direction for the tasks on average.
    assert float(grads.mean(0) @ out.direction) > 0


def test_contract_permuting_the_tasks_permutes_the_weights(cls):
    """A property of the methods, not of the code path: relabelling the tasks relabels the
    weights and leaves the update unchanged (PCGrad's random projection order is exempt)."""
    if cls is PCGrad:
        pytest.skip("PCGrad projects in a random task order")
    grads = conflicting_grads(T=4, P=100)
    order = torch.tensor([2, 0, 3, 1])
    losses = losses_for(make(cls), 4)
    a = run(make(cls), grads, losses=losses)
    b = run(make(cls), grads[order], losses=None if losses is None else losses[order])
    torch.testing.assert_close(b.weights, a.weights[order], rtol=2e-3, atol=1e-5)
    scale = float(a.direction.norm())
    assert float((b.direction - a.direction).norm()) <= 2e-3 * scale


def test_contract_degenerate_inputs_stay_finite(cls):
    for grads in (torch.zeros(3, 10), torch.randn(1, 10), torch.zeros(1, 10)):
        agg = make(cls)
        out = run(agg, grads, losses=losses_for(agg, grads.shape[0]))
        assert torch.isfinite(out.direction).all() and torch.isfinite(out.weights).all()


def test_contract_partial_step_names_the_rows(cls):
    agg = make(cls)
    agg.setup(["a", "b", "c"])
    grads = conflicting_grads(T=2, P=50)
    out = agg.aggregate(grads, losses=losses_for(agg, 2), tasks=["a", "c"])
    assert list(out.weights_by_task) == ["a", "c"]
    if cls is NashMTL:  # a step without task b: Nash bargaining over the two present tasks
        fresh = make(cls)
        fresh.setup(["a", "c"])
        expected = fresh.aggregate(grads, losses=losses_for(fresh, 2))
        assert torch.allclose(out.weights, expected.weights, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError):
        agg.aggregate(grads)  # 2 rows, 3 tasks, no names
    with pytest.raises(ValueError):
        agg.aggregate(grads, tasks=["c", "a"])  # not in set-up order


@pytest.mark.parametrize("T", [2, 3, 5])
def test_contract_equal_gradients_get_equal_weights(cls, T):
    g = torch.randn(37, generator=torch.Generator().manual_seed(T))
    grads = g.expand(T, -1).clone()
    agg = make(cls)
    out = run(agg, grads, losses=torch.ones(T) if agg.needs_losses else None)
    torch.testing.assert_close(out.weights, out.weights.mean().expand(T), rtol=1e-5, atol=1e-6)
    assert float(out.weights.abs().min()) > 0
    cos = torch.nn.functional.cosine_similarity(out.direction, g, dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-5)


def test_contract_bf16_inputs_match_float32(cls):
    """Inputs are cast to float32 first, and the result moves by at most rtol 2e-2 (relative to
    the direction's norm / the largest weight) when the gradients are rounded to bf16."""
    grads = conflicting_grads(T=4, P=256)
    a, b, c = make(cls), make(cls), make(cls)
    losses = losses_for(a, 4)
    ref = run(a, grads, losses=losses)
    low = run(b, grads.bfloat16(), losses=losses)
    cast = run(c, grads.bfloat16().float(), losses=losses)
    assert low.direction.dtype == torch.float32
    torch.testing.assert_close(low.direction, cast.direction, rtol=0, atol=0)
    scale = float(ref.direction.norm())
    assert float((low.direction - ref.direction).norm()) <= 2e-2 * scale
    assert float((low.weights - ref.weights).abs().max()) <= 2e-2 * float(ref.weights.abs().max())


def test_contract_state_round_trip_reproduces_the_next_output(cls):
    grads = [conflicting_grads(T=3, P=40, seed=s) for s in range(4)]
    seeded = "seed" in inspect.signature(cls).parameters  # only PCGrad draws random numbers
    a = make(cls, **({"seed": 11} if seeded else {}))
    a.setup(["x", "y", "z"])
    for g in grads[:2]:
        a.aggregate(g, losses=losses_for(a, 3))
    b = make(cls, **({"seed": 99} if seeded else {}))
    b.setup(["x", "y", "z"])
    b.load_state_dict(a.state_dict())
    for g in grads[2:]:
        out_a = a.aggregate(g, losses=losses_for(a, 3))
        out_b = b.aggregate(g, losses=losses_for(b, 3))
        torch.testing.assert_close(out_a.direction, out_b.direction, rtol=0, atol=0)
        torch.testing.assert_close(out_a.weights, out_b.weights, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_contract_cuda_matches_cpu(cls):
    grads = conflicting_grads(T=4, P=3000)
    a, b = make(cls), make(cls)
    losses = losses_for(a, 4)
    cpu = run(a, grads, losses=losses)
    gpu = run(b, grads.cuda().bfloat16().float(), losses=losses)
    assert gpu.direction.device.type == "cuda" and gpu.weights.device.type == "cuda"
    cpu_bf = run(make(cls), grads.bfloat16().float(), losses=losses)
    torch.testing.assert_close(gpu.direction.cpu(), cpu_bf.direction, rtol=1e-4, atol=1e-4)
    assert float((gpu.direction.cpu() - cpu.direction).norm()) <= 2e-2 * float(cpu.direction.norm())


def test_contract_checkpoints_with_the_former_seed_entry_still_load(cls):
    """Every aggregator used to save ``{"seed", "generator"}``; only PCGrad still draws numbers,
    but checkpoints written before load (strict) into all of them."""
    agg = make(cls)
    agg.setup(["x", "y", "z"])
    old = {"seed": 0, "generator": torch.Generator().manual_seed(0).get_state()}
    state = dict(agg.state_dict())
    state["_extra_state"] = {**old, **state.get("_extra_state", {})}
    agg.load_state_dict(state)
    assert torch.isfinite(agg.aggregate(conflicting_grads(T=3, P=20)).weights).all()


# ------------------------------------------------------------------------ properties, by table
# Named, reusable property checks (torchjd's ``tests/unit/aggregation/_asserts.py`` idea), run on
# every aggregator for the properties its paper promises. A new method adds a row to PROPERTIES.


def _output(cls, grads):
    agg = make(cls)
    return run(agg, grads, losses=losses_for(agg, grads.shape[0]))


def _size(d, grads):
    """The update's norm, or 1% of the largest gradient where the update is (near) zero."""
    return max(float(d.norm()), 1e-2 * float(grads.norm(dim=1).max()))


def assert_permutation_invariant(cls, grads, tol=2e-3):
    """Relabelling the tasks relabels the weights and leaves the update unchanged."""
    order = torch.randperm(grads.shape[0], generator=torch.Generator().manual_seed(0))
    a, b = _output(cls, grads), _output(cls, grads[order])
    torch.testing.assert_close(b.weights, a.weights[order], rtol=tol, atol=1e-5)
    assert float((b.direction - a.direction).norm()) <= tol * float(a.direction.norm())


def assert_non_conflicting(cls, grads, tol=1e-4):
    """The update decreases no task's loss to first order: ``g_t . d >= 0`` for every ``t``."""
    d = _output(cls, grads).direction
    assert (grads @ d >= -tol * grads.norm(dim=1) * d.norm()).all(), grads @ d


def assert_linear_under_scaling(cls, grads, tol=1.5e-2):
    """Scaling the rows by ``a c1 + b c2`` (positive) gives ``a d(c1) + b d(c2)``. UPGrad: 4.3e-3
    measured (its projector's ``reg_eps``); PCGrad: exact (same seed, so the same order)."""
    gen = torch.Generator().manual_seed(1)
    c1, c2 = (
        torch.rand(len(grads), generator=gen) + 0.2,
        torch.rand(len(grads), generator=gen) + 0.2,
    )
    d1, d2 = (
        _output(cls, c1[:, None] * grads).direction,
        _output(cls, c2[:, None] * grads).direction,
    )
    d = _output(cls, (0.3 * c1 + 0.7 * c2)[:, None] * grads).direction
    assert float((d - (0.3 * d1 + 0.7 * d2)).norm()) <= tol * _size(d, grads)


def assert_positively_homogeneous(cls, grads, tol=1e-5):
    """Scaling every gradient by 3 scales the update by 3 (the weights are scale free)."""
    d, d3 = _output(cls, grads).direction, _output(cls, 3.0 * grads).direction
    assert float((d3 - 3 * d).norm()) <= tol * _size(d3, grads)


PERM, NONCONF, LINEAR, HOMOG = (
    assert_permutation_invariant,
    assert_non_conflicting,
    assert_linear_under_scaling,
    assert_positively_homogeneous,
)
PROPERTIES = {
    "PCGrad": [LINEAR, HOMOG],  # a random projection order: not permutation invariant
    "CAGrad": [PERM, HOMOG],
    "MGDA": [PERM, NONCONF, HOMOG],  # the min-norm point d has g_t . d >= ||d||^2
    "MGDAUB": [PERM, NONCONF, HOMOG],
    "IMTLG": [PERM, HOMOG],
    "AlignedMTL": [PERM, HOMOG],
    "UPGrad": [PERM, NONCONF, LINEAR, HOMOG],
    "NashMTL": [PERM, NONCONF],  # G G^T a = 1/a > 0; the update's norm is capped (max_norm)
}
# Gradients with a conflicting pair and some direction that improves every task (where the hull
# of the gradients contains 0, the non-conflicting update is 0 and Nash bargaining has no
# solution).
PROPERTY_CASES = [conflicting_grads(T=T, P=32, seed=s) for s, T in enumerate((2, 3, 4, 5))]


def test_every_aggregator_has_a_properties_row():
    assert {c.__name__ for c in AGGREGATORS} == set(PROPERTIES)


@pytest.mark.filterwarnings("ignore:.*DPP.*")
@pytest.mark.parametrize(
    ("name", "check"),
    [(n, c) for n, checks in PROPERTIES.items() for c in checks],
    ids=lambda x: x if isinstance(x, str) else x.__name__.removeprefix("assert_"),
)
def test_promised_property(name, check):
    cls = next(c for c in AGGREGATORS if c.__name__ == name)
    for grads in PROPERTY_CASES:
        check(cls, grads)
