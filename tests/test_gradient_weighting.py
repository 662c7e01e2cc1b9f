"""Gradient-level methods inside the model: the update equals the aggregated direction."""

import lightning as L
import pytest
import torch
from helpers import quiet_trainer, tiny_model, toy_datamodule, toy_task
from torch import nn

from mtlkit.data import InMemory
from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.tasks import SequenceClassification
from mtlkit.testing import TINY_ENCODER
from mtlkit.training import MultiTaskModule
from mtlkit.weighting import GradientWeighting, StepContext, TaskGradients
from mtlkit.weighting.autogram import AutogramGramian, reset_engine
from mtlkit.weighting.gradient import (
    IMTLG,
    MGDA,
    MGDAUB,
    AlignedMTL,
    CAGrad,
    PCGrad,
    UPGrad,
    gram_matrix,
)

AGGREGATORS = [PCGrad, CAGrad, MGDA, IMTLG, AlignedMTL, UPGrad]
TASKS = ["a", "b", "c"]


def _setup(seed=0):
    torch.manual_seed(seed)
    encoder = nn.Linear(5, 4)
    heads = nn.ModuleDict({t: nn.Linear(4, 1) for t in TASKS})
    x = torch.randn(6, 5)
    targets = {t: torch.randn(6, 1) * (i + 1) for i, t in enumerate(TASKS)}
    return encoder, heads, x, targets


def _step(method, encoder, heads, x, targets, scale=1.0):
    z = encoder(x)
    # Each head reads its own view of the shared representation, as in the model (one slice or
    # pooled tensor per task).
    reps = {t: z.view_as(z) for t in TASKS}
    losses = {t: ((heads[t](reps[t]) - targets[t]) ** 2).mean() for t in TASKS}
    ctx = StepContext(
        step=0,
        task_names=TASKS,
        shared_parameters=lambda: list(encoder.parameters()),
        representations=reps,
        loss_scale=scale,
    )
    return losses, method(losses, ctx)


def _task_grads(encoder, heads, x, targets):
    """Per-task gradients of the encoder and of each head, from a fresh forward pass (the
    method's hooks live on its own step's graph only)."""
    z = encoder(x)
    losses = {t: ((heads[t](z) - targets[t]) ** 2).mean() for t in TASKS}
    shared = torch.stack(
        [
            torch.cat([g.ravel() for g in _grads(losses[t], list(encoder.parameters()))])
            for t in TASKS
        ]
    )
    own = {t: _grads(losses[t], list(heads[t].parameters())) for t in TASKS}
    return losses, shared, own


def _grads(loss, params):
    return [g.clone() for g in torch.autograd.grad(loss, params, retain_graph=True)]


@pytest.mark.parametrize("agg", AGGREGATORS, ids=lambda c: c.__name__)
def test_backward_gives_the_aggregated_direction(agg):
    encoder, heads, x, targets = _setup()
    method = GradientWeighting(agg())
    method.setup(TASKS)
    losses, grads, _ = _task_grads(encoder, heads, x, targets)
    _, out = _step(method, encoder, heads, x, targets)
    reference = agg()
    reference.setup(TASKS)
    expected = reference.aggregate(grads, {t: float(v) for t, v in losses.items()}, TASKS)
    out.loss.backward()
    got = torch.cat([p.grad.ravel() for p in encoder.parameters()])
    torch.testing.assert_close(got, expected.direction, rtol=1e-4, atol=1e-6)


def test_representation_gradients_are_summed_per_task():
    encoder, heads, x, targets = _setup()
    method = GradientWeighting(MGDAUB())
    method.setup(TASKS)
    losses, out = _step(method, encoder, heads, x, targets)
    z = encoder(x)
    rows = []
    for t in TASKS:
        zz = z.detach().requires_grad_(True)
        loss = ((heads[t](zz) - targets[t]) ** 2).mean()
        rows.append(torch.autograd.grad(loss, zz)[0].sum(0))
    expected = MGDA().aggregate(torch.stack(rows))
    got = torch.stack([out.weights[t] for t in TASKS])
    torch.testing.assert_close(got, expected.weights, rtol=1e-4, atol=1e-6)


def test_loss_scale_is_undone_and_overflow_skips_the_update():
    encoder, heads, x, targets = _setup()
    plain, scaled = GradientWeighting(PCGrad(seed=3)), GradientWeighting(PCGrad(seed=3))
    plain.setup(TASKS)
    scaled.setup(TASKS)
    _, a = _step(plain, encoder, heads, x, targets)
    _, b = _step(scaled, encoder, heads, x, targets, scale=2.0**12)
    for t in TASKS:
        torch.testing.assert_close(a.weights[t], b.weights[t], rtol=1e-4, atol=1e-6)
    before = scaled.aggregator.generator.get_state()
    _, c = _step(scaled, encoder, heads, x, targets, scale=float("inf"))
    assert all(c.weights[t].item() == 1.0 for t in TASKS)
    assert torch.equal(scaled.aggregator.generator.get_state(), before)


@pytest.mark.parametrize("agg", [PCGrad, MGDAUB], ids=lambda c: c.__name__)
def test_model_trains_with_a_gradient_method(agg, tmp_path):
    L.seed_everything(0)
    dm = toy_datamodule(
        [toy_task("a", n=80), toy_task("b", n=80, seed=1)],
        batch_mode="mixed",
        batch_size=16,
        steps_per_epoch=30,
    )
    model = tiny_model(
        dm.tasks,
        weighting=GradientWeighting(agg()),
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, dm)
    m = trainer.callback_metrics
    assert m["val/a/accuracy"] > 0.7 and m["val/b/accuracy"] > 0.7


def test_any_aggregator_can_work_on_the_representation():
    encoder, heads, x, targets = _setup()
    rep = GradientWeighting(PCGrad(), works_on="representation")
    base = GradientWeighting(MGDA(), works_on="representation")
    ub = GradientWeighting(MGDAUB())
    for m in (rep, base, ub):
        m.setup(TASKS)
    _, a = _step(base, encoder, heads, x, targets)
    _, b = _step(ub, encoder, heads, x, targets)
    for t in TASKS:  # MGDA on the representation is MGDA-UB
        torch.testing.assert_close(a.weights[t], b.weights[t])
    _, c = _step(rep, encoder, heads, x, targets)
    assert set(c.weights) == set(TASKS)
    with pytest.raises(Exception, match="works_on"):
        GradientWeighting(PCGrad(), works_on="params")


@pytest.mark.parametrize("works_on", ["parameters", "representation"])
def test_frozen_encoder_is_a_clear_error(works_on):
    """With the encoder frozen (FreezeEncoder, cached features) there is no shared gradient to
    aggregate: one message naming the cause, not torch's 'inputs cannot be empty'."""
    from mtlkit.errors import ConfigError

    encoder, heads, x, targets = _setup()
    encoder.requires_grad_(False)
    method = GradientWeighting(PCGrad(), works_on)
    method.setup(TASKS)
    z = encoder(x)
    losses = {t: ((heads[t](z) - targets[t]) ** 2).mean() for t in TASKS}
    ctx = StepContext(
        step=0,
        task_names=TASKS,
        shared_parameters=lambda: [p for p in encoder.parameters() if p.requires_grad],
        representations={t: z for t in TASKS},
    )
    with pytest.raises(ConfigError, match="no encoder parameter is trainable"):
        method(losses, ctx)


@pytest.mark.parametrize("agg", [MGDA, PCGrad, CAGrad], ids=lambda c: c.__name__)
@pytest.mark.parametrize("head_gradients", ["unweighted", "weighted"])
def test_head_gradients_option(agg, head_gradients):
    """LibMTL's ``AbsWeighting.backward`` and torchjd's ``mtl_backward`` give each head the plain
    gradient of its own loss (``"unweighted"``, the default); ``"weighted"`` gives it
    ``w_t grad L_t``. Either way the encoder gets ``sum_t w_t g_t``. The expected gradients are
    taken directly by autograd on each task's own loss."""
    encoder, heads, x, targets = _setup()
    method = GradientWeighting(agg(), head_gradients=head_gradients)
    method.setup(TASKS)
    _, shared, own = _task_grads(encoder, heads, x, targets)
    _, out = _step(method, encoder, heads, x, targets)
    weights = torch.stack([out.weights[t] for t in TASKS])
    assert float(weights.max() - weights.min()) > 0.05  # the two modes differ here
    out.loss.backward()
    for i, t in enumerate(TASKS):
        factor = 1.0 if head_gradients == "unweighted" else float(weights[i])
        for p, g in zip(heads[t].parameters(), own[t], strict=True):
            torch.testing.assert_close(p.grad, factor * g, rtol=1e-5, atol=1e-7)
    got = torch.cat([p.grad.ravel() for p in encoder.parameters()])
    torch.testing.assert_close(got, weights @ shared, rtol=1e-5, atol=1e-6)


def test_head_gradients_default_is_the_references_and_bad_values_are_rejected():
    assert GradientWeighting(PCGrad()).head_gradients == "unweighted"
    with pytest.raises(ValueError, match="head_gradients"):
        GradientWeighting(PCGrad(), head_gradients="scaled")


# ------------------------------------------------------------------------- gramian="autogram"
def _tiny_bert_model(tasks: int, weighting=None):
    specs = [
        SequenceClassification(
            f"t{i}", InMemory({"train": {"text": ["x"], "label": [0]}}), num_labels=2
        )
        for i in range(tasks)
    ]
    torch.manual_seed(0)
    model = MultiTaskModule(HFEncoder(config=dict(TINY_ENCODER)), specs, weighting=weighting)
    g = torch.Generator().manual_seed(0)
    subs = {}
    for s in specs:
        ids = torch.randint(5, TINY_ENCODER["vocab_size"], (6, 16), generator=g)
        labels = torch.randint(0, 2, (6,), generator=g)
        subs[s.name] = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return model.train(), subs


def test_autogram_gramian_matches_the_explicit_gram_matrix():
    """torchjd's autogram engine on the tiny BERT (dropout on), against ``G G^T`` of the explicit
    per-task gradients. Measured relative error (max entry): up to 1.1e-7 (float32); tolerance
    1e-6. A forward whose Gramian is never taken (a skipped step) does not leak into the next."""
    model, subs = _tiny_bert_model(4)
    autogram = AutogramGramian()
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    for step in range(4):
        losses = model.task_losses(model(subs), subs)
        vector = torch.stack(list(losses.values()))
        gram = autogram.gramian(vector, model.encoder, scale=2.0**10 if step == 3 else 1.0)
        if step == 0:
            assert gram is None  # built in this step: its forward was not recorded
            continue
        if step == 2:
            model(subs)  # a step skipped after its forward
            losses = model.task_losses(model(subs), subs)
            gram = autogram.gramian(torch.stack(list(losses.values())), model.encoder)
        explicit = gram_matrix(TaskGradients().of_parameters(losses, params))
        error = float((gram.double() - explicit).abs().max() / explicit.abs().max())
        assert error <= 1e-6, error
    reset_engine(autogram._engine)  # torchjd's private state, used in this one function


# The weights of gramian='autogram' against the explicit path: tests/test_one_pass_gramian.py.


def test_autogram_needs_a_gramian_method_on_the_parameters():
    with pytest.raises(ConfigError, match="autogram"):
        GradientWeighting(MGDAUB(), gramian="autogram")
    with pytest.raises(ConfigError, match="gramian"):
        GradientWeighting(MGDA(), gramian="implicit")
