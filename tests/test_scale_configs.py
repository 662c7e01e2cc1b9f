"""The scale overrides under configs/scale/ stack on a base config and build what they name.

GPU strategies cannot start on a CPU-only machine: there each config is still parsed by the
CLI, its strategy class and every class it names are imported, and the strategy object itself
is built where that needs no GPU. ``bf16_cpu.yaml`` trains three real steps.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from mtlkit.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "configs/tiny/tiny.yaml")
SCALE = sorted(p.name for p in (ROOT / "configs/scale").glob("*.yaml"))
FAST = [
    "--trainer.max_steps=3",
    "--trainer.max_epochs=1",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
]
HAS_CUDA = torch.cuda.is_available()
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _resolved(name: str, capsys) -> dict:
    """The config the CLI resolves from tiny + the override (parsed, nothing instantiated)."""
    with pytest.raises(SystemExit) as info:
        override = str(ROOT / "configs/scale" / name)
        cli_main(["--config", BASE, "--config", override, "--print_config"], run=False)
    assert info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _import(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def test_scale_configs_are_found():
    assert SCALE == ["bf16_cpu.yaml", "ddp_gpus.yaml", "deepspeed_zero2.yaml", "fsdp.yaml"]


@pytest.mark.parametrize("name", SCALE)
def test_scale_config_is_a_trainer_only_override(name):
    raw = yaml.safe_load((ROOT / "configs/scale" / name).read_text())
    assert set(raw) == {"trainer"}  # stacks on any base config without touching model or data


@pytest.mark.parametrize("name", SCALE)
def test_scale_config_parses_and_names_importable_classes(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = _resolved(name, capsys)["trainer"]
    assert trainer["max_steps"] == 6  # the base config is still there underneath
    if name != "bf16_cpu.yaml":
        assert trainer["use_distributed_sampler"] is False  # mtlkit shards the data itself
        assert trainer["accelerator"] == "gpu" and trainer["devices"] in (-1, 8)
    strategy = trainer["strategy"]
    if isinstance(strategy, dict):
        cls = _import(strategy["class_path"])
        params = inspect.signature(cls.__init__).parameters
        assert set(strategy["init_args"]) <= set(params)
        for layer in strategy["init_args"].get("auto_wrap_policy") or []:
            assert issubclass(_import(layer), torch.nn.Module)


def test_ddp_gpus_values(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = _resolved("ddp_gpus.yaml", capsys)["trainer"]
    assert trainer["strategy"] == "ddp" and trainer["precision"] == "16-mixed"
    assert trainer["sync_batchnorm"] is False


def test_ddp_gpus_instantiates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", BASE, "--config", str(ROOT / "configs/scale/ddp_gpus.yaml")]
    if not HAS_CUDA:  # same strategy and data settings, on two CPU processes (not launched)
        args += ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true"]
    cli = cli_main(args, run=False)
    assert isinstance(cli.trainer.strategy, DDPStrategy)
    assert cli.trainer._accelerator_connector.use_distributed_sampler is False


def test_fsdp_strategy_builds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _resolved("fsdp.yaml", capsys)["trainer"]["strategy"]
    assert spec["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    init = {k: v for k, v in spec["init_args"].items() if v is not None}
    init["auto_wrap_policy"] = {_import(p) for p in init["auto_wrap_policy"]}
    init.pop("timeout")
    strategy = FSDPStrategy(**init)  # the strategy object itself needs no GPU
    assert strategy.sharding_strategy.name == "FULL_SHARD"
    wrapped = strategy.kwargs["auto_wrap_policy"]._module_classes
    assert {c.__name__ for c in wrapped} == {"BertLayer"}


@pytest.mark.skipif(not HAS_CUDA, reason="Lightning's FSDP strategy needs a CUDA accelerator")
def test_fsdp_instantiates_on_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", BASE, "--config", str(ROOT / "configs/scale/fsdp.yaml")]
    cli = cli_main([*args, "--trainer.devices=1"], run=False)
    assert isinstance(cli.trainer.strategy, FSDPStrategy)


def test_deepspeed_zero2_values(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _resolved("deepspeed_zero2.yaml", capsys)["trainer"]["strategy"]
    assert spec["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert spec["init_args"]["stage"] == 2


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs deepspeed (make setup installs it)")
def test_deepspeed_zero2_builds_its_trainer_on_cpu(tmp_path, monkeypatch):
    """The shipped ZeRO-2 config, with only the device overridden, builds Lightning's trainer
    and DeepSpeed strategy here (training itself needs GPUs)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    monkeypatch.chdir(tmp_path)
    args = ["--config", BASE, "--config", str(ROOT / "configs/scale/deepspeed_zero2.yaml")]
    cli = cli_main([*args, "--trainer.accelerator=cpu", "--trainer.devices=1"], run=False)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, DeepSpeedStrategy)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == 2 and zero["overlap_comm"] and zero["contiguous_gradients"]
    assert cli.trainer.precision == "bf16-mixed"


@pytest.mark.skipif(
    not (HAS_CUDA and HAS_DEEPSPEED), reason="DeepSpeed needs CUDA and the deepspeed package"
)
def test_deepspeed_zero2_instantiates(tmp_path, monkeypatch):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    monkeypatch.chdir(tmp_path)
    args = ["--config", BASE, "--config", str(ROOT / "configs/scale/deepspeed_zero2.yaml")]
    cli = cli_main([*args, "--trainer.devices=1"], run=False)
    assert isinstance(cli.trainer.strategy, DeepSpeedStrategy)
    assert cli.trainer.strategy.config["zero_optimization"]["stage"] == 2


def test_bf16_cpu_fits_three_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", BASE, "--config", str(ROOT / "configs/scale/bf16_cpu.yaml")]
    cli = cli_main([*args, *FAST])
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.trainer.global_step == 3
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
