"""Fine-tuning regimes: frozen encoder, frozen bottom layers, gradual unfreezing, early stopping."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from helpers import quiet_trainer, tiny_model, toy_datamodule, toy_task
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from mtlkit.checkpointing import RNGState
from mtlkit.cli import cli_main
from mtlkit.errors import ConfigError
from mtlkit.finetuning import FreezeEncoder, FreezeLayers, GradualUnfreeze, MetricEarlyStopping
from mtlkit.regularization import L2SP

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "configs/tiny/tiny.yaml")
REGIMES = ROOT / "configs/transfer/regimes"
FAST = [
    "--trainer.max_steps=3",
    "--trainer.max_epochs=1",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--data.init_args.steps_per_epoch=3",
    "--data.init_args.max_eval_examples=16",
]
LR = 1e-2


def adamw(params):
    return torch.optim.AdamW(params, lr=LR)


class Probe(L.Callback):
    """Records, at every optimizer step, what is trained and at which rate."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.steps.append(
            {
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "dropout_on": any(m.training for m in pl_module.encoder.modules()),
                "grad": {n for n, p in pl_module.named_parameters() if p.grad is not None},
                "in_optimizer": {
                    n for n, p in pl_module.named_parameters() if id(p) in in_optimizer
                },
                "lrs": {
                    g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)
                },
            }
        )


def _fit(callbacks, model_kw=None, data_kw=None, ckpt_path=None, model=None, **trainer_kw):
    torch.manual_seed(0)
    dm = toy_datamodule([toy_task("a")], **(data_kw or {}))
    model = model or tiny_model(dm.tasks, optimizer=adamw, **(model_kw or {}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = Probe()
    args = dict(max_steps=3, limit_val_batches=0, num_sanity_val_steps=0)
    args.update(trainer_kw)
    trainer = quiet_trainer(tempfile.mkdtemp(), callbacks=[*callbacks, probe], **args)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, before, probe, trainer


def _changed(model, before) -> set[str]:
    """Names of the state entries that differ from ``before``."""
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def _unit(name: str) -> str:
    """``encoder.layer_<i>`` / ``encoder.embeddings`` / ``heads`` for a parameter name."""
    if name.startswith("heads."):
        return "heads"
    if ".embeddings." in name:
        return "encoder.embeddings"
    return "encoder.layer_" + name.split(".layer.")[1].split(".")[0]


def _units(names: set[str]) -> set[str]:
    return {_unit(n) for n in names}


def test_freeze_encoder_trains_only_the_heads():
    model, before, probe, _ = _fit([FreezeEncoder()])
    assert len(probe.steps) == 3
    for step in probe.steps:
        assert _units(step["grad"]) == _units(step["in_optimizer"]) == {"heads"}
        assert not step["dropout_on"]
    changed = _changed(model, before)
    assert changed and all(k.startswith("heads.") for k in changed)


def test_freeze_encoder_can_keep_dropout_on():
    model = tiny_model([toy_task("a")]).train()
    for train_dropout in (True, False):
        FreezeEncoder(train_dropout).on_train_batch_start(None, model, None, 0)
        assert model.encoder.training is train_dropout


@pytest.mark.parametrize("n, embeddings", [(2, False)])  # (1, True): the override test
def test_freeze_layers_keeps_the_bottom_frozen(n, embeddings):
    model, before, probe, _ = _fit([FreezeLayers(n, embeddings=embeddings)])
    frozen = {f"encoder.layer_{i}" for i in range(n)} | (
        {"encoder.embeddings"} if embeddings else set()
    )
    trained = {"heads", "encoder.layer_0", "encoder.layer_1", "encoder.embeddings"} - frozen
    for step in probe.steps:
        assert _units(step["grad"]) == _units(step["in_optimizer"]) == trained
    assert _units(_changed(model, before)) == trained
    assert all(step["dropout_on"] for step in probe.steps)  # only FreezeEncoder switches it off


def test_freeze_layers_rejects_more_layers_than_the_encoder_has():
    with pytest.raises(ConfigError, match=r"n=3.*only 2 layers"):
        _fit([FreezeLayers(3)])
    with pytest.raises(ConfigError, match="n must be >= 0"):
        FreezeLayers(-1)


def _factor(trainer, step: int) -> float:
    return trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0](step)


def test_gradual_unfreeze_per_step_follows_the_schedule():
    cb = GradualUnfreeze(every=2, unit="steps", lr_ratio=0.5)
    model, before, probe, trainer = _fit([cb], max_steps=7)
    expected = [
        set(),
        set(),
        {"encoder.layer_1"},
        {"encoder.layer_1"},
        {"encoder.layer_1", "encoder.layer_0"},
        {"encoder.layer_1", "encoder.layer_0"},
        {"encoder.layer_1", "encoder.layer_0", "encoder.embeddings"},
    ]
    assert [s["step"] for s in probe.steps] == list(range(7))
    for step, units in zip(probe.steps, expected, strict=True):
        assert _units(step["grad"]) == _units(step["in_optimizer"]) == {"heads", *units}
        factor = _factor(trainer, step["step"])
        assert step["lrs"]["heads"] == pytest.approx(LR * factor)
        for unit in units:  # a group added mid-run is scheduled like the others
            assert step["lrs"][unit] == pytest.approx(0.5 * LR * factor), (step["step"], unit)
    names = [g["name"] for g in trainer.optimizers[0].param_groups]
    assert names == ["heads", "encoder.layer_1", "encoder.layer_0", "encoder.embeddings"]
    # The decaying schedule really moved the rates (a stale group would keep its first one).
    assert probe.steps[2]["lrs"]["encoder.layer_1"] > probe.steps[6]["lrs"]["encoder.layer_1"]


def test_gradual_unfreeze_per_epoch_with_layer_lr_decay():
    cb = GradualUnfreeze(every=1, unit="epochs", lr_ratio=1.0, start_frozen=False)
    _, _, probe, trainer = _fit(
        [cb], model_kw={"layer_lr_decay": 0.5}, data_kw={"steps_per_epoch": 2}, max_steps=6
    )
    units = ["encoder.layer_1", "encoder.layer_0", "encoder.embeddings"]
    assert [s["epoch"] for s in probe.steps] == [0, 0, 1, 1, 2, 2]
    for step in probe.steps:
        present = units[: step["epoch"] + 1]
        assert _units(step["grad"]) == {"heads", *present}
        factor = _factor(trainer, step["step"])
        for exponent, unit in enumerate(present, start=1):  # layer i: 0.5^(N - i), N = 2
            assert step["lrs"][unit] == pytest.approx(LR * 0.5**exponent * factor)


def test_gradual_unfreeze_resumes_like_an_unbroken_run(tmp_path):
    def run(max_steps, ckpt_path=None, checkpoint=None):
        cbs = [GradualUnfreeze(every=2, unit="steps", lr_ratio=0.5), RNGState()]
        cbs += [checkpoint] if checkpoint else []
        return _fit(
            cbs,
            model_kw={"dropout": 0.0},
            ckpt_path=ckpt_path,
            max_steps=max_steps,
            enable_checkpointing=checkpoint is not None,
        )

    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    full, _, full_probe, _ = run(6, checkpoint=saver)
    ckpt = next(tmp_path.glob("*step=3.ckpt"))
    assert len(torch.load(ckpt, weights_only=True)["optimizer_states"][0]["param_groups"]) == 2
    resumed, _, probe, trainer = run(6, ckpt_path=str(ckpt))
    assert [s["step"] for s in probe.steps] == [3, 4, 5]
    for got, want in zip(probe.steps, full_probe.steps[3:], strict=True):
        assert got["lrs"] == pytest.approx(want["lrs"])
        assert got["grad"] == want["grad"]
    assert [g["name"] for g in trainer.optimizers[0].param_groups][-1] == "encoder.layer_0"
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6)


def test_gradual_unfreeze_validates_its_arguments():
    with pytest.raises(ConfigError, match="every"):
        GradualUnfreeze(every=0)
    with pytest.raises(ConfigError, match="unit"):
        GradualUnfreeze(unit="batches")
    with pytest.raises(ConfigError, match="lr_ratio"):
        GradualUnfreeze(lr_ratio=0.0)


# ---------------------------------------------------------------- early stopping
def test_early_stopping_modes_are_inferred():
    from mtlkit.data import InMemory
    from mtlkit.tasks import Regression

    reg = Regression(name="r", source=InMemory({"train": {"text": ["a b"], "label": [1.0]}}))
    model = tiny_model([toy_task("a"), reg])
    trainer = quiet_trainer(".")
    cases = {
        "val/mean": "max",
        "val/a/accuracy": "max",
        "val/a/macro_f1": "max",
        "val/a/loss": "min",
        "val/r/pearson": "max",
        "val/r/mse": "min",
    }
    for monitor, mode in cases.items():
        cb = MetricEarlyStopping(monitor, min_delta=0.1)
        cb.setup(trainer, model, "fit")
        assert cb.mode == mode, monitor
        assert cb.min_delta == (0.1 if mode == "max" else -0.1)  # Lightning's sign convention
        assert cb.best_score == (-torch.inf if mode == "max" else torch.inf)
    explicit = MetricEarlyStopping("val/a/loss", mode="max")
    explicit.setup(trainer, model, "fit")
    assert explicit.mode == "max"


def test_early_stopping_stops_a_run_without_improvement():
    def frozen_lr(params):  # lr 0: the validation metric never improves
        return torch.optim.SGD(params, lr=0.0)

    dm = toy_datamodule([toy_task("a")], steps_per_epoch=2)
    model = tiny_model(dm.tasks, optimizer=frozen_lr)
    stop = MetricEarlyStopping("val/a/loss", patience=1)
    trainer = quiet_trainer(".", callbacks=[stop], max_epochs=6, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert stop.mode == "min"
    assert trainer.current_epoch == 2 and trainer.global_step == 4  # not the 12 of 6 epochs
    assert stop.stopped_epoch == 1


def test_early_stopping_typo_fails_before_the_first_step():
    dm = toy_datamodule([toy_task("a")])
    model = tiny_model(dm.tasks)
    trainer = quiet_trainer(".", callbacks=[MetricEarlyStopping("val/a/acuracy")], max_steps=3)
    with pytest.raises(ConfigError) as info:
        trainer.fit(model, dm)
    message = str(info.value)
    assert "'val/a/acuracy'" in message
    for name in ("val/a/accuracy", "val/a/macro_f1", "val/a/loss", "val/mean"):
        assert name in message
    assert trainer.global_step == 0


# ---------------------------------------------------------------- shipped overrides
def _cli(tmp_path, monkeypatch, *configs: str, run: bool = True):
    monkeypatch.chdir(tmp_path)
    args = ["--config", BASE] + [a for c in configs for a in ("--config", str(c))] + FAST
    return cli_main(["fit", *args] if run else args, run=run)


def test_regime_overrides_append_to_earlier_callbacks(tmp_path, monkeypatch):
    own = tmp_path / "own_callbacks.yaml"
    own.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}]
                }
            }
        )
    )
    regimes = [REGIMES / f for f in ("freeze_layers.yaml", "l2sp.yaml", "early_stopping.yaml")]
    cli = _cli(tmp_path, monkeypatch, own, *regimes, run=False)
    kinds = {type(c) for c in cli.trainer.callbacks}
    assert {LearningRateMonitor, FreezeLayers, L2SP, MetricEarlyStopping, RNGState} <= kinds


def test_freeze_encoder_override(tmp_path, monkeypatch):
    start = _cli(tmp_path, monkeypatch, REGIMES / "freeze_encoder.yaml", run=False).model
    cli = _cli(tmp_path, monkeypatch, REGIMES / "freeze_encoder.yaml")
    assert cli.trainer.global_step == 3
    for key, value in start.encoder.state_dict().items():
        assert torch.equal(cli.model.encoder.state_dict()[key], value), key
    assert not torch.equal(cli.model.heads["trec"][1].weight, start.heads["trec"][1].weight)


def test_freeze_layers_and_early_stopping_overrides_stacked(tmp_path, monkeypatch):
    regimes = [REGIMES / "freeze_layers.yaml", REGIMES / "early_stopping.yaml"]
    start = _cli(tmp_path, monkeypatch, *regimes, run=False).model
    cli = _cli(tmp_path, monkeypatch, *regimes)
    assert cli.trainer.global_step == 3
    changed = _units(_changed(cli.model.encoder, start.encoder.state_dict()))
    assert changed == {"encoder.layer_1"}
    (stop,) = [c for c in cli.trainer.callbacks if isinstance(c, MetricEarlyStopping)]
    assert stop.monitor == "val/mean" and stop.mode == "max"
    value = cli.trainer.callback_metrics["val/mean"]  # it read the logged metric:
    if torch.isfinite(value):
        assert stop.best_score == value
    else:  # the tiny config's one-example validation gives a NaN Pearson correlation
        assert stop.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC


def test_gradual_unfreeze_override(tmp_path, monkeypatch):
    cli = _cli(tmp_path, monkeypatch, REGIMES / "gradual_unfreeze.yaml")
    names = [g.get("name") for g in cli.trainer.optimizers[0].param_groups]
    assert names == ["heads", "encoder.layer_1", "encoder.layer_0"]  # steps 1 and 2 of 0..2


def test_gradual_unfreeze_logs_each_layer_it_opens(caplog):
    """One line per unfrozen unit, at the step it joins the optimizer. A BERT layer of the tiny
    encoder (hidden 32, intermediate 37) holds 4 x (32 x 32 + 32) attention weights, 2 x 2 x 32
    LayerNorm, 32 x 37 + 37 and 37 x 32 + 32 feed-forward parameters: 6,789."""
    import logging

    with caplog.at_level(logging.INFO):
        _fit([GradualUnfreeze(every=2, unit="steps", lr_ratio=0.5)], max_steps=7)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GradualUnf")]
    assert [line.split(" at ")[0] for line in lines] == [
        "GradualUnfreeze: unfroze encoder.layer_1",
        "GradualUnfreeze: unfroze encoder.layer_0",
        "GradualUnfreeze: unfroze encoder.embeddings",
    ]
    assert [line.split(" at step ")[1].split(" ")[0] for line in lines] == ["2", "4", "6"]
    assert "6,789 parameters" in lines[1] and f"lr {0.5 * LR:.3g}" in lines[1]
