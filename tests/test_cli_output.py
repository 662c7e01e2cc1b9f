"""What the ``mtlkit`` command prints: ``--version``, a data summary before training, mtlkit's
own per-task table for ``validate``, no third-party noise, a rich progress bar with per-task
losses on a terminal, and ``predict`` over CSV/JSONL with a chosen text column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from helpers import toy_datamodule, toy_task
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from mtlkit.callbacks import TaskProgressBar, data_summary
from mtlkit.cli import cli_main, main
from mtlkit.data.sampling import Temperature

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny/tiny.yaml")
#: Messages of other libraries that say nothing about the run.
NOISE = ["💡", "litlogger", "litmodels", "LeafSpec", "real_accelerator", "args parameter is"]


def _mtlkit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MTLKIT_DEBUG", "DS_ACCELERATOR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "mtlkit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``fit`` (with a checkpoint), ``validate`` of it and ``export``, as a user runs them."""
    tmp = tmp_path_factory.mktemp("cli")
    fit = _mtlkit(tmp, "fit", "--config", TINY, "--trainer.enable_checkpointing=true")
    assert fit.returncode == 0, fit.stderr[-3000:]
    (ckpt,) = (tmp / "runs/tiny/checkpoints").glob("*.ckpt")
    validate = _mtlkit(tmp, "validate", "--config", TINY, "--ckpt_path", str(ckpt))
    assert validate.returncode == 0, validate.stderr[-3000:]
    export = _mtlkit(tmp, "export", "--config", TINY, "--ckpt_path", str(ckpt), "--output", "ex")
    assert export.returncode == 0, export.stderr[-3000:]
    return tmp, {"fit": fit, "validate": validate, "export": export}


def test_version():
    result = _mtlkit(ROOT, "--version")
    assert result.returncode == 0
    line = result.stdout.strip()
    assert line.startswith(f"mtlkit {version('mtlkit')} (torch {version('torch')}, ")
    assert f"transformers {version('transformers')}" in line


def test_one_line_data_summary_before_training(runs):
    _, results = runs
    out = results["fit"].stdout
    # tiny.yaml: 8 rows per task, one carved into validation; proportional sampling of 7 and 7.
    expected = (
        "data: 2 task(s), homogeneous batches of 4, 3 steps/epoch, Proportional sampling: "
        "trec 7 train / 1 val (p=0.50), sentiment 7 train / 1 val (p=0.50)"
    )
    assert expected in out.splitlines()
    assert out.index(expected) < out.index("val metrics per task")


def test_data_summary_shows_the_sampling_probabilities():
    """Temperature sampling, T = 2, over 27 and 9 training examples (a tenth of 30 and 10
    carved into validation): p is proportional to sqrt(n), 5.196 / (5.196 + 3) = 0.63 and 0.37
    (Arivazhagan et al. 2019)."""
    dm = toy_datamodule(
        [toy_task("big", n=30), toy_task("small", n=10, seed=1)], sampling=Temperature(2.0)
    )
    dm.setup("fit")
    line = data_summary(dm)
    assert "Temperature sampling" in line
    assert "big 27 train / 3 val (p=0.63)" in line and "small 9 train / 1 val (p=0.37)" in line


def test_validate_prints_the_per_task_table_not_lightnings(runs):
    _, results = runs
    out = results["validate"].stdout
    assert "val metrics per task" in out
    rows = [line for line in out.splitlines() if line.startswith(("trec |", "sentiment |"))]
    assert len(rows) == 2
    assert "DataLoader 0" not in out and "Validate metric" not in out  # Lightning's table


def test_no_third_party_noise(runs):
    _, results = runs
    for name, result in results.items():
        text = result.stdout + result.stderr
        found = [n for n in NOISE if n in text]
        assert not found, f"{name}: {found}"


def test_progress_bar_is_rich_with_task_losses_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", TINY, "--trainer.enable_progress_bar=true"]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    built = cli_main(args, run=False).trainer.callbacks
    bars = [c for c in built if isinstance(c, ProgressBar)]
    assert [type(b) for b in bars] == [RichProgressBar]  # not a terminal: Lightning's default
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "xterm")
    cli = cli_main(["fit", *args, "--data.init_args.batch_mode=mixed"])
    (bar,) = [c for c in cli.trainer.callbacks if isinstance(c, TaskProgressBar)]
    assert [c for c in cli.trainer.callbacks if isinstance(c, ProgressBar)] == [bar]
    shown = bar.get_metrics(cli.trainer, cli.model)
    metrics = cli.trainer.callback_metrics
    for task in ("trec", "sentiment"):
        assert shown[f"{task}_loss"] == pytest.approx(
            float(metrics[f"train/{task}/loss"]), abs=1e-3
        )
    assert "train/loss" in shown  # Lightning's own entries stay


def test_a_config_that_turns_the_bar_off_keeps_it_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    cli = cli_main(["--config", TINY], run=False)  # tiny.yaml: enable_progress_bar: false
    assert not any(isinstance(c, TaskProgressBar) for c in cli.trainer.callbacks)


def test_predict_reads_csv_and_jsonl_with_a_chosen_column(runs, capsys):
    tmp, _ = runs
    csv_file = tmp / "in.csv"
    csv_file.write_text('id,sentence\n1,what is a movie\n2,""\n3,"good movie, bad game"\n')
    out = tmp / "csv.jsonl"
    main(["predict", "--model", str(tmp / "ex"), "--input", str(csv_file), "--output", str(out),
          "--text_column", "sentence"])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["what is a movie", "", "good movie, bad game"]
    assert rows[1]["predictions"] is None and set(rows[2]["predictions"]) == {"trec", "sentiment"}

    jsonl = tmp / "in.jsonl"
    jsonl.write_text('{"body": "who is john"}\n{"body": "hate spam"}\n')
    main(["predict", "--model", str(tmp / "ex"), "--input", str(jsonl), "--output", str(out),
          "--text_column", "body"])  # fmt: skip
    assert [json.loads(x)["text"] for x in out.read_text().splitlines()] == [
        "who is john",
        "hate spam",
    ]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--model", str(tmp / "ex"), "--input", str(csv_file), "--output",
              str(out)])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "has no column 'text' (columns: ['id', 'sentence'])" in err and "--text_column" in err


def test_readme_csv_task_with_string_labels(tmp_path, monkeypatch):
    """The README's CSV example, as written there, trains and names its classes."""
    import re

    monkeypatch.chdir(tmp_path)
    text = (ROOT / "README.md").read_text()
    table = re.search(r"^```csv\n(message,intent\n.*?)^```", text, flags=re.S | re.M).group(1)
    config = re.search(r"^```yaml\n(data:\n.*?name: intent.*?)^```", text, flags=re.S | re.M)
    (tmp_path / "data").mkdir()
    for name in ("intents_train.csv", "intents_dev.csv"):
        (tmp_path / "data" / name).write_text(table)
    (tmp_path / "intent.yaml").write_text(config.group(1))
    args = ["fit", "--config", TINY, "--config", "intent.yaml", "--trainer.max_steps=3"]
    cli = cli_main(args)
    (task,) = cli.datamodule.tasks
    assert task.label_names == ["account", "refund", "shipping"] and task.num_labels == 3
    assert cli.trainer.global_step == 3 and "val/intent/accuracy" in cli.trainer.callback_metrics
