"""Every weighting method gives the same update in bf16-mixed / 16-mixed as in fp32.

The methods are those of ``configs/weighting/*.yaml`` (``mtlkit.testing.methods``), each built
from its config with the toy-task overrides of ``OVERRIDES``. The quantity compared is the
relative L2 error of the encoder's total parameter change after ``STEPS`` SGD steps (tiny BERT,
two toy tasks, mixed batches, no dropout) against the fp32 run.

Measured (2-core x86 CPU, one thread), relative error of bf16-mixed / 16-mixed against fp32, and
the fp32 update's relative L2 difference from equal weighting's:

=============  =======  =======  ==============
method         bf16     fp16     vs equal (fp32)
=============  =======  =======  ==============
aligned_mtl    3.8e-3   4.2e-4   0.83
cagrad         4.2e-3   4.9e-4   0.83
dwa            4.3e-3   4.8e-4   0.14
equal          4.3e-3   5.1e-4   -
famo           3.3e-3   5.1e-4   1.8
gradnorm       4.3e-3   4.2e-4   0.19
imtl_g         4.0e-3   5.4e-4   1.3
mgda           4.3e-3   5.5e-4   1.6
mgda_ub        5.3e-3   6.7e-4   1.6
nash_mtl       3.5e-3   3.8e-4   8.2
pcgrad         3.8e-3   4.9e-4   0.082
rlw            4.3e-3   5.3e-4   2.1
static         4.0e-3   4.8e-4   0.83
uncertainty    3.5e-3   3.9e-4   1.0
upgrad         4.1e-3   4.7e-4   0.89
=============  =======  =======  ==============

The errors are of one size for all methods (the rounding of the encoder's forward and backward
passes dominates, equal weighting's own error is as large as any), so each precision has one
tolerance: ``MARGIN`` = 3 times the largest error measured, 1.6e-2 for bf16 and 2.0e-3 for fp16.
A tolerance is only meaningful if a method that silently fell back to equal weighting would
exceed it: ``test_update_differs_from_equal_weighting`` asserts that each method's fp32 update
differs from equal weighting's by more than the larger tolerance (the closest, PCGrad, by 5x).
"""

from __future__ import annotations

import copy
import functools

import lightning as L
import pytest
import torch
from helpers import tiny_model, toy_datamodule, toy_task
from lightning.pytorch.plugins.precision import MixedPrecision

from mtlkit.testing.methods import weighting_methods
from mtlkit.testing.trainer import quiet_trainer

METHODS = weighting_methods()
#: Toy tasks named as the quickstart's, which the shipped static and uncertainty configs name.
TASKS = ("trec", "sentiment")
#: ``init_args`` overrides, by method name: DWA's window of 1 step lets it leave its two warm-up
#: windows, so its weights differ from 1 in step 2 (the third); GradNorm's weights move by about
#: ``lr`` per step (Adam), 10x the shipped 0.025 makes their effect visible in 3 steps.
OVERRIDES = {
    "dwa": {"window_steps": 1},
    "rlw": {"seed": 0},
    "gradnorm": {"lr": 0.25},
}
STEPS = 3
PRECISIONS = ("bf16-mixed", "16-mixed")
MARGIN = 3
#: Largest relative error measured over all methods (see the module docstring).
MEASURED = {"bf16-mixed": 5.3e-3, "16-mixed": 6.7e-4}
TOLERANCE = {p: MARGIN * e for p, e in MEASURED.items()}


def _build(name: str, **settings):
    return METHODS[name].build(**OVERRIDES.get(name, {}), **settings)


def _update(name: str, precision: str, init_scale: float = 2.0**8, steps: int = STEPS, **settings):
    L.seed_everything(0)
    tasks = [toy_task(TASKS[0]), toy_task(TASKS[1], seed=1)]
    dm = toy_datamodule(tasks, batch_mode="mixed", batch_size=8)
    model = tiny_model(
        dm.tasks,
        weighting=_build(name, **settings),
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
    trainer = quiet_trainer(
        max_steps=steps,
        limit_val_batches=0,
        accelerator="cpu",
        precision=None if plugins else precision,
        plugins=plugins,
    )
    trainer.fit(model, dm)
    after = model.encoder.state_dict()
    delta = torch.cat([(after[k].float() - before[k].float()).ravel() for k in before])
    return delta, model


@functools.cache
def _delta(name: str, precision: str) -> torch.Tensor:
    """The update of one method in one precision (shared by the tests of this module)."""
    return _update(name, precision)[0]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_overrides_name_catalog_methods():
    assert set(OVERRIDES) <= set(METHODS)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", list(METHODS))
def test_mixed_precision_update_matches_fp32(name, precision):
    reference = _delta(name, "32-true")
    assert reference.norm() > 0
    error = _relative(_delta(name, precision), reference)
    print(f"[precision] {name} {precision}: relative error {error:.3g}")
    assert error < TOLERANCE[precision], f"{name} {precision}: relative error {error:.3g}"


@pytest.mark.parametrize("name", [n for n in METHODS if n != "equal"])
def test_update_differs_from_equal_weighting(name):
    """A method that fell back to equal weights would pass the test above; not this one."""
    difference = _relative(_delta("equal", "32-true"), _delta(name, "32-true"))
    print(f"[precision] {name}: differs from equal weighting by {difference:.3g}")
    assert difference > max(TOLERANCE.values()), f"{name}: {difference:.3g}"


@pytest.mark.parametrize("precision", ("32-true", *PRECISIONS))
def test_one_pass_gramian_matches_the_explicit_update(precision):
    """``gramian: one_pass`` through Lightning's loop (closure, fp16 gradient scaler, the step's
    precomputed loss): UPGrad on the parameters moves the encoder as the explicit Gramian does
    in fp32, within the precision's tolerance (fp32: measured 2e-7, tolerance 1e-5)."""
    reference = _update("upgrad", "32-true", works_on="parameters")[0]
    delta = _update("upgrad", precision, works_on="parameters", gramian="one_pass")[0]
    error = _relative(delta, reference)
    print(f"[precision] upgrad one_pass {precision}: relative error {error:.3g}")
    assert error < TOLERANCE.get(precision, 1e-5), error


def _leaves(state, prefix=""):
    """``{dotted key: value}`` of a state dict, nested extra states (dicts) flattened."""
    if isinstance(state, dict):
        out = {}
        for key, value in state.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): state}


@pytest.mark.parametrize("name", list(METHODS))
def test_overflow_step_skips_the_method_state_update(name):
    """A step the fp16 scaler skips leaves the method's state (buffers, parameters, solver warm
    starts, random generators) as it was before the step; stateless methods pass trivially."""
    fresh = _build(name)
    fresh.setup(list(TASKS))
    delta, model = _update(name, "16-mixed", init_scale=1e38, steps=1)
    assert delta.abs().max() == 0  # the scaler skipped the optimizer step ...
    state, initial = _leaves(model.weighting.state_dict()), _leaves(fresh.state_dict())
    assert state.keys() == initial.keys(), name
    for key, value in initial.items():  # ... and the method's own state is as before the step
        if torch.is_tensor(value):
            torch.testing.assert_close(state[key].cpu(), value, msg=f"{name}: {key} changed")
        else:
            assert state[key] == value, f"{name}: {key} changed"
