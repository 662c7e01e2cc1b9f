"""GradNorm: hand-checked updates, layer selection, checkpoints and skipped steps."""

import math

import pytest
import torch
from torch import nn

from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.weighting.base import StepContext
from mtlkit.weighting.gradnorm import GradNorm

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
}


def _method(tasks=("a", "b"), **kw) -> GradNorm:
    method = GradNorm(**kw)
    method.setup(list(tasks))
    return method


def _step(method, layer, values, grads, step=0):
    """Losses ``L_i = values_i + g_i * sum(W)`` at ``W = 0``: value ``values_i``, ``||dL/dW||``
    = ``g_i * sqrt(W.numel())``."""
    with torch.no_grad():
        layer.zero_()
    losses = {
        t: v + g * layer.sum() for t, v, g in zip(method.task_names, values, grads, strict=True)
    }
    ctx = StepContext(
        step=step, task_names=method.task_names, named_shared_parameters=lambda: [("w", layer)]
    )
    return losses, method(losses, ctx)


def _hand_grad(w, norms, values, initial, alpha):
    """dL_grad/dw_i = g_i * sign(w_i g_i - target_i), target_i = mean(G) * r_i ** alpha."""
    big_g = [wi * gi for wi, gi in zip(w, norms, strict=True)]
    ratios = [v / v0 for v, v0 in zip(values, initial, strict=True)]
    r = [x / (sum(ratios) / len(ratios)) for x in ratios]
    target = [sum(big_g) / len(big_g) * ri**alpha for ri in r]
    return [
        gi * (0.0 if gw == tg else math.copysign(1.0, gw - tg))
        for gi, gw, tg in zip(norms, big_g, target, strict=True)
    ]


def _renormalised(new):
    return [x * len(new) / sum(new) for x in new]


def _hand_update(w, norms, values, initial, alpha, lr):
    """One SGD GradNorm step by hand."""
    grad = _hand_grad(w, norms, values, initial, alpha)
    return _renormalised([wi - lr * gr for wi, gr in zip(w, grad, strict=True)])


def test_sgd_update_matches_hand_computation():
    layer = nn.Parameter(torch.zeros(1, 4))  # ||grad|| = 2 * g_i
    method = _method(alpha=1.5, lr=0.1, optimizer="sgd")
    w, initial = [1.0, 1.0], [1.0, 2.0]
    for values, grads in [([1.0, 2.0], [1.0, 0.25]), ([0.5, 1.8], [0.5, 0.4])]:
        losses, out = _step(method, layer, values, grads)
        assert out.loss.item() == pytest.approx(
            sum(wi * v for wi, v in zip(w, values, strict=True))
        )
        assert [out.weights[t].item() for t in "ab"] == pytest.approx(w)
        w = _hand_update(w, [2 * g for g in grads], values, initial, 1.5, 0.1)
        assert method.task_weights.tolist() == pytest.approx(w, rel=1e-6)
    assert method.initial_losses.tolist() == initial
    assert method.parameter_groups() == []


@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_alpha_sets_the_target(alpha):
    """G = (0.6, 1.4), r = (2/3, 4/3): G_a lies between Gbar r_a^1.5 and Gbar r_a^1."""
    layer = nn.Parameter(torch.zeros(1, 1))
    method = _method(alpha=alpha, lr=0.05, optimizer="sgd")
    _step(method, layer, [1.0, 1.0], [1.0, 1.0])  # r = 1 and G equal: no change
    assert method.task_weights.tolist() == [1.0, 1.0]
    _step(method, layer, [0.5, 1.0], [0.6, 1.4], step=1)
    expected = _hand_update([1.0, 1.0], [0.6, 1.4], [0.5, 1.0], [1.0, 1.0], alpha, 0.05)
    assert method.task_weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert (method.task_weights[0] < 1.0) == (alpha == 1.5)


def test_adam_update_matches_hand_computation():
    layer = nn.Parameter(torch.zeros(1, 1))
    method = _method(alpha=1.5, lr=0.025)
    w, m, v, initial = [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 2.0]
    steps = [([1.0, 2.0], [1.0, 0.25]), ([0.5, 1.8], [0.5, 0.4]), ([0.4, 1.7], [0.5, 0.45])]
    for t, (values, grads) in enumerate(steps, start=1):
        _step(method, layer, values, grads)
        grad = _hand_grad(w, grads, values, initial, 1.5)
        m = [0.9 * mi + 0.1 * g for mi, g in zip(m, grad, strict=True)]
        v = [0.999 * vi + 0.001 * g * g for vi, g in zip(v, grad, strict=True)]
        w = _renormalised(
            [
                wi - 0.025 * (mi / (1 - 0.9**t)) / (math.sqrt(vi / (1 - 0.999**t)) + 1e-8)
                for wi, mi, vi in zip(w, m, v, strict=True)
            ]
        )
        assert method.task_weights.tolist() == pytest.approx(w, rel=1e-5)


def test_weights_stay_positive():
    layer = nn.Parameter(torch.zeros(1, 1))
    method = _method(lr=10.0, optimizer="sgd")  # a huge step would push w_a below zero
    _step(method, layer, [1.0, 1.0], [1.0, 0.1])
    assert method.task_weights.min() > 0
    assert method.task_weights.sum().item() == pytest.approx(2.0)


def test_adam_moves_weight_toward_slower_task_and_keeps_sum():
    layer = nn.Parameter(torch.zeros(2, 3))
    method = _method(tasks=("fast", "slow", "mid"))
    previous = method.task_weights.clone()
    _step(method, layer, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    for t in range(1, 30):
        _step(method, layer, [0.97**t, 0.995**t, 0.985**t], [1.0, 1.0, 1.0], step=t)
        w = method.task_weights
        assert w.sum().item() == pytest.approx(3.0)
        assert w[1] > previous[1] and w[0] < previous[0]
        previous = w.clone()
    assert method.task_weights[1] > method.task_weights[2] > method.task_weights[0]


def test_equal_tasks_keep_equal_weights():
    layer = nn.Parameter(torch.zeros(3, 3))
    method = _method(tasks=("a", "b", "c"))
    for t in range(5):
        _step(method, layer, [2.0 * 0.9**t] * 3, [0.3] * 3, step=t)
        assert method.task_weights.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_non_finite_gradient_norm_skips_update():
    layer = nn.Parameter(torch.zeros(2, 2))
    method = _method()
    _step(method, layer, [1.0, 1.0], [1.0, 3.0])
    before = {k: v.clone() for k, v in method.state_dict().items()}
    ctx = StepContext(step=1, task_names=["a", "b"], named_shared_parameters=lambda: [("w", layer)])
    losses = {"a": 0.5 + layer.sum(), "b": 0.8 + layer.sqrt().sum()}  # d sqrt(0) = inf
    out = method(losses, ctx)
    assert torch.isfinite(out.loss)
    for key, value in method.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_state_dict_round_trip_gives_identical_next_update():
    layer = nn.Parameter(torch.zeros(2, 2))
    first = _method()
    for t, values in enumerate([[1.0, 2.0], [0.6, 1.9], [0.4, 1.7]]):
        _step(first, layer, values, [1.0, 0.5], step=t)
    second = _method()
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.initial_losses, torch.tensor([1.0, 2.0]))
    assert second.has_initial.all()
    for method in (first, second):
        _step(method, layer, [0.3, 1.6], [0.8, 0.7], step=3)
    assert torch.equal(first.task_weights, second.task_weights)
    assert not torch.equal(first.task_weights, torch.ones(2))


def test_absent_tasks_are_left_out_and_get_their_own_initial_loss():
    layer = nn.Parameter(torch.zeros(2, 2))
    method = _method(tasks=("a", "b", "c"))
    _step(method, layer, [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    ctx = StepContext(step=1, task_names=["a", "b", "c"], named_shared_parameters=lambda: [])
    out = method({"c": 2.0 + layer.sum()}, ctx)  # one task: nothing to balance, no layer needed
    assert set(out.weights) == {"c"}
    assert method.task_weights.tolist() == pytest.approx([1.0, 1.0, 1.0])
    late = _method(tasks=("a", "b", "c"))
    late({"a": torch.tensor(4.0)}, ctx)
    assert late.has_initial.tolist() == [True, False, False]
    assert late.initial_losses[0].item() == 4.0


def _bert_step(method, encoder):
    torch.manual_seed(0)
    heads = nn.ModuleDict({t: nn.Linear(32, 2) for t in method.task_names})
    ids = torch.randint(0, 99, (4, 7))
    hidden = encoder(ids, torch.ones_like(ids))[:, 0]
    labels = torch.tensor([0, 1, 1, 0])
    losses = {t: nn.functional.cross_entropy(h(hidden), labels) for t, h in heads.items()}
    ctx = StepContext(
        step=0,
        task_names=method.task_names,
        named_shared_parameters=lambda: [
            (n, p) for n, p in encoder.named_parameters() if p.requires_grad
        ],
    )
    out = method(losses, ctx)
    out.loss.backward()  # the ordinary backward still works after GradNorm's own gradients
    return ctx


def test_default_layer_on_tiny_bert_and_bad_patterns():
    torch.manual_seed(0)
    encoder = HFEncoder(config=TINY_BERT)
    method = _method(optimizer="sgd")
    ctx = _bert_step(method, encoder)
    chosen = [n for n, _ in method.select_parameters(ctx.named_shared_parameters())]
    assert chosen == ["model.encoder.layer.1.output.dense.weight"]
    assert not torch.equal(method.task_weights, torch.ones(2))  # G_a != G_b: weights moved
    assert method.task_weights.sum().item() == pytest.approx(2.0)
    assert encoder.model.encoder.layer[1].output.dense.weight.grad is not None

    chosen = _method(shared_layer=r"layer\.0\.output\.dense\.(weight|bias)").select_parameters(
        ctx.named_shared_parameters()
    )
    assert [n for n, _ in chosen] == [
        "model.encoder.layer.0.output.dense.weight",
        "model.encoder.layer.0.output.dense.bias",
    ]
    with pytest.raises(ConfigError, match="no_such_layer"):
        _method(shared_layer="no_such_layer").select_parameters(ctx.named_shared_parameters())
    with pytest.raises(ConfigError, match="pooler"):
        _bert_step(_method(shared_layer="pooler.dense.weight"), encoder)


def test_invalid_arguments():
    with pytest.raises(ConfigError):
        GradNorm(alpha=-1.0)
    with pytest.raises(ConfigError):
        GradNorm(lr=0.0)
    with pytest.raises(ConfigError):
        GradNorm(optimizer="rmsprop")
