"""``mtlkit predict``: output line i answers input line i; truncated inputs are reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import WORDS, quiet_trainer, tiny_model, toy_datamodule, toy_task

from mtlkit.export import export_model
from mtlkit.inference import ExportedModel

MTLKIT = str(Path(sys.executable).with_name("mtlkit"))
LONG = "good " + " ".join(WORDS[:30])  # more than 8 tokens, fewer than 128


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """Two tasks, one cutting its inputs at 8 tokens, trained one step and exported."""
    tmp = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    dm = toy_datamodule([toy_task("short", max_length=8), toy_task("full", seed=1)])
    model = tiny_model(dm.tasks)
    trainer = quiet_trainer(tmp, max_steps=1, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(model, dm)
    return export_model(model.eval(), dm.tokenizer, tmp / "exported")


def _predict(folder: Path, tmp_path: Path, name: str, text: str):
    (tmp_path / name).write_text(text)
    out = tmp_path / "out.jsonl"
    args = ["predict", "--model", str(folder), "--input", name, "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [MTLKIT, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in out.read_text().splitlines()], result


def test_blank_lines_keep_their_place_and_truncation_is_reported(exported, tmp_path):
    rows, result = _predict(exported, tmp_path, "in.txt", f"good movie\n\n   \n{LONG}\n")
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert [r["text"] for r in rows] == ["good movie", "", "", LONG]
    assert rows[1]["predictions"] is None and rows[2]["predictions"] is None
    assert set(rows[0]["predictions"]) == set(rows[3]["predictions"]) == {"short", "full"}
    assert rows[3]["predictions"]["short"]["truncated"] is True
    assert "truncated" not in rows[3]["predictions"]["full"]
    assert "truncated" not in rows[0]["predictions"]["short"]
    out = result.stdout
    assert (
        "wrote 4 rows to" in out
        and "2 predictions, 2 blank line(s) without one (lines 2, 3)" in out
    )
    assert (
        "warning: task 'short': 1 of 2 input(s) longer than its max_length were truncated "
        "(lines 4)" in result.stderr
    )
    assert "task 'full'" not in result.stderr


def test_jsonl_blank_lines_keep_their_place(exported, tmp_path):
    text = '{"text": "good movie"}\n\n{"text": "bad film"}\n'
    rows, result = _predict(exported, tmp_path, "in.jsonl", text)
    assert [(r["line"], r["text"], r["predictions"] is None) for r in rows] == [
        (1, "good movie", False),
        (2, "", True),
        (3, "bad film", False),
    ]
    assert "warning" not in result.stderr


def test_python_api_marks_truncated_predictions(exported):
    model = ExportedModel.from_folder(exported)
    out = model.predict(["good movie", LONG])
    assert [p.get("truncated", False) for p in out["short"]] == [False, True]
    assert [p.get("truncated", False) for p in out["full"]] == [False, False]
    assert set(out["short"][0]) == {"label", "probabilities"}
