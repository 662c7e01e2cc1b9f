"""Every weighting method gives the same update in bf16-mixed / 16-mixed as in fp32.

Tolerances (relative L2 error of the encoder's parameter update after one SGD step, tiny BERT):
bf16-mixed 8e-2 (bf16 keeps 8 mantissa bits), 16-mixed with a gradient scaler 2e-2.
"""

import copy

import lightning as L
import pytest
import torch
from helpers import tiny_model, toy_datamodule, toy_task
from lightning.pytorch.plugins.precision import MixedPrecision

from mtlkit.weighting import (
    FAMO,
    DynamicWeightAverage,
    EqualWeighting,
    GradientWeighting,
    GradNorm,
    RandomLossWeighting,
    UncertaintyWeighting,
)
from mtlkit.weighting.gradient import IMTLG, MGDAUB, CAGrad, PCGrad

METHODS = {
    "equal": EqualWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": lambda: DynamicWeightAverage(window_steps=1),
    "rlw": lambda: RandomLossWeighting(seed=0),
    "famo": FAMO,
    "gradnorm": GradNorm,
    "pcgrad": lambda: GradientWeighting(PCGrad()),
    "cagrad": lambda: GradientWeighting(CAGrad()),
    "imtl_g": lambda: GradientWeighting(IMTLG()),
    "mgda_ub": lambda: GradientWeighting(MGDAUB()),
}
TOLERANCE = {"bf16-mixed": 8e-2, "16-mixed": 2e-2}


def _update(make_method, precision, init_scale=2.0**8, steps=2):
    L.seed_everything(0)
    dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)], batch_mode="mixed", batch_size=8)
    model = tiny_model(
        dm.tasks,
        weighting=make_method(),
        lr_scheduler=None,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        dropout=0.0,
    )
    model.encoder.model.config.hidden_dropout_prob = 0.0
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    before = copy.deepcopy(model.encoder.state_dict())
    plugins = []
    if precision == "16-mixed":
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        accelerator="cpu",
        precision=None if plugins else precision,
        plugins=plugins,
    )
    trainer.fit(model, dm)
    after = model.encoder.state_dict()
    delta = torch.cat([(after[k].float() - before[k].float()).ravel() for k in before])
    return delta, model


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", list(METHODS))
def test_mixed_precision_update_matches_fp32(name, precision):
    reference, _ = _update(METHODS[name], "32-true")
    delta, _ = _update(METHODS[name], precision)
    assert reference.norm() > 0
    error = (delta - reference).norm() / reference.norm()
    assert error < TOLERANCE[precision], f"{name} {precision}: relative error {error:.3g}"


@pytest.mark.parametrize("name", ["famo", "gradnorm", "dwa", "pcgrad"])
def test_overflow_step_skips_the_method_state_update(name):
    fresh = METHODS[name]()
    fresh.setup(["a", "b"])
    delta, model = _update(METHODS[name], "16-mixed", init_scale=1e38, steps=1)
    assert delta.abs().max() == 0  # the scaler skipped the optimizer step ...
    state, initial = model.weighting.state_dict(), fresh.state_dict()
    for key, value in initial.items():  # ... and the method's own state is as before the step
        if torch.is_tensor(value):
            torch.testing.assert_close(state[key].cpu(), value, msg=f"{name}: {key} changed")
