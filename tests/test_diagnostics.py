"""Gradient-conflict diagnostics."""

import lightning as L
import numpy as np
import pytest
import torch
from helpers import tiny_model, toy_datamodule, toy_task
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtlkit.diagnostics import GradientDiagnostics, cosine_matrix, matrix_image, task_gradients
from mtlkit.testing.trainer import quiet_trainer
from mtlkit.weighting import EqualWeighting, GradientWeighting, GradNorm, TaskGradients
from mtlkit.weighting.gradient import MGDA, MGDAUB


def test_cosine_matrix_on_hand_made_gradients():
    grads = {
        "a": torch.tensor([1.0, 0.0]),
        "b": torch.tensor([0.0, 2.0]),
        "c": torch.tensor([-3.0, 0.0]),
    }
    cos = cosine_matrix(grads)
    expected = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    torch.testing.assert_close(cos, expected)
    image = matrix_image(cos.numpy(), cell=2)
    assert image.shape == (6, 6, 3)
    np.testing.assert_allclose(image[0, 4], [0.0, 0.0, 1.0])  # -1 is blue
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.0])  # +1 is red


def test_task_gradients_match_manual():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    losses = {"a": (w**2).sum(), "b": 3 * w[0]}
    grads = task_gradients(losses, [w])
    torch.testing.assert_close(grads["a"], torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(grads["b"], torch.tensor([3.0, 0.0]))


def test_callback_logs_norms_cosines_and_image(tmp_path):
    L.seed_everything(0)
    dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)], batch_mode="mixed", batch_size=8)
    model = tiny_model(dm.tasks)
    diag = GradientDiagnostics(every_n_steps=2)
    logger = TensorBoardLogger(tmp_path, name="diag")
    trainer = quiet_trainer(
        max_steps=5, logger=logger, callbacks=[diag], log_every_n_steps=1, limit_val_batches=0
    )
    trainer.fit(model, dm)
    assert diag.last["tasks"] == ["a", "b"] and diag.last["step"] == 4
    assert -1.0 <= float(diag.last["cosine"][0, 1]) <= 1.0
    logger.experiment.flush()
    ea = EventAccumulator(logger.log_dir)
    ea.Reload()
    assert "diag/gradient_cosine" in ea.Tags()["images"]
    scalars = ea.Tags()["scalars"]
    assert "diag/a/grad_norm" in scalars and "diag/cos/a~b" in scalars
    assert len(ea.Scalars("diag/a/grad_norm")) == 3  # steps 0, 2, 4


class _CountingDiagnostics(GradientDiagnostics):
    """Records the backward passes each logging step adds to the step's gradient cache."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.added: list[int] = []

    def on_weighted_step(self, trainer, losses, ctx, result):
        before = ctx.gradients.backward_passes
        super().on_weighted_step(trainer, losses, ctx, result)
        if trainer.global_step % self.every_n_steps == 0:
            self.added.append(ctx.gradients.backward_passes - before)


@pytest.mark.parametrize(
    ("weighting", "added"),
    [
        (lambda: GradientWeighting(MGDA()), 0),  # the last layer: a slice of the method's rows
        (lambda: GradNorm(), 0),  # the same layer as GradNorm's
        (lambda: GradientWeighting(MGDAUB()), 2),  # representation rows: one pass per task
        (lambda: EqualWeighting(), 2),
    ],
    ids=["MGDA", "GradNorm", "MGDAUB", "equal"],
)
def test_callback_reuses_the_gradients_the_method_took(tmp_path, weighting, added):
    L.seed_everything(0)
    dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)], batch_mode="mixed", batch_size=8)
    model = tiny_model(dm.tasks, weighting=weighting())
    diag = _CountingDiagnostics(every_n_steps=2)
    trainer = quiet_trainer(max_steps=3, callbacks=[diag], limit_val_batches=0)
    trainer.fit(model, dm)
    assert diag.added == [added, added] and diag.last["step"] == 2
    assert -1.0 <= float(diag.last["cosine"][0, 1]) <= 1.0


def test_cache_rows_of_a_layer_are_a_slice_of_the_full_rows():
    w, v = torch.nn.Parameter(torch.tensor([1.0, 2.0])), torch.nn.Parameter(torch.tensor([3.0]))
    losses = {"a": (w**2).sum() * v, "b": 3 * w[0]}
    cache = TaskGradients()
    full = cache.of_parameters(losses, [w, v], scale=8.0)
    torch.testing.assert_close(full, torch.tensor([[6.0, 12.0, 5.0], [3.0, 0.0, 0.0]]))
    assert cache.backward_passes == 2 and cache.is_unused("b", v) and not cache.is_unused("a", v)
    torch.testing.assert_close(cache.of_parameters(losses, [v], tasks=["b", "a"]), full[[1, 0], 2:])
    assert cache.backward_passes == 2
