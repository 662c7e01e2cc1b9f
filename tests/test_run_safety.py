"""Runs never end in a silent wrong state: numbers that go bad, checkpoints, run folders.

Each test is a case of issue 11 (sections "Numbers that go bad" and "Checkpoints and run
folders") and a row of the README's troubleshooting table. Where the command line matters, the
real ``mtlkit fit`` runs in a subprocess on ``configs/tiny/tiny.yaml``.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from helpers import short_cpu_trainer, tiny_model, toy_datamodule, toy_texts
from lightning.pytorch.callbacks import ModelCheckpoint

import mtlkit.checkpointing as checkpointing
from mtlkit.checkpointing import AtomicCheckpointIO, CheckpointError
from mtlkit.cli import cli_main
from mtlkit.data import InMemory
from mtlkit.errors import ConfigError, DataError
from mtlkit.run_folder import lock_path
from mtlkit.tasks import Regression, SequenceClassification
from mtlkit.training import NonFiniteError
from mtlkit.weighting import StaticWeighting

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny/tiny.yaml")
MTLKIT = Path(sys.executable).with_name("mtlkit")


def _checkpoints(every: int = 2, dirpath: str | None = "ck", **extra) -> dict:
    args = {"every_n_train_steps": every, "save_last": True, "save_top_k": -1, **extra}
    if dirpath is not None:
        args["dirpath"] = dirpath
    return {
        "trainer": {
            "enable_checkpointing": True,
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": args}
            ],
        }
    }


def _write(folder: Path, name: str, config: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(config))
    return name


def _mtlkit(folder: Path, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [str(MTLKIT), "fit", "--config", TINY, *args]
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def _all_finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


def _trainer(tmp_path, **kw) -> L.Trainer:
    return short_cpu_trainer(tmp_path, **{"max_steps": 4, **kw})


def _reg(n: int = 24) -> Regression:
    texts, _ = toy_texts(n)
    labels = [float(i % 3) for i in range(n)]
    return Regression(name="r", source=InMemory({"train": {"text": texts, "label": labels}}))


# ------------------------------------------------------------------ numbers that go bad
def test_static_weighting_rejects_non_finite_weights():
    for bad in (math.nan, math.inf):
        with pytest.raises(ConfigError, match="static task weights must be finite"):
            StaticWeighting({"a": bad})
    with pytest.raises(ConfigError, match="finite"):
        StaticWeighting({}, default=math.nan)


def test_non_finite_task_weights_stop_before_their_update_is_checkpointed(tmp_path):
    """A weighting output going NaN (here a StaticWeighting buffer, from step 2 on) stops the run
    naming the weights; every checkpoint written is finite."""
    task = _reg()
    model = tiny_model([task], weighting=StaticWeighting({"r": 1.0}))

    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                pl_module.weighting.task_weights.fill_(math.nan)

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=1, save_top_k=-1)
    trainer = _trainer(tmp_path, enable_checkpointing=True, callbacks=[Poison(), checkpoints])
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite weighted loss at step 2: StaticWeighting gave task weights \{'r': nan\}",
    ):
        trainer.fit(model, toy_datamodule([task]))
    saved = sorted(p.name for p in (tmp_path / "ck").glob("*.ckpt"))
    assert saved == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"]
    assert all(_all_finite(tmp_path / "ck" / name) for name in saved)


def test_checkpoint_writer_refuses_non_finite_state(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, target)
    bad = {"state_dict": {"w": torch.tensor([1.0, math.nan])}, "global_step": 2}
    with pytest.raises(CheckpointError, match=r"refusing to write .*last.ckpt.*NaN or inf.*w"):
        io.save_checkpoint(bad, target)
    assert torch.load(target, weights_only=True)["global_step"] == 1
    # A ModelCheckpoint's own infinities (kth_value starts at inf) are not training state.
    ok = {
        "state_dict": {"w": torch.ones(2)},
        "callbacks": {"m": {"kth_value": torch.tensor(math.inf)}},
    }
    io.save_checkpoint(ok, target)


def test_divergence_stops_before_the_exploded_parameters_are_checkpointed(tmp_path):
    """lr 1e6: step 0's loss is finite, its update multiplies the parameters' norm by ~1e7. The
    run stops in that step, naming it, before ModelCheckpoint (every step) writes anything."""
    override = _checkpoints(every=1)
    override["model"] = {
        "init_args": {"optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e6}}}
    }
    rc, out = _mtlkit(tmp_path, "--config", _write(tmp_path, "o.yaml", override))
    assert rc != 0
    assert "optimizer step at step 0 multiplied the parameters' norm" in out, out[-3000:]
    assert "lower the learning rate" in out
    assert not list((tmp_path / "ck").glob("*.ckpt"))


def _nan_loss_from(model, task, first: int, every: int = 1):
    original = task.loss

    def loss(logits, labels):
        value = original(logits, labels)
        step = model.global_step
        return value * math.nan if step >= first and (step - first) % every == 0 else value

    task.loss = loss


def test_skipping_stops_after_too_many_steps_in_a_row(tmp_path):
    task = _reg()
    model = tiny_model([task], on_nonfinite_loss="skip", max_consecutive_skips=3)
    _nan_loss_from(model, task, first=2)  # every step from step 2 on
    with (
        pytest.warns(UserWarning, match="step skipped"),
        pytest.raises(NonFiniteError, match=r"4 steps in a row were skipped .*diverged"),
    ):
        _trainer(tmp_path, max_steps=12).fit(model, toy_datamodule([task]))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skipping_stops_past_a_fraction_and_reports_skipped_steps(tmp_path):
    task = _reg()
    model = tiny_model([task], on_nonfinite_loss="skip", max_skipped_fraction=0.1)
    _nan_loss_from(model, task, first=1, every=4)  # one step in 4 (after each skip, 3 pass)
    with (
        pytest.warns(UserWarning, match="step skipped"),
        pytest.raises(
            NonFiniteError,
            match=r"\d+ of 2\d steps were skipped \(more than max_skipped_fraction=0.1",
        ),
    ):
        _trainer(tmp_path, max_steps=40).fit(model, toy_datamodule([task]))

    task = _reg()
    model = tiny_model([task], on_nonfinite_loss="skip")
    _nan_loss_from(model, task, first=2, every=1000)  # step 2 once
    with pytest.warns(
        UserWarning, match=r"1 of 4 training steps were skipped .* at step\(s\) \[2\]"
    ):
        _trainer(tmp_path, max_steps=4).fit(model, toy_datamodule([task]))
    assert model.global_step == 4


# ----------------------------------------------------------------- checkpoints and run folders
def test_ckpt_path_last_resumes_from_a_versioned_logger_folder(tmp_path):
    """No fixed dirpath: each run writes runs/v/version_N/checkpoints; `last` is the newest."""
    override = _checkpoints(dirpath=None)
    override["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "v"},
    }
    config = _write(tmp_path, "o.yaml", override)
    rc, out = _mtlkit(tmp_path, "--config", config, "--trainer.max_steps=4")
    assert rc == 0, out[-3000:]
    rc, out = _mtlkit(tmp_path, "--config", config, "--trainer.max_steps=6", "--ckpt_path=last")
    assert rc == 0, out[-3000:]
    first = "runs/v/version_0/checkpoints/last.ckpt"
    assert f"Restoring states from the checkpoint path at {first}" in out, out[-3000:]
    assert "exists and is not empty" not in out
    resumed = torch.load(tmp_path / "runs/v/version_1/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6
    assert not (tmp_path / "runs/v/version_1/checkpoints/epoch=0-step=2.ckpt").exists()


def test_ckpt_path_last_without_a_last_checkpoint_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, "o.yaml", _checkpoints())
    (tmp_path / "ck").mkdir()
    missing = r"--ckpt_path last: there is no last checkpoint \(last\*\.ckpt\) in \S+/ck;"
    with pytest.raises(CheckpointError, match=missing):
        cli_main(["fit", "--config", TINY, "--config", config, "--ckpt_path", "last"])
    with pytest.raises(CheckpointError, match=r"this config writes no checkpoints"):
        cli_main(["fit", "--config", TINY, "--ckpt_path", "last"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder whose ck/ holds epoch=0-step=2.ckpt, epoch=1-step=4.ckpt and last.ckpt."""
    folder = tmp_path_factory.mktemp("trained")
    rc, out = _mtlkit(
        folder, "--config", _write(folder, "o.yaml", _checkpoints()), "--trainer.max_steps=4"
    )
    assert rc == 0, out[-3000:]
    return folder


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_damaged_checkpoint_names_the_newest_intact_one(trained, tmp_path, kind):
    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    last = folder / "ck" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if kind == "truncated" else os.urandom(len(data)))
    newest = sorted((folder / "ck").glob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)[-1]
    os.utime(last)  # written after the others, as a damaged last.ckpt would be
    if kind == "random":  # in-process: the exception itself, not only what is printed
        with pytest.raises(CheckpointError) as info:
            AtomicCheckpointIO().load_checkpoint(str(last))
        assert info.value.__cause__ is None and info.value.__suppress_context__
        assert f"the newest intact checkpoint there is {newest}" in str(info.value)
        return
    rc, out = _mtlkit(
        folder, "--config", "o.yaml", "--ckpt_path", "ck/last.ckpt", "--trainer.max_steps=6"
    )
    assert rc != 0
    assert "checkpoint ck/last.ckpt is damaged: it is truncated or not a checkpoint file" in out, (
        out[-3000:]
    )
    assert f"resume with --ckpt_path {newest.relative_to(folder)}" in out
    assert "weights_only=False" not in out


def test_written_checkpoint_is_read_back_before_it_replaces_the_previous(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)

    def silent_bad_save(obj, f, *args, **kwargs):  # a write that "succeeds" with garbage
        f.write(b"PK\x03\x04 not a whole checkpoint")

    monkeypatch.setattr(checkpointing.torch, "save", silent_bad_save)
    with pytest.raises(CheckpointError, match="does not read back .* the previous file is kept"):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_second_run_in_a_run_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    config = _write(tmp_path, "o.yaml", _checkpoints())
    (tmp_path / "ck").mkdir()
    lock = lock_path(tmp_path / "ck")
    host = socket.gethostname()
    other = subprocess.Popen(["sleep", "120"])  # the process of the run already in the folder
    try:
        lock.write_text(f'{{"pid": {other.pid}, "host": "{host}", "started": "earlier"}}')
        rc, out = _mtlkit(tmp_path, "--config", config)
        assert rc != 0
        assert (
            f"run folder {tmp_path / 'ck'} is in use by another run (process {other.pid}" in out
        ), out[-3000:]
        assert not (tmp_path / "ck" / "last.ckpt").exists() and lock.exists()
    finally:
        other.kill()
        other.wait()
    # Its process is gone (killed): the lock is stale, the next run takes the folder over.
    rc, out = _mtlkit(tmp_path, "--config", config)
    assert rc == 0, out[-3000:]
    assert (tmp_path / "ck" / "last.ckpt").is_file() and not lock.exists()


def test_a_new_run_replaces_the_fixed_last_checkpoint(tmp_path, monkeypatch):
    """The README's transfer commands read runs/quickstart/checkpoints/last.ckpt: after a second
    run it is that run's model, not the first's (with a last-v1.ckpt beside it)."""
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, "o.yaml", _checkpoints(every=1, save_top_k=0))
    cli_main(["fit", "--config", TINY, "--config", config, "--trainer.max_steps=4"])
    cli_main(["fit", "--config", TINY, "--config", config, "--trainer.max_steps=2"])
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.ckpt"]
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_stale_temporary_files_are_removed_but_not_a_live_writers(tmp_path):
    target = tmp_path / "last.ckpt"
    live = subprocess.Popen(["sleep", "120"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        writing = tmp_path / f".last.ckpt.pid{live.pid}.abc.tmp"
        killed = tmp_path / f".last.ckpt.pid{dead.pid}.def.tmp"
        writing.write_bytes(b"half")
        killed.write_bytes(b"half")
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, target)
        assert writing.exists() and not killed.exists()
    finally:
        live.kill()
        live.wait()


def test_resuming_with_other_label_names_is_an_error(tmp_path):
    texts, labels = toy_texts(24)

    def task(names):
        rows = {"text": texts, "label": [names[v] for v in labels]}
        return SequenceClassification(name="s", source=InMemory({"train": rows}))

    first = task(["neg", "pos"])
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(tiny_model([first]), toy_datamodule([first]))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    other = task(["bad", "good"])  # same count, other classes
    with pytest.raises(
        DataError,
        match=r"task 's': the checkpoint's labels \['neg', 'pos'\] differ from the data's "
        r"\['bad', 'good'\]",
    ):
        _trainer(tmp_path, max_steps=2).fit(
            tiny_model([other]), toy_datamodule([other]), ckpt_path=path
        )
