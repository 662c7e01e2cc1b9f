"""The default optimizer runs torch's fused AdamW kernel and stays checkpoint-compatible.

The same AdamW update as torch's single-tensor loop; a state dict saved in one kernel mode
resumes in another with the same next step; every parameter group mtlkit builds (layer-wise decay,
head rate, groups added by GradualUnfreeze) runs fused; fp16 gradients are unscaled before the
step, so gradient clipping works under 16-mixed.
"""

from __future__ import annotations

import io

import lightning as L
import pytest
import torch
from helpers import tiny_model, toy_datamodule, toy_task
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision

from mtlkit.checkpointing import RNGState
from mtlkit.finetuning import GradualUnfreeze
from mtlkit.optim import AdamW, adamw, fastest_kernel
from mtlkit.testing.trainer import quiet_trainer

# Float32 AdamW: the fused kernel and the per-tensor loop round differently (measured on CPU,
# torch 2.13: 3e-8 on parameters of size ~1 after 20 steps at lr 1e-2; 0.0 for the 3 steps after
# each cross-kernel resume below).
ATOL = 1e-6

KERNELS = {
    "torch_default": lambda p: torch.optim.AdamW(p, lr=1e-2),  # single-tensor on CPU
    "foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=True),
    "fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
    "mtlkit": lambda p: AdamW(p, lr=1e-2),
}


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(7, 5), (5,), (3, 4, 2)]]


def _steps(opt: torch.optim.Optimizer, params: list, start: int, n: int) -> None:
    for step in range(start, start + n):
        g = torch.Generator().manual_seed(1000 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def _max_diff(a: list, b: list) -> float:
    return max(float((x - y).detach().abs().max()) for x, y in zip(a, b, strict=True))


def test_fastest_kernel_is_fused_for_cpu_floats():
    """Guards the private torch function fastest_kernel uses: an upgrade that changes it fails
    here first."""
    assert fastest_kernel(_params()) == {"fused": True, "foreach": None}
    assert fastest_kernel([{"params": _params()}])["fused"] is True
    assert fastest_kernel([torch.zeros(2, dtype=torch.long)])["fused"] is None
    opt = adamw(_params())
    assert all(g["fused"] for g in opt.param_groups)
    assert opt.defaults["lr"] == 5e-5 and opt.defaults["weight_decay"] == 0.01


def test_same_update_as_torch_single_tensor_loop():
    reference, fused = _params(), _params()
    _steps(KERNELS["torch_default"](reference), reference, 0, 20)
    _steps(KERNELS["mtlkit"](fused), fused, 0, 20)
    assert _max_diff(reference, fused) < ATOL


@pytest.mark.parametrize(
    "saver,loader",
    [("torch_default", "mtlkit"), ("mtlkit", "torch_default"), ("foreach", "mtlkit")],
)
def test_state_dict_resumes_across_kernels(saver, loader):
    """Save after 5 steps with one kernel, load into another, take 3 more steps: the same
    parameters as the saver continuing (within float32 rounding of the kernels)."""
    params = _params()
    opt = KERNELS[saver](params)
    _steps(opt, params, 0, 5)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt_resumed = KERNELS[loader](resumed)
    buffer.seek(0)
    opt_resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _steps(opt, params, 5, 3)
    _steps(opt_resumed, resumed, 5, 3)
    assert _max_diff(params, resumed) < ATOL
    if loader == "mtlkit":  # the optimizer's own kernel survives the saved flags
        assert all(g["fused"] is True and g["foreach"] is None for g in opt_resumed.param_groups)


def test_lightning_checkpoint_of_torch_adamw_resumes_fused(tmp_path):
    """A checkpoint written by a run with torch's default AdamW resumes with mtlkit's default
    optimizer on the fused kernel, landing where the unbroken run lands."""

    def fit(optimizer, ckpt_path=None, callbacks=()):
        torch.manual_seed(0)
        dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)])
        model = tiny_model(dm.tasks, optimizer=optimizer, dropout=0.0, lr_scheduler=None)
        trainer = quiet_trainer(
            default_root_dir=tmp_path,
            max_steps=4,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=bool(callbacks),
            callbacks=[RNGState(), *callbacks],
        )
        trainer.fit(model, dm, ckpt_path=ckpt_path)
        return model, trainer

    def torch_adamw(p):
        return torch.optim.AdamW(p, lr=5e-5, weight_decay=0.01)

    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    unbroken, _ = fit(torch_adamw, callbacks=[saver])
    ckpt = next(tmp_path.glob("*step=2.ckpt"))
    assert (
        torch.load(ckpt, weights_only=True)["optimizer_states"][0]["param_groups"][0]["fused"]
        is None
    )
    resumed, trainer = fit(adamw, ckpt_path=str(ckpt))
    assert all(g["fused"] is True for g in trainer.optimizers[0].param_groups)
    a, b = unbroken.state_dict(), resumed.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < ATOL


def test_every_parameter_group_mtlkit_builds_runs_fused():
    """Layer-wise decay, a head rate and the groups GradualUnfreeze adds mid-run."""
    L.seed_everything(0)
    dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)], steps_per_epoch=6)
    model = tiny_model(dm.tasks, layer_lr_decay=0.5, head_lr=1e-3)
    unfreeze = GradualUnfreeze(every=2, unit="steps", lr_ratio=0.5)
    trainer = quiet_trainer(max_steps=6, max_epochs=1, limit_val_batches=0, callbacks=[unfreeze])
    trainer.fit(model, dm)
    groups = trainer.optimizers[0].param_groups
    names = {g.get("name") for g in groups}
    assert {"heads", "encoder.layer_1", "encoder.layer_0"} <= names
    assert all(g["fused"] is True for g in groups)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_with_gradient_clipping(precision):
    """The scaler unscales before the step (Lightning refuses to clip for an optimizer that
    unscales inside its step), and the step is the fused kernel's."""
    L.seed_everything(0)
    dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)], steps_per_epoch=3)
    model = tiny_model(dm.tasks)
    before = [p.detach().clone() for p in model.parameters()]
    plugins = []
    if precision == "16-mixed":
        plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
    trainer = quiet_trainer(
        max_steps=3,
        max_epochs=1,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        precision=None if plugins else precision,
        plugins=plugins,
    )
    trainer.fit(model, dm)
    assert all(g["fused"] is True for g in trainer.optimizers[0].param_groups)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
