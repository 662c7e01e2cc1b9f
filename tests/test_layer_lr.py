"""Layer-wise learning-rate decay: exact rate per group, with and without a schedule."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import quiet_trainer, tiny_model, toy_datamodule, toy_task

from mtlkit.cli import cli_main
from mtlkit.errors import ConfigError
from mtlkit.finetuning import FreezeLayers
from mtlkit.optim import LinearWarmupDecay
from mtlkit.weighting import UncertaintyWeighting

ROOT = Path(__file__).resolve().parents[1]
LR, DECAY, N = 1e-2, 0.5, 2  # N: layers of the tiny encoder


def adamw(params):
    return torch.optim.AdamW(params, lr=LR)


def _expected(decay: float = DECAY, head_lr: float = LR) -> dict[str, float]:
    """The documented rates: embeddings lr*d^(N+1), layer i lr*d^(N-i), heads their own."""
    rates = {"encoder.embeddings": LR * decay ** (N + 1), "heads": head_lr}
    rates.update({f"encoder.layer_{i}": LR * decay ** (N - i) for i in range(N)})
    return rates


def _owner(name: str) -> str:
    if name.startswith("heads."):
        return "heads"
    if name.startswith("weighting."):
        return "weighting"
    if ".embeddings." in name:
        return "encoder.embeddings"
    return "encoder.layer_" + name.split(".layer.")[1].split(".")[0]


def _check_partition(model, optimizer) -> None:
    """Every trainable parameter is in exactly one group, the group of its depth."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(seen) == trainable
    for group in optimizer.param_groups:
        assert {_owner(names[id(p)]) for p in group["params"]} == {group["name"]}


def test_rates_without_a_schedule():
    model = tiny_model([toy_task("a")], optimizer=adamw, lr_scheduler=None, layer_lr_decay=DECAY)
    optimizer = model.configure_optimizers()
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates == pytest.approx(_expected())
    assert "encoder.top" not in rates  # nothing above the last BERT layer (pooler removed)
    _check_partition(model, optimizer)


def test_head_lr_and_weighting_groups_are_not_decayed():
    model = tiny_model(
        [toy_task("a"), toy_task("b", seed=1)],
        optimizer=adamw,
        lr_scheduler=None,
        layer_lr_decay=DECAY,
        head_lr=3e-3,
        weighting=UncertaintyWeighting(),
    )
    optimizer = model.configure_optimizers()
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates == pytest.approx({**_expected(head_lr=3e-3), "weighting": LR})
    _check_partition(model, optimizer)


def test_without_decay_the_encoder_is_one_group():
    model = tiny_model([toy_task("a")], optimizer=adamw, lr_scheduler=None)
    optimizer = model.configure_optimizers()
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [
        ("encoder", LR),
        ("heads", LR),
    ]


def test_bad_decay_is_rejected():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="layer_lr_decay"):
            tiny_model([toy_task("a")], layer_lr_decay=bad)


class Rates(L.Callback):
    def __init__(self) -> None:
        self.by_step: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.by_step.append({g["name"]: g["lr"] for g in optimizer.param_groups})


def _fit(callbacks, steps=5):
    torch.manual_seed(0)
    dm = toy_datamodule([toy_task("a")])
    model = tiny_model(
        dm.tasks,
        optimizer=adamw,
        layer_lr_decay=DECAY,
        lr_scheduler=lambda opt, total: LinearWarmupDecay(opt, total, warmup=2),
    )
    rates = Rates()
    trainer = quiet_trainer(
        tempfile.mkdtemp(),
        callbacks=[*callbacks, rates],
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    return model, trainer, rates.by_step


def test_rates_follow_the_schedule():
    _, trainer, by_step = _fit([])
    schedule = LinearWarmupDecay(torch.optim.SGD([torch.zeros(1)], lr=1.0), 5, warmup=2)
    factors = [schedule._factor(s) for s in range(5)]
    assert factors[0] < factors[2] > factors[4]  # warm-up, then decay: the test sees both
    for step, rates in enumerate(by_step):
        want = {k: v * factors[step] for k, v in _expected().items()}
        assert rates == pytest.approx(want), step
    _check_partition(trainer.lightning_module, trainer.optimizers[0])


def test_decay_with_frozen_bottom_layers():
    model, trainer, by_step = _fit([FreezeLayers(1)], steps=2)
    frozen = {"encoder.embeddings", "encoder.layer_0"}
    expected = {k: v for k, v in _expected().items() if k not in frozen}
    assert set(by_step[0]) == set(expected)  # the frozen groups are left out, not empty
    schedule = LinearWarmupDecay(torch.optim.SGD([torch.zeros(1)], lr=1.0), 2, warmup=2)
    for step, rates in enumerate(by_step):
        assert rates == pytest.approx({k: v * schedule._factor(step) for k, v in expected.items()})
    _check_partition(model, trainer.optimizers[0])


def test_layer_lr_decay_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(ROOT / "configs/tiny/tiny.yaml")]
    args += ["--config", str(ROOT / "configs/transfer/regimes/layer_lr_decay.yaml")]
    cli = cli_main([*args, "--trainer.max_steps=2", "--trainer.limit_val_batches=0"])
    assert cli.trainer.global_step == 2
    optimizer = cli.trainer.optimizers[0]
    base = optimizer.defaults["lr"]
    initial = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert initial == pytest.approx(
        {
            "encoder.embeddings": base * 0.8**3,
            "encoder.layer_0": base * 0.8**2,
            "encoder.layer_1": base * 0.8,
            "heads": base,
        }
    )
    _check_partition(cli.model, optimizer)
