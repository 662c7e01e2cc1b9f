"""``gramian="one_pass"``: every task's parameter gradient from one backward pass, checked against
the explicit per-task gradients (one ``torch.autograd.grad`` per task)."""

import pytest
import torch
from torch import nn

from mtlkit.data import InMemory
from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.tasks import SequenceClassification
from mtlkit.testing import TINY_ENCODER
from mtlkit.training import MultiTaskModule
from mtlkit.weighting import GradientWeighting, StepContext, TaskGradients
from mtlkit.weighting.autogram import AutogramGramian
from mtlkit.weighting.gradient import MGDA, PCGrad, UPGrad, gram_matrix
from mtlkit.weighting.one_pass import OnePassGramian

#: Rows and widths per task (different, so tasks pad to the widest in the mixed batch).
SHAPES = [(5, 12), (3, 16), (7, 9), (4, 16)]


def _model(weighting=None, tasks: int = 4):
    specs = [
        SequenceClassification(
            f"t{i}", InMemory({"train": {"text": ["x"], "label": [0]}}), num_labels=3
        )
        for i in range(tasks)
    ]
    torch.manual_seed(0)
    encoder = HFEncoder(config=dict(TINY_ENCODER))
    model = MultiTaskModule(encoder, specs, weighting=weighting, lr_scheduler=None)
    g = torch.Generator().manual_seed(0)
    subs = {}
    for s, (rows, width) in zip(specs, SHAPES, strict=False):
        ids = torch.randint(5, TINY_ENCODER["vocab_size"], (rows, width), generator=g)
        mask = torch.ones_like(ids)
        mask[0, width // 2 :] = 0  # a padded example (pad id 0: BERT's padding_idx)
        ids[0, width // 2 :] = 0
        labels = torch.randint(0, 3, (rows,), generator=g)
        subs[s.name] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return model.train(), subs


def _explicit(losses, model):
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    return gram_matrix(TaskGradients().of_parameters(losses, params))


def test_gramian_matches_the_explicit_gram_matrix():
    """Tiny BERT with dropout, every encoder parameter trained (word, position and token-type
    embeddings, LayerNorms, Linears), four tasks of different sizes and widths with padding.
    Measured relative error (max entry) against the explicit ``G G^T``: up to 3.6e-7 (float32,
    5 seeds x 3 steps); tolerance 5e-6. A forward whose Gramian is never taken (a skipped
    step) does not leak into the next."""
    model, subs = _model()
    engine, rows = OnePassGramian(), model.model.encoder_rows(subs)
    assert rows == {"t0": (0, 5), "t1": (5, 8), "t2": (8, 15), "t3": (15, 19)}
    for step in range(4):
        torch.manual_seed(step)
        losses = model.task_losses(model(subs), subs)
        scale = 2.0**10 if step == 3 else 1.0
        gram = engine.gramian(losses, model.encoder, rows, scale)
        if step == 0:
            assert gram is None  # the hooks are built in this step: its forward was not seen
            continue
        if step == 2:
            model(subs)  # a step skipped after its forward
            losses = model.task_losses(model(subs), subs)
            gram = engine.gramian(losses, model.encoder, rows)
        explicit = _explicit(losses, model)
        error = float((gram.detach().double() - explicit).abs().max() / explicit.abs().max())
        assert error <= 5e-6, error
        # Off-diagonal entries are not small next to the diagonal: the test sees cross terms.
        assert explicit.triu(1).abs().max() > 1e-3 * explicit.diagonal().max()


def test_a_task_without_encoder_rows_has_a_zero_row():
    model, subs = _model(tasks=3)
    engine, rows = OnePassGramian(), model.model.encoder_rows(subs)
    model.task_losses(model(subs), subs)
    engine.gramian({}, model.encoder, rows)  # builds the hooks
    losses = model.task_losses(model(subs), subs)
    losses["t9"] = losses["t0"].detach() * 0 + 1.0  # a loss with no rows in the encoder
    losses["t9"].requires_grad_(True)
    gram = engine.gramian(losses, model.encoder, rows)
    assert gram.shape == (4, 4) and not gram[3].any() and not gram[:, 3].any()


def test_only_trainable_parameters_count():
    """Frozen embeddings (as in the CPU suite): the Gramian of the other parameters."""
    model, subs = _model()
    for p in model.encoder.model.embeddings.parameters():
        p.requires_grad_(False)
    engine, rows = OnePassGramian(), model.model.encoder_rows(subs)
    model.task_losses(model(subs), subs)
    engine.gramian({}, model.encoder, rows)
    losses = model.task_losses(model(subs), subs)
    gram = engine.gramian(losses, model.encoder, rows)
    explicit = _explicit(losses, model)
    assert float((gram.double() - explicit).abs().max() / explicit.abs().max()) <= 5e-6


@pytest.mark.parametrize("agg", [MGDA, UPGrad, PCGrad], ids=lambda c: c.__name__)
def test_training_steps_match_the_explicit_gramian(agg):
    """Three optimizer steps through ``training_step`` (which passes the encoder rows): the
    parameters end where the explicit Gramian's run ends. Measured max difference 7e-8
    (PCGrad; MGDA 1e-8, UPGrad 2e-8)."""
    explicit, subs = _model(GradientWeighting(agg()))
    one_pass, _ = _model(GradientWeighting(agg(), gramian="one_pass"))
    batch = {"tasks": subs}
    for model in (explicit, one_pass):
        model.log = lambda *a, **k: None
        optimizer = model.configure_optimizers()
        for step in range(3):
            torch.manual_seed(step)  # the same dropout masks in both
            model.training_step(batch, step).backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), b in zip(explicit.named_parameters(), one_pass.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    # The parameters moved (Adam, lr 1e-4: about 1e-4 per step), far more than the tolerance.
    start, _ = _model()
    pairs = zip(start.parameters(), explicit.parameters(), strict=True)
    moved = max((a - b).abs().max() for a, b in pairs)
    assert moved > 1e-4


@pytest.mark.parametrize("agg", [MGDA, UPGrad, PCGrad], ids=lambda c: c.__name__)
@pytest.mark.parametrize("gramian", ["one_pass", "autogram"])
def test_weights_equal_the_explicit_ones_without_per_task_backward_passes(gramian, agg):
    """Both Gramian engines give the explicit path's weights; after the step that builds their
    hooks they take no per-task backward pass (no ``[T, P]`` rows)."""
    explicit, subs = _model(GradientWeighting(agg()), tasks=3)
    engine, _ = _model(GradientWeighting(agg(), gramian=gramian), tasks=3)
    for step in range(3):
        torch.manual_seed(step)  # the same dropout masks in both
        a = explicit.weighting(*_losses_and_ctx(explicit, subs))
        torch.manual_seed(step)
        losses, ctx = _losses_and_ctx(engine, subs)
        b = engine.weighting(losses, ctx)
        assert ctx.gradients.backward_passes == (3 if step == 0 else 0)
        for t in a.weights:
            torch.testing.assert_close(b.weights[t], a.weights[t], rtol=1e-4, atol=1e-6)


def _losses_and_ctx(model, subs):
    losses = model.task_losses(model(subs), subs)
    ctx = StepContext(
        step=0,
        task_names=model.task_names,
        shared_parameters=lambda: [p for p in model.encoder.parameters() if p.requires_grad],
        shared_module=model.encoder,
        encoder_rows=model.model.encoder_rows(subs),
    )
    return losses, ctx


class _Scaled(nn.Module):
    """A trainable parameter outside the supported module types."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.linear(x) * self.gain


def test_unsupported_parameters_and_encoders_are_named():
    engine = OnePassGramian()
    with pytest.raises(ConfigError, match="a _Scaled: use gramian='explicit'"):
        engine.gramian({}, _Scaled(), {})
    for attribute, value in (("per_task", True), ("stack_tasks", False)):
        shared = nn.Linear(4, 4)
        setattr(shared, attribute, value)  # an encoder that runs once per task's sub-batch
        with pytest.raises(ConfigError, match="runs once per task"):
            engine.gramian({}, shared, {})
        with pytest.raises(ConfigError, match="runs once per task"):
            AutogramGramian().gramian(torch.zeros(2), shared)
    with pytest.raises(ConfigError, match="one_pass.*Gramian-based"):
        from mtlkit.weighting.gradient import MGDAUB

        GradientWeighting(MGDAUB(), gramian="one_pass")


def test_rows_that_do_not_cover_the_batch_are_refused():
    model, subs = _model(tasks=2)
    engine, rows = OnePassGramian(), model.model.encoder_rows(subs)
    engine.gramian({}, model.encoder, rows)
    losses = model.task_losses(model(subs), subs)
    with pytest.raises(ConfigError, match="rows end at 5, but the encoder ran over 8"):
        engine.gramian(losses, model.encoder, {"t0": (0, 5)})


def test_the_step_loss_hands_out_the_explicit_gradients_scaled_as_any_loss():
    """The one-pass step returns a loss whose backward pass gives every parameter (encoder and
    heads) what the explicit path's backward pass gives, times the incoming gradient (0.5 here,
    as gradient accumulation over 2 batches or a loss scale would), accumulating into .grad."""
    explicit, subs = _model(GradientWeighting(UPGrad()))
    one_pass, _ = _model(GradientWeighting(UPGrad(), gramian="one_pass"))
    grads = {}
    for name, model in (("explicit", explicit), ("one_pass", one_pass)):
        model.log = lambda *a, **k: None
        torch.manual_seed(0)
        model.training_step({"tasks": subs}, 0).backward()  # builds the one-pass hooks
        model.zero_grad()
        for _ in range(2):  # accumulation: two backward passes into the same .grad
            torch.manual_seed(1)
            (model.training_step({"tasks": subs}, 1) * 0.5).backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads["one_pass"].keys() == grads["explicit"].keys()
    for name, value in grads["explicit"].items():
        assert grads["one_pass"][name] is not None, name
        torch.testing.assert_close(grads["one_pass"][name], value, rtol=1e-4, atol=1e-7, msg=name)


class _Checkpointed(nn.Module):
    """A linear layer under reentrant activation checkpointing (its forward runs without grad)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.linear, x, use_reentrant=True)


def test_a_module_run_without_gradients_is_refused_not_missed():
    shared, engine = _Checkpointed(), OnePassGramian()
    rows = {"a": (0, 3), "b": (3, 6)}
    engine.gramian({}, shared, rows)  # builds the hooks
    out = shared(torch.randn(6, 4, requires_grad=True))
    losses = {"a": out[:3].square().sum(), "b": out[3:].sum()}
    with pytest.raises(ConfigError, match="Linear of the encoder ran without gradients"):
        engine.gramian(losses, shared, rows)


def test_a_step_that_names_no_other_parameters_keeps_its_own_backward_pass():
    """Without ``other_parameters`` (a caller that does not say which parameters the heads
    are) the one-pass Gramian still gives the weights, and the step's loss back-propagates as
    usual: the heads get their gradients, equal to the explicit path's."""
    grads = {}
    for mode in ("explicit", "one_pass"):
        model, subs = _model(GradientWeighting(UPGrad(), gramian=mode), tasks=3)
        for step in range(2):
            model.zero_grad()
            torch.manual_seed(step)
            losses, ctx = _losses_and_ctx(model, subs)
            model.weighting(losses, ctx).loss.backward()
        grads[mode] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, value in grads["explicit"].items():
        assert grads["one_pass"][name] is not None, name
        torch.testing.assert_close(grads["one_pass"][name], value, rtol=1e-4, atol=1e-7, msg=name)
