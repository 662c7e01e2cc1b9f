"""A per-task method's run killed mid-epoch resumes from ``last.ckpt`` like an unbroken run
(test_resume.py's harness: the tiny config, FAMO's mixed batches, a checkpoint every 2 steps)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from test_resume import EPOCHS, STEPS_PER_EPOCH, _fit, _wait

ROOT = Path(__file__).resolve().parents[1]
KILL = 9  # last.ckpt then holds step 8, in the middle of epoch 1
METHODS = {
    "bottleneck_houlsby": [],
    # AdaLoRA's budget shrinks within the run: its allocation state must survive the kill.
    "adalora": [
        f"--model.init_args.encoder.init_args.total_step={STEPS_PER_EPOCH * EPOCHS}",
        "--model.init_args.encoder.init_args.tinit=2",
        "--model.init_args.encoder.init_args.tfinal=7",  # final budget at step 8: the resume point
        "--model.init_args.encoder.init_args.delta_t=1",
        "--model.init_args.encoder.init_args.init_r=4",
        "--model.init_args.encoder.init_args.target_r=2",
    ],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_killed_run_of_a_per_task_method_resumes_exactly(method, tmp_path):
    extra = ["--config", str(ROOT / f"configs/transfer/regimes/{method}.yaml"), *METHODS[method]]
    full, broken = tmp_path / "full", tmp_path / "killed"
    procs = [
        _fit(full, *extra, RECORD=str(full / "record.json")),
        _fit(broken, *extra, RECORD=str(broken / "unused.json"), KILL_AFTER=str(KILL)),
    ]
    (rc, out), (rc_killed, out_killed) = (_wait(p) for p in procs)
    assert rc == 0, out[-4000:]
    assert rc_killed == -signal.SIGKILL, out_killed[-4000:]
    resumed = _fit(broken, *extra, "--ckpt_path", "ckpt/last.ckpt", RECORD=str(broken / "r.json"))
    rc, out = _wait(resumed)
    assert rc == 0, out[-4000:]
    assert "trainable parameters: encoder/trec" in out  # the per-task count line
    a = json.loads((full / "record.json").read_text())
    b = json.loads((broken / "r.json").read_text())
    assert b["global_step"] == a["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert sorted(b["losses"], key=int) == [str(s) for s in range(KILL, a["global_step"] + 1)]
    for step, loss in b["losses"].items():
        assert loss == pytest.approx(a["losses"][step], abs=1e-6, rel=0), f"step {step}"
    # The end states agree: every weight, and AdaLoRA's importance averages and rank patterns.
    ends = [torch.load(d / "ckpt" / "last.ckpt", weights_only=True) for d in (full, broken)]
    assert ends[0]["global_step"] == ends[1]["global_step"] > KILL
    for key, value in ends[0]["state_dict"].items():
        if torch.is_tensor(value):
            torch.testing.assert_close(ends[1]["state_dict"][key], value, atol=1e-6, rtol=0)
    extra = ends[0]["state_dict"].get("encoder._extra_state")
    if extra is not None:
        _assert_same(ends[1]["state_dict"]["encoder._extra_state"], extra, "extra_state")
    val = {k: v for k, v in a["metrics"].items() if k.startswith("val/")}
    assert val
    for key, value in val.items():
        assert b["metrics"][key] == pytest.approx(value, abs=1e-6, rel=0, nan_ok=True), key


def _assert_same(got, expected, where: str) -> None:
    """Nested dicts/lists of tensors, strings, bools: equal (tensors to 1e-6)."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            _assert_same(got[key], expected[key], f"{where}.{key}")
    elif torch.is_tensor(expected):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0, msg=where)
    else:
        assert got == expected, where
