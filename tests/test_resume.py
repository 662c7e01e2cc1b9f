"""Exact resume: a run killed mid-epoch and resumed from ``last.ckpt`` ends like an unbroken one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

import mtlkit.checkpointing as checkpointing
from mtlkit.checkpointing import AtomicCheckpointIO, RNGState

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "configs/tiny/tiny.yaml")
FAMO = str(ROOT / "configs/weighting/famo.yaml")  # mixed batches + FAMO's stateful logits
STEPS_PER_EPOCH, EPOCHS, EVERY = 5, 3, 2
# Killed after step 9: last.ckpt holds step 8, in the middle of epoch 1 (steps 6-10); killed
# after step 11: last.ckpt holds step 10, the end of epoch 1, written before its validation.
KILL_AFTER = (9, 11)

# A config that lists its own callbacks (the CLI's RNGState must survive it).
OVERRIDE = {
    "seed_everything": 0,
    "trainer": {
        "max_steps": STEPS_PER_EPOCH * EPOCHS,
        "max_epochs": EPOCHS,
        "deterministic": True,
        "enable_checkpointing": True,
        "num_sanity_val_steps": 0,
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": "ckpt", "every_n_train_steps": EVERY, "save_last": True},
            },
            {"class_path": "test_resume.Recorder"},
        ],
    },
    "model": {"init_args": {"dropout": 0.3}},
    "data": {"init_args": {"steps_per_epoch": STEPS_PER_EPOCH}},
}


class Recorder(L.Callback):
    """Test helper run inside the CLI subprocess (``$RECORD``: where to write, ``$KILL_AFTER``)."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.plans: dict[int, list[int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[trainer.global_step] = float(loss)
        self.plans[trainer.global_step] = [batch["epoch"], batch["step"], trainer.current_epoch]
        if os.environ.get("KILL_AFTER") == str(trainer.global_step):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_fit_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        record = {"losses": self.losses, "plans": self.plans, "metrics": metrics}
        record["global_step"] = trainer.global_step
        Path(os.environ["RECORD"]).write_text(json.dumps(record))


def _fit(folder: Path, *extra: str, **env: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "override.yaml").write_text(yaml.safe_dump(OVERRIDE))
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in ("KILL_AFTER", "RECORD")},
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    cmd = [sys.executable, "-m", "mtlkit.cli", "fit", "--config", BASE, "--config", FAMO]
    cmd += ["--config", "override.yaml", *extra]
    return subprocess.Popen(
        cmd, cwd=folder, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def test_killed_run_resumes_exactly(tmp_path):
    full = tmp_path / "full"
    broken = {kill: tmp_path / f"killed_after_{kill}" for kill in KILL_AFTER}
    procs = [_fit(full, RECORD=str(full / "record.json"))]
    procs += [_fit(d, RECORD=str(d / "unused.json"), KILL_AFTER=str(k)) for k, d in broken.items()]
    (rc_full, out_full), *killed = (_wait(p) for p in procs)
    assert rc_full == 0, out_full[-4000:]
    for (rc, out), folder in zip(killed, broken.values(), strict=True):
        assert rc == -signal.SIGKILL, out[-4000:]
        assert not (folder / "unused.json").exists()
    # No temporary files are left after a clean run.
    assert not [p.name for p in (full / "ckpt").iterdir() if p.suffix != ".ckpt"]

    # Only complete checkpoints are left after a kill: last.ckpt is the last even step.
    for kill, folder in broken.items():
        last = torch.load(folder / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
        assert last["global_step"] == kill - 1
        assert "RNGState" in last["callbacks"] and "MultiTaskDataModule" in last

    resumed = [
        _fit(d, "--ckpt_path", "ckpt/last.ckpt", RECORD=str(d / "record.json"))
        for d in broken.values()
    ]
    for rc, out in [_wait(p) for p in resumed]:
        assert rc == 0, out[-4000:]

    a = json.loads((full / "record.json").read_text())
    assert a["global_step"] == STEPS_PER_EPOCH * EPOCHS
    # Every epoch draws new plans (Lightning's set_epoch reaches the batch sampler).
    assert [a["plans"][str(s)][:2] for s in (1, 6, 11)] == [[0, 0], [1, 0], [2, 0]]
    val = {k: v for k, v in a["metrics"].items() if k.startswith("val/")}
    assert val
    gaps = []
    for kill, folder in broken.items():
        b = json.loads((folder / "record.json").read_text())
        assert b["global_step"] == a["global_step"]
        assert sorted(b["losses"], key=int) == [str(s) for s in range(kill, a["global_step"] + 1)]
        for step, loss in b["losses"].items():
            assert b["plans"][step] == a["plans"][step], f"step {step}"  # same data, same epoch
            assert loss == pytest.approx(a["losses"][step], abs=1e-6, rel=0), f"step {step}"
            gaps.append(abs(loss - a["losses"][step]))
        assert set(val) <= set(b["metrics"])
        for key, value in val.items():
            assert b["metrics"][key] == pytest.approx(value, abs=1e-6, rel=0, nan_ok=True), key
            gaps += [abs(b["metrics"][key] - value)] if value == value else []
    print(f"resumed vs uninterrupted: max |difference| {max(gaps):.3g} over {len(gaps)} values")


def test_cli_keeps_rng_callback_and_atomic_io_with_config_callbacks(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mtlkit.cli import cli_main

    monkeypatch.chdir(tmp_path)
    args = [
        "--config",
        BASE,
        "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor",
    ]
    cli = cli_main([*args, "--trainer.enable_checkpointing=true"], run=False)
    assert sum(isinstance(c, RNGState) for c in cli.trainer.callbacks) == 1
    assert any(type(c).__name__ == "LearningRateMonitor" for c in cli.trainer.callbacks)
    assert any(isinstance(c, ModelCheckpoint) for c in cli.trainer.callbacks)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_atomic_io_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 1

    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpointing.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.setattr(checkpointing.torch, "save", real_save)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]

    # A temporary file left by a killed write is cleaned up by the next save.
    (target.parent / ".last.ckpt.abc123.tmp").write_bytes(b"partial")
    io.save_checkpoint({"step": 3}, target)
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["step"] == 3


def test_rng_state_round_trip_and_restore_point():
    cb = RNGState()
    torch.manual_seed(1)
    state = cb.state_dict()
    expected = torch.rand(3)
    torch.rand(5)  # work done between loading a checkpoint and the first resumed step
    cb.load_state_dict(state)
    torch.rand(5)
    cb.on_train_batch_start(None, None, None, 0)
    assert torch.equal(torch.rand(3), expected)
    cb.on_train_batch_start(None, None, None, 1)  # only the first step after a load restores


def test_lightning_set_epoch_reaches_the_batch_sampler():
    from types import SimpleNamespace

    from lightning.fabric.utilities.data import _set_sampler_epoch

    from mtlkit.data.batching import MultiTaskBatchSampler
    from mtlkit.data.sampling import Proportional

    sampler = MultiTaskBatchSampler(["a", "b"], [8, 8], Proportional(), 2, "mixed", 3)
    epoch0 = [p["indices"] for p in sampler]
    _set_sampler_epoch(SimpleNamespace(batch_sampler=sampler), 1)  # what Lightning calls
    plans = list(sampler)
    assert sampler.epoch == 1 and {p["epoch"] for p in plans} == {1}
    assert [p["indices"] for p in plans] != epoch0
