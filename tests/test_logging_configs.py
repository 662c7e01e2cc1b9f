"""The experiment-tracking overrides under configs/logging/ log the same per-task values.

Each override stacks on the tiny config; after a few steps, what was logged is read back from
the logger's own store, offline: the CSV file, the MLflow tracking database through MLflow's
client, the W&B offline run file. Every store holds the per-task losses and weights, the
learning rates, the validation metrics, the gradient diagnostics and (but CSV) the
gradient-conflict image.
"""

import csv
import logging
import struct
import time
from pathlib import Path

import pytest

from mtlkit.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
LOGGING = sorted(p.stem for p in (ROOT / "configs/logging").glob("*.yaml"))
BASE = str(ROOT / "configs/tiny/tiny.yaml")
# The tiny config's tasks (trec: classification, sentiment: regression) in mixed batches; the
# gradient diagnostics log on steps 0, 2 and 4 that carry both tasks: 0 and 4 (with seed 0,
# step 2 draws trec alone).
EXTRA = """
trainer:
  log_every_n_steps: 1
  callbacks:
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
      init_args: {logging_interval: step}
    - class_path: mtlkit.diagnostics.GradientDiagnostics
      init_args: {every_n_steps: 2}
data:
  init_args: {batch_mode: mixed}
"""
EXPECTED = {
    "train/trec/loss",
    "train/sentiment/loss",
    "train/trec/weight",
    "train/sentiment/weight",
    "train/loss",
    "lr-AdamW/encoder",
    "lr-AdamW/heads",
    "val/trec/accuracy",
    "val/trec/macro_f1",
    "val/sentiment/mse",
    "val/sentiment/pearson",
    "val/mean",
    "diag/trec/grad_norm",
    "diag/sentiment/grad_norm",
}


def test_the_three_overrides_are_shipped():
    assert LOGGING == ["csv", "mlflow", "wandb"]


def _fit(tmp_path: Path, name: str, *overrides: str):
    extra = tmp_path / "extra.yaml"
    extra.write_text(EXTRA)
    args = ["fit", "--config", BASE, "--config", str(ROOT / f"configs/logging/{name}.yaml")]
    args += ["--config", str(extra), f"--trainer.default_root_dir={tmp_path / 'root'}"]
    return cli_main([*args, *overrides])


def test_csv(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        cli = _fit(tmp_path, "csv", f"--trainer.logger.init_args.save_dir={tmp_path}")
    path = Path(cli.trainer.logger.log_dir) / "metrics.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    keys = {k for row in rows for k, v in row.items() if v != ""}
    assert EXPECTED | {"diag/cos/trec~sentiment"} <= keys
    weights = [float(r["train/trec/weight"]) for r in rows if r["train/trec/weight"]]
    assert weights == [1.0] * 6  # equal weighting, one row per step
    assert (path.parent / "config.yaml").is_file()
    # No image store: one note (not one per logging step), the cosines stay as scalars.
    notes = [r.getMessage() for r in caplog.records if "stores no images" in r.getMessage()]
    assert notes == [
        "GradientDiagnostics: CSVLogger stores no images; the gradient cosine matrix is "
        "logged as the diag/cos/<a>~<b> scalars only"
    ]


def test_mlflow(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cli = _fit(
        tmp_path,
        "mlflow",
        f"--trainer.logger.init_args.tracking_uri={uri}",
        f"--trainer.logger.init_args.artifact_location={tmp_path / 'artifacts'}",
    )
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mtlkit")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == cli.trainer.logger.run_id
    # MLflow metric names allow no "~": Lightning logs the cosine as diag/cos/trecsentiment.
    assert EXPECTED | {"diag/cos/trecsentiment"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train/trec/weight")
    assert sorted(m.step for m in history) == list(range(6))
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in artifacts  # the run's config (no local log folder to hold it)
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    steps = {p.split("+step+")[1].split("+")[0] for p in images if p.endswith(".png")}
    assert all("diag_gradient_cosine" in p for p in images) and steps == {"0", "4"}
    assert (tmp_path / "root" / "config.yaml").is_file()


def _wandb_records(path: Path):
    """The records of a W&B offline run file (``run-<id>.wandb``).

    wandb >= 0.19 writes it from its Go core and ships no Python reader; the file is a LevelDB
    log (7-byte file header ``:W&B`` + magic + version, then 32 KiB blocks of chunks with a
    7-byte header: CRC-32, length, type 1 full / 2 first / 3 middle / 4 last) of protobuf
    ``Record`` messages from wandb's public ``wandb.proto``.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def _wandb_history(run_file: Path) -> tuple[set[str], list[int]]:
    """The history keys in a W&B run file and the steps that logged ``train/trec/weight``."""
    keys, steps = set(), []
    for record in _wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            keys |= set(items)
            if "train/trec/weight" in items:
                steps.append(int(items["trainer/global_step"]))
    return keys, steps


def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cli = _fit(
        tmp_path,
        "wandb",
        "--trainer.logger.init_args.offline=true",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    )
    cli.trainer.logger.experiment.finish()  # what the process's exit does after `mtlkit fit`
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    wanted = EXPECTED | {"diag/cos/trec~sentiment", "diag/gradient_cosine/_type"}
    # wandb's core process may still be flushing the file after finish() on a loaded machine.
    deadline = time.monotonic() + 60
    keys, steps = _wandb_history(run_file)
    while not wanted <= keys and time.monotonic() < deadline:
        time.sleep(0.5)
        keys, steps = _wandb_history(run_file)
    assert wanted <= keys
    assert steps == list(range(6))
    images = list(run_file.parent.glob("files/media/images/diag/gradient_cosine_*.png"))
    assert len(images) == 2  # steps 0 and 4


@pytest.mark.parametrize("name", LOGGING)
def test_override_builds_its_logger(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = cli_main(
        ["--config", BASE, "--config", str(ROOT / f"configs/logging/{name}.yaml")], run=False
    )
    kind = {"csv": "CSVLogger", "mlflow": "MLFlowLogger", "wandb": "WandbLogger"}[name]
    assert type(cli.trainer.logger).__name__ == kind
