"""Loss-level weighting methods checked against their papers on hand-made numbers."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import StepContext
from mtlkit.weighting.dwa import DynamicWeightAverage
from mtlkit.weighting.famo import FAMO
from mtlkit.weighting.rlw import RandomLossWeighting
from mtlkit.weighting.uncertainty import UncertaintyWeighting

TASKS = ["a", "b", "c"]


def _setup(method, tasks=TASKS):
    method.setup(list(tasks))
    return method


def _ctx(step: int = 0, tasks=TASKS) -> StepContext:
    return StepContext(step=step, task_names=list(tasks))


def _losses(values, tasks=TASKS) -> dict[str, torch.Tensor]:
    return {t: torch.tensor(float(v)) for t, v in zip(tasks, values, strict=True)}


def _weights(out, tasks=TASKS) -> list[float]:
    return [float(out.weights[t]) for t in tasks]


def _round_trip(method, fresh):
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


# ------------------------------------------------------------------ uncertainty
def test_uncertainty_objective_and_stationary_point():
    """Regression ``0.5 e^-s L + 0.5 s`` is stationary at ``s = log L``; classification
    ``e^-s L + 0.5 s`` at ``s = log 2L``; both give the effective weight ``1 / 2L``."""
    values = [0.5, 2.0, 3.0]
    method = _setup(UncertaintyWeighting(regression_tasks=["a"]))
    optimum = [math.log(0.5), math.log(2 * 2.0), math.log(2 * 3.0)]
    with torch.no_grad():
        method.log_vars.copy_(torch.tensor(optimum))
    out = method(_losses(values), _ctx())
    expected = (
        0.5 * math.exp(-optimum[0]) * 0.5
        + 0.5 * optimum[0]
        + sum(math.exp(-s) * v + 0.5 * s for s, v in zip(optimum[1:], values[1:], strict=True))
    )
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert _weights(out) == pytest.approx([1 / (2 * v) for v in values], rel=1e-6)
    out.loss.backward()
    assert method.log_vars.grad.abs().max() < 1e-6


def test_uncertainty_gradient_away_from_optimum():
    method = _setup(UncertaintyWeighting(regression_tasks=["a"]))
    method(_losses([0.5, 2.0, 3.0]), _ctx()).loss.backward()  # s = 0
    assert method.log_vars.grad.tolist() == pytest.approx([-0.25 + 0.5, -2.0 + 0.5, -3.0 + 0.5])


def test_uncertainty_adam_reaches_optimum():
    values = [0.5, 2.0, 3.0]
    method = _setup(UncertaintyWeighting(regression_tasks=["a"], lr=0.05))
    (group,) = method.parameter_groups()
    assert group["lr"] == 0.05 and group["weight_decay"] == 0.0
    optimizer = torch.optim.Adam(method.parameter_groups())
    for step in range(600):
        optimizer.zero_grad()
        method(_losses(values), _ctx(step)).loss.backward()
        optimizer.step()
    optimum = [math.log(0.5), math.log(4.0), math.log(6.0)]
    assert method.log_vars.tolist() == pytest.approx(optimum, abs=1e-2)


def test_uncertainty_uses_only_present_tasks():
    method = _setup(UncertaintyWeighting())
    out = method({"b": torch.tensor(2.0)}, _ctx())
    assert set(out.weights) == {"b"}
    out.loss.backward()
    assert method.log_vars.grad.tolist() == pytest.approx([0.0, -2.0 + 0.5, 0.0])


def test_uncertainty_rejects_unknown_regression_task():
    with pytest.raises(ConfigError, match="unknown regression"):
        _setup(UncertaintyWeighting(regression_tasks=["nope"]))


# -------------------------------------------------------------------------- DWA
def _dwa_expected(ratios, temperature):
    r = np.asarray(ratios) / temperature
    return len(ratios) * np.exp(r) / np.exp(r).sum()


def test_dwa_matches_hand_computation():
    method = _setup(DynamicWeightAverage(temperature=2.0, window_steps=2))
    # window 0 averages (1, 2, 1), window 1 averages (0.5, 2, 1.5): ratios 0.5, 1.0, 1.5
    history = [[0.8, 2.0, 1.0], [1.2, 2.0, 1.0], [0.4, 1.0, 1.5], [0.6, 3.0, 1.5]]
    for step, values in enumerate(history):
        assert _weights(method(_losses(values), _ctx(step))) == [1.0, 1.0, 1.0]
    expected = _dwa_expected([0.5, 1.0, 1.5], 2.0)
    out = method(_losses([9.0, 9.0, 9.0]), _ctx(4))
    assert _weights(out) == pytest.approx(expected.tolist(), rel=1e-6)
    assert sum(_weights(out)) == pytest.approx(3.0)
    assert out.loss.item() == pytest.approx(9.0 * 3.0, rel=1e-6)
    # weights stay fixed inside a window
    assert _weights(method(_losses([1.0, 1.0, 1.0]), _ctx(5))) == pytest.approx(expected.tolist())


def test_dwa_two_task_example():
    method = _setup(DynamicWeightAverage(temperature=2.0, window_steps=1), ["a", "b"])
    for step, values in enumerate([[2.0, 1.0], [1.0, 1.0]]):
        method(_losses(values, ["a", "b"]), _ctx(step, ["a", "b"]))
    out = method(_losses([1.0, 1.0], ["a", "b"]), _ctx(2, ["a", "b"]))
    e = np.exp([0.25, 0.5])
    assert _weights(out, ["a", "b"]) == pytest.approx((2 * e / e.sum()).tolist(), rel=1e-6)


def test_dwa_state_round_trip_mid_window():
    method = _setup(DynamicWeightAverage(window_steps=3))
    rng = np.random.default_rng(0)
    values = rng.uniform(0.5, 2.0, size=(12, 3))
    for step in range(7):  # stop inside window 2
        method(_losses(values[step]), _ctx(step))
    fresh = _round_trip(method, _setup(DynamicWeightAverage(window_steps=3)))
    for step in range(7, 12):
        a = method(_losses(values[step]), _ctx(step))
        b = fresh(_losses(values[step]), _ctx(step))
        assert _weights(a) == _weights(b)
    assert _weights(a) != [1.0, 1.0, 1.0]


def test_dwa_with_a_missing_task():
    method = _setup(DynamicWeightAverage(window_steps=1))
    method(_losses([1.0, 1.0, 1.0]), _ctx(0))
    method({"a": torch.tensor(0.5), "b": torch.tensor(1.0)}, _ctx(1))  # c absent: keeps 1.0
    out = method({"a": torch.tensor(1.0)}, _ctx(2))
    assert set(out.weights) == {"a"}
    expected = _dwa_expected([0.5, 1.0, 1.0], 2.0)
    assert float(out.weights["a"]) == pytest.approx(expected[0], rel=1e-6)


# -------------------------------------------------------------------------- RLW
def test_rlw_weights_follow_the_papers_distribution():
    """Lin et al. 2022: lambda = softmax(z), z ~ N(0, I). Then log(w_i / w_j) = z_i - z_j is
    N(0, 2) for every pair: over 4000 seeded steps its mean, variance and a Kolmogorov-Smirnov
    test against N(0, 2) are checked (bounds: 4 standard errors; a uniform-weights or a
    differently scaled draw fails them by far: variance 0 or 2 s^2)."""
    from scipy.stats import kstest, norm

    method = _setup(RandomLossWeighting(seed=7))
    n = 4000
    weights = np.array([_weights(method(_losses([1.0, 2.0, 3.0]), _ctx(s))) for s in range(n)])
    assert np.allclose(weights.sum(1), 1.0, atol=1e-6) and (weights > 0).all()
    for i, j in ((0, 1), (1, 2), (0, 2)):
        diff = np.log(weights[:, i] / weights[:, j])
        assert abs(diff.mean()) < 4 * math.sqrt(2 / n)
        assert abs(diff.var() - 2.0) < 4 * math.sqrt(2 * 2.0**2 / n)
        assert kstest(diff, norm(scale=math.sqrt(2)).cdf).pvalue > 1e-3
    out = method(_losses([1.0, 2.0, 3.0]), _ctx(n))
    w = _weights(out)
    assert out.loss.item() == pytest.approx(w[0] * 1 + w[1] * 2 + w[2] * 3, rel=1e-6)


def test_rlw_scaled_to_number_of_tasks():
    out = _setup(RandomLossWeighting(seed=1, scale_to_num_tasks=True))(_losses([1, 1, 1]), _ctx())
    assert sum(_weights(out)) == pytest.approx(3.0)
    assert all(w > 0 for w in _weights(out))


def test_rlw_same_seed_same_sequence_and_default_seed():
    a, b = _setup(RandomLossWeighting(seed=3)), _setup(RandomLossWeighting(seed=3))
    c = _setup(RandomLossWeighting(seed=4))
    for step in range(3):
        wa = _weights(a(_losses([1, 1, 1]), _ctx(step)))
        assert wa == _weights(b(_losses([1, 1, 1]), _ctx(step)))
        assert wa != _weights(c(_losses([1, 1, 1]), _ctx(step)))
    torch.manual_seed(123)
    d = _setup(RandomLossWeighting())
    torch.manual_seed(123)
    e = _setup(RandomLossWeighting())
    assert _weights(d(_losses([1, 1, 1]), _ctx())) == _weights(e(_losses([1, 1, 1]), _ctx()))


def test_rlw_state_round_trip_reproduces_next_draw():
    method = _setup(RandomLossWeighting(seed=11))
    for step in range(5):
        method(_losses([1, 1, 1]), _ctx(step))
    fresh = _round_trip(method, _setup(RandomLossWeighting(seed=0)))
    assert "_extra_state" in method.state_dict()
    for step in range(5, 8):
        expected = _weights(method(_losses([1, 1, 1]), _ctx(step)))
        assert _weights(fresh(_losses([1, 1, 1]), _ctx(step))) == expected


def test_rlw_with_a_missing_task():
    out = _setup(RandomLossWeighting(seed=0))({"c": torch.tensor(2.0)}, _ctx())
    assert set(out.weights) == {"c"} and 0 < float(out.weights["c"]) < 1


# ------------------------------------------------------------------------- FAMO
def _official_famo_update(logits, prev, curr, lr, gamma):
    """One logits update as the official code does it (``torch.optim.Adam`` + autograd)."""
    w = logits.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=lr, weight_decay=gamma)
    delta = (prev + 1e-8).log() - (curr + 1e-8).log()
    (grad,) = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)
    w.grad = grad
    optimizer.step()
    return w.detach()


def test_famo_first_step_matches_paper_weights():
    method = _setup(FAMO(), ["a", "b"])
    out = method(_losses([1.0, 4.0], ["a", "b"]), _ctx(0, ["a", "b"]))
    # z = (0.5, 0.5), D = (1, 4): w = (1, 1/4) / (5/4)
    assert _weights(out, ["a", "b"]) == pytest.approx([0.8, 0.2], rel=1e-6)
    assert method.logits.tolist() == [0.0, 0.0]


def test_famo_update_matches_hand_computation():
    prev, curr = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.8])
    method = _setup(FAMO(lr=0.025, weight_decay=1e-3), ["a", "b"])
    method(_losses(prev.tolist(), ["a", "b"]), _ctx(0, ["a", "b"]))
    out = method(_losses(curr.tolist(), ["a", "b"]), _ctx(1, ["a", "b"]))
    official = _official_famo_update(torch.zeros(2), prev, curr, 0.025, 1e-3)
    assert method.logits.tolist() == pytest.approx(official.tolist(), abs=1e-7)
    # by hand: delta = (log 2, log(2/1.8)); grad = z (delta - z.delta) with z = 1/2 is
    # (+, -), and Adam's first step moves each logit by lr against the sign of its gradient
    assert method.logits.tolist() == pytest.approx([-0.025, 0.025], abs=1e-6)
    z = torch.softmax(method.logits, 0)
    scores = z / curr
    assert _weights(out, ["a", "b"]) == pytest.approx((scores / scores.sum()).tolist(), rel=1e-6)


def test_famo_gradient_equals_official_objective():
    theta = torch.tensor([0.3, -0.2], requires_grad=True)
    method = _setup(FAMO(), ["a", "b"])
    with torch.no_grad():
        method.logits.copy_(torch.tensor([0.4, -0.1]))
    losses = {"a": theta[0] ** 2 + 1.0, "b": (theta[1] - 1) ** 2 + 0.5}
    out = method(losses, _ctx(0, ["a", "b"]))
    (ours,) = torch.autograd.grad(out.loss, theta, retain_graph=True)
    stacked = torch.stack(list(losses.values()))
    z, d = torch.softmax(method.logits, -1), stacked + 1e-8
    c = (z / d).sum().detach()
    (official,) = torch.autograd.grad((d.log() * z / c).sum(), theta)
    torch.testing.assert_close(ours, official)


def test_famo_moves_weight_to_the_slower_task():
    method = _setup(FAMO(), ["fast", "slow"])
    tasks = ["fast", "slow"]
    z_slow = []
    for step in range(60):
        values = [2.0 * math.exp(-0.05 * step), 2.0 * math.exp(-0.005 * step)]
        out = method(_losses(values, tasks), _ctx(step, tasks))
        z_slow.append(float(torch.softmax(method.logits, 0)[1]))
        ratio = float(out.weights["slow"] / out.weights["fast"])
    assert z_slow[0] == 0.5
    assert all(b >= a for a, b in zip(z_slow[1:], z_slow[2:], strict=False))
    assert z_slow[-1] > 0.7
    # more weight on the slow task than the loss-ratio weighting of the first step would give
    assert ratio > values[0] / values[1] * 2


def test_famo_equal_losses_keep_equal_weights_and_round_trip():
    method = _setup(FAMO())
    for step in range(5):
        out = method(_losses([1.0 / (step + 1)] * 3), _ctx(step))
        assert _weights(out) == pytest.approx([1 / 3] * 3)
    changing = _setup(FAMO())
    for step in range(6):
        changing(_losses([1.0, 0.9**step, 0.8**step]), _ctx(step))
    fresh = _round_trip(changing, _setup(FAMO()))
    torch.testing.assert_close(fresh.logits, changing.logits)
    nxt = _losses([0.9, 0.5, 0.3])
    assert _weights(fresh(nxt, _ctx(6))) == _weights(changing(nxt, _ctx(6)))


def test_famo_missing_task_updates_only_common_tasks():
    method = _setup(FAMO())
    method(_losses([1.0, 1.0, 1.0]), _ctx(0))
    out = method({"a": torch.tensor(0.5), "b": torch.tensor(0.9)}, _ctx(1))
    assert set(out.weights) == {"a", "b"}
    assert method.logits[2] == 0 and method.adam_steps.tolist() == [1.0, 1.0, 0.0]
    assert method.logits[0] < 0 < method.logits[1]
    assert torch.isfinite(method({"c": torch.tensor(0.0)}, _ctx(2)).loss)


def test_bfloat16_losses_give_float32_weights():
    for method in (
        UncertaintyWeighting(),
        DynamicWeightAverage(window_steps=1),
        RandomLossWeighting(seed=0),
        FAMO(),
    ):
        _setup(method)
        for step in range(3):
            losses = {
                t: torch.tensor(v, dtype=torch.bfloat16)
                for t, v in zip(TASKS, [1, 2, 3], strict=True)
            }
            out = method(losses, _ctx(step))
            assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
            assert all(w.dtype == torch.float32 for w in out.weights.values())
