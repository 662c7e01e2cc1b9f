"""Exact resume with a generation task in the mix: a run of configs/tiny/generation.yaml killed
mid-epoch and resumed from ``last.ckpt`` ends like an unbroken one (losses step by step and the
generation metrics of every validation)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_resume import EPOCHS, EVERY, OVERRIDE, STEPS_PER_EPOCH

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/tiny/generation.yaml")
KILL_AFTER = 9  # last.ckpt holds step 8, in the middle of epoch 1 (steps 6-10)


def _fit(folder: Path, *extra: str, **env: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    override = {**OVERRIDE, "trainer": {**OVERRIDE["trainer"], "limit_val_batches": 2}}
    (folder / "override.yaml").write_text(yaml.safe_dump(override))
    full_env = {
        **{k: v for k, v in os.environ.items() if k not in ("KILL_AFTER", "RECORD")},
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    cmd = [sys.executable, "-m", "mtlkit.cli", "fit", "--config", CONFIG]
    cmd += ["--config", "override.yaml", *extra]
    return subprocess.Popen(
        cmd, cwd=folder, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def test_killed_generation_run_resumes_exactly(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "killed"
    procs = [
        _fit(full, RECORD=str(full / "record.json")),
        _fit(broken, RECORD=str(broken / "unused.json"), KILL_AFTER=str(KILL_AFTER)),
    ]
    (rc_full, out_full), (rc_killed, out_killed) = (_wait(p) for p in procs)
    assert rc_full == 0, out_full[-4000:]
    assert rc_killed == -signal.SIGKILL, out_killed[-4000:]
    last = torch.load(broken / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == KILL_AFTER - 1 == 4 * EVERY
    assert last["mtlkit_tasks"]["reverse"]["tokens"]["eos_token_id"] == 3  # [SEP]

    rc, out = _wait(_fit(broken, "--ckpt_path", "ckpt/last.ckpt", RECORD=str(broken / "r.json")))
    assert rc == 0, out[-4000:]
    a = json.loads((full / "record.json").read_text())
    b = json.loads((broken / "r.json").read_text())
    assert a["global_step"] == b["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert sorted(b["losses"], key=int) == [str(s) for s in range(KILL_AFTER, a["global_step"] + 1)]
    for step, loss in b["losses"].items():
        assert b["plans"][step] == a["plans"][step], f"step {step}"
        assert loss == pytest.approx(a["losses"][step], abs=1e-6, rel=0), f"step {step}"
    val = {k: v for k, v in a["metrics"].items() if k.startswith("val/")}
    names = ("bleu", "rouge1", "rouge2", "rougeL", "chrf", "exact_match", "loss")
    assert {f"val/reverse/{n}" for n in names} <= set(val)
    for key, value in val.items():
        assert b["metrics"][key] == pytest.approx(value, abs=1e-6, rel=0), key
