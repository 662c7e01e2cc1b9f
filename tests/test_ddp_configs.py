"""The shipped configs, with the callbacks they ship, run under DDP on 2 CPU processes (gloo).

``tests/test_ddp.py`` drives its own worker; here the real ``mtlkit fit`` command runs each shipped
config that can run on a CPU in seconds: the tiny config, the quickstart's trainer (its logger and
every callback: checkpoints, learning-rate monitor, ``ValidationTable``, gradient diagnostics)
on the tiny encoder and data, and the transfer regimes' callbacks. ``ValidationTable`` used to ask
``trainer.log_dir`` on rank 0 only, a broadcast the other process never joined: the quickstart
crashed at the end of training under DDP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import toy_texts

ROOT = Path(__file__).resolve().parents[1]
MTLKIT = Path(sys.executable).with_name("mtlkit")
TINY = str(ROOT / "configs/tiny/tiny.yaml")
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
FAST = ["--trainer.max_steps=4", "--trainer.limit_val_batches=2"]
#: Every shipped override that runs on CPUs: the transfer regimes and CPU precision (the GPU
#: strategies of configs/scale/ are built, not run, in tests/test_scale_configs.py; the weighting
#: overrides run under DDP in tests/test_ddp.py's worker, built from the same files).
REGIMES = sorted(str(p) for p in (ROOT / "configs/transfer/regimes").glob("*.yaml")) + [
    str(ROOT / "configs/scale/bf16_cpu.yaml")
]


def _data() -> dict:
    """tiny.yaml's tasks with 40 training and 8 validation rows, so that both processes train on
    different rows and validate on several."""
    texts, labels = toy_texts(48)
    trec = {"text": texts, "label": [i % 3 for i in range(48)]}
    sentiment = {"text": texts, "label": [float(v) for v in labels]}
    tasks = [
        ("mtlkit.tasks.SequenceClassification", "trec", trec, {"num_labels": 3}),
        ("mtlkit.tasks.Regression", "sentiment", sentiment, {}),
    ]
    return {
        "data": {
            "init_args": {
                "tasks": [
                    {
                        "class_path": cls,
                        "init_args": {
                            "name": name,
                            **extra,
                            "source": {
                                "class_path": "mtlkit.data.InMemory",
                                "init_args": {
                                    "splits": {
                                        "train": {k: v[:40] for k, v in rows.items()},
                                        "validation": {k: v[40:] for k, v in rows.items()},
                                    }
                                },
                            },
                        },
                    }
                    for cls, name, rows, extra in tasks
                ]
            }
        }
    }


def _quickstart_trainer() -> dict:
    """The quickstart's trainer section (logger and callbacks), with per-step intervals."""
    trainer = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())["trainer"]
    for callback in trainer["callbacks"]:
        args = callback.setdefault("init_args", {})
        for key in ("every_n_train_steps", "every_n_steps"):
            if key in args:
                args[key] = 2
    trainer.update(enable_checkpointing=True, log_every_n_steps=1, max_epochs=None)
    return {"trainer": trainer}


def _fit(
    tmp_path: Path, port: int, *configs: str, data: bool = True
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if data:
        data_file = tmp_path / "tiny_data.yaml"
        data_file.write_text(yaml.safe_dump(_data()))
        configs = (str(data_file), *configs)
    args = [a for c in configs for a in ("--config", c)]
    cmd = [str(MTLKIT), "fit", "--config", TINY, *args, *DDP, *FAST]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_tiny_config_under_ddp(tmp_path):
    proc = _fit(tmp_path, 29601)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_tiny_config_as_shipped_under_ddp(tmp_path):
    """The shipped tiny config itself: its validation splits have one row, so the second
    process has none (it got no validation batch: Lightning refused it, then the first process
    died in a collective). It now runs a padding batch that counts nowhere."""
    proc = _fit(tmp_path, 29606, data=False)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_quickstart_callbacks_under_ddp(tmp_path):
    override = tmp_path / "quickstart_trainer.yaml"
    override.write_text(yaml.safe_dump(_quickstart_trainer()))
    proc = _fit(tmp_path, 29602, str(override))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "val metrics per task" in out and "Run directory: runs/quickstart/version_0" in out
    assert (tmp_path / "runs/quickstart/checkpoints/last.ckpt").is_file()
    assert not list(tmp_path.rglob("*.mtlkit-run.lock"))  # the run folder is released


#: Regimes that refuse several processes by design, with the message each process prints.
REFUSED = {"gradual_unfreeze": "GradualUnfreeze does not work with several processes (DDP)"}


@pytest.mark.parametrize("regime", REGIMES, ids=lambda p: Path(p).stem)
def test_regime_callbacks_under_ddp(tmp_path, regime):
    """Each transfer regime's callback trains under DDP, or stops at once with its own message
    (never a hang or a crash at the end)."""
    port = 29610 + REGIMES.index(regime)
    proc = _fit(tmp_path, port, regime)
    out = proc.stdout + proc.stderr
    refused = REFUSED.get(Path(regime).stem)
    if refused is None:
        assert proc.returncode == 0, out[-4000:]
    else:
        assert proc.returncode != 0 and refused in out, out[-4000:]
