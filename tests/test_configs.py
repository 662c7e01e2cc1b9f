"""Every shipped config is built by the CLI, and each one trains a few real steps."""

from pathlib import Path

import pytest
import yaml

from mtlkit.cli import cli_main
from mtlkit.data.datamodule import MultiTaskDataModule
from mtlkit.training import MultiTaskModule

ROOT = Path(__file__).resolve().parents[1]
ALL = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))


def _standalone(path: str) -> bool:
    top = yaml.safe_load((ROOT / path).read_text())
    return "model" in top and "data" in top and "class_path" in top["model"]


# Full configs run on their own; the others are overrides, stacked on the tiny base config.
CONFIGS = [c for c in ALL if _standalone(c)]
WEIGHTING = [c for c in ALL if c.startswith("configs/weighting/")]
REGIMES = [c for c in ALL if c.startswith("configs/transfer/regimes/")]
OVERRIDES = WEIGHTING + REGIMES
# Fitted against a stand-in teacher in tests/test_distillation.py (it needs a checkpoint).
NEEDS_CHECKPOINT = {"configs/transfer/distill_minilm.yaml"}
BASE = str(ROOT / "configs/tiny/tiny.yaml")
# Quick overrides so a real fit of any config takes seconds: few steps, tiny evaluation.
FAST = [
    "--trainer.max_steps=3",
    "--trainer.max_epochs=1",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.steps_per_epoch=3",
    "--data.init_args.max_train_examples=64",
    "--data.init_args.max_eval_examples=16",
    "--data.init_args.batch_size=4",
]


def test_configs_are_found():
    assert "configs/quickstart.yaml" in CONFIGS and "configs/tiny/tiny.yaml" in CONFIGS
    assert "configs/weighting/gradnorm.yaml" in OVERRIDES
    assert "configs/transfer/regimes/gradual_unfreeze.yaml" in OVERRIDES
    assert "configs/transfer/sms_spam.yaml" in CONFIGS
    assert "configs/transfer/adapter_fusion.yaml" in ALL  # its own test below


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A multi-task checkpoint of the tiny config: the source every transfer regime starts from."""
    tmp = tmp_path_factory.mktemp("source")
    cli = cli_main(["fit", "--config", BASE, *FAST, f"--trainer.default_root_dir={tmp}"])
    path = tmp / "source.ckpt"
    cli.trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("override", REGIMES)
def test_transfer_regime_from_checkpoint(override, tiny_checkpoint, tmp_path, monkeypatch):
    """Every regime override stacks on a config and fine-tunes from a multi-task checkpoint."""
    monkeypatch.chdir(tmp_path)
    args = ["--config", BASE, "--config", str(ROOT / override)]
    args += [f"--model.init_args.init_from={tiny_checkpoint}", *FAST]
    cli = cli_main(["fit", *args])
    assert cli.trainer.global_step == 3
    report = cli.model.init_report
    assert "encoder" in report.loaded and report.source == str(tiny_checkpoint)


def test_adapter_fusion_config_fuses_exported_source_adapters(tmp_path, monkeypatch):
    """configs/transfer/adapter_fusion.yaml, as its comment runs it: source adapters trained
    (Pfeiffer placement) and exported, then fused per task."""
    from mtlkit.cli import export_checkpoint
    from mtlkit.model.adapter_fusion import AdapterFusionEncoder

    monkeypatch.chdir(tmp_path)
    sources = [BASE, str(ROOT / "configs/transfer/regimes/bottleneck_pfeiffer.yaml")]
    cli = cli_main(["fit", *[a for c in sources for a in ("--config", c)], *FAST])
    cli.trainer.save_checkpoint(tmp_path / "sources.ckpt")
    export_checkpoint(sources, str(tmp_path / "sources.ckpt"), str(tmp_path / "exported"))
    args = ["--config", BASE, "--config", str(ROOT / "configs/transfer/adapter_fusion.yaml")]
    args += [
        f"--model.init_args.encoder.init_args.source_adapters={tmp_path}/exported/task_encoder",
        "--model.init_args.encoder.init_args.source_tasks=[trec, sentiment]",
    ]
    cli = cli_main(["fit", *args, *FAST])
    assert cli.trainer.global_step == 3
    encoder = cli.model.encoder
    assert isinstance(encoder, AdapterFusionEncoder) and encoder.source_tasks == [
        "trec",
        "sentiment",
    ]


@pytest.mark.parametrize("override", WEIGHTING)
def test_override_stacks_and_fits(override, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    built = cli_main(["--config", BASE, "--config", str(ROOT / override)], run=False)
    expected = yaml.safe_load((ROOT / override).read_text())["model"]["init_args"]["weighting"]
    assert type(built.model.weighting).__name__ == expected["class_path"].rsplit(".", 1)[1]
    if "aggregator" in expected.get("init_args", {}):
        name = expected["init_args"]["aggregator"]["class_path"].rsplit(".", 1)[1]
        assert type(built.model.weighting.aggregator).__name__ == name
    cli = cli_main(["fit", "--config", BASE, "--config", str(ROOT / override), *FAST])
    assert cli.trainer.global_step == 3
    assert "train/trec/weight" in cli.trainer.callback_metrics


@pytest.mark.parametrize("config", CONFIGS)
def test_config_instantiates(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", str(ROOT / config)], run=False)
    assert isinstance(cli.model, MultiTaskModule)
    assert isinstance(cli.datamodule, MultiTaskDataModule)
    assert cli.model.tasks == {t.name: t for t in cli.datamodule.tasks}  # linked, same objects


@pytest.mark.parametrize("config", [c for c in CONFIGS if c not in NEEDS_CHECKPOINT])
def test_config_fits_a_few_steps(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", "--config", str(ROOT / config), *FAST])
    assert cli.trainer.global_step == 3
    assert any(k.startswith("val/") for k in cli.trainer.callback_metrics)


def test_print_config_and_stacking(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    override = tmp_path / "override.yaml"
    override.write_text("data:\n  init_args:\n    batch_size: 7\n")
    with pytest.raises(SystemExit):
        cli_main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/tiny/tiny.yaml"),
                "--config",
                str(override),
                "--print_config",
            ]
        )
    out = capsys.readouterr().out
    assert "batch_size: 7" in out and "class_path: mtlkit.tasks.SequenceClassification" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data.init_args.sampling=mtlkit.data.sampling.Nope"], "Nope"),
        (["--model.init_args.pooling=max"], "pooling"),
        (["--data.init_args.batch_mode=interleaved"], "batch_mode"),
    ],
)
def test_config_typos_fail_before_training(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(ROOT / "configs/tiny/tiny.yaml"), *args])
    assert message in capsys.readouterr().err


def test_unknown_task_type(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "configs/tiny/tiny.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace("mtlkit.tasks.SequenceClassification", "mtlkit.tasks.SequenceClasification")
    )
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(bad)])
    assert "SequenceClasification" in capsys.readouterr().err
