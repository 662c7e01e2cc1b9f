"""Smoke run of ``benchmarks.generation`` (2 steps per row, 4 test examples, results in a tmp
folder), and its summary and baselines on hand-made values."""

import json

import pytest

from benchmarks import generation


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLKIT_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "results"


def test_generation_smoke(results_dir):
    payload = json.loads(generation.run("smoke").read_text())
    assert set(payload["runs"]) == set(generation.ROWS)
    assert payload["runs"]["headlines/multi"][0]["steps"] == 4  # 2 per task
    assert set(payload["baselines"]) == {"headlines/lead", "replies/frequent"}
    for decoding in payload["decoding"].values():
        assert decoding["same_tokens"] and len(decoding["time_ratio_rounds"]) == 5
    assert (results_dir / "generation.md").read_text().startswith("| row |")


def test_summary_pairs_multi_and_single_by_seed():
    def run(seed, value):
        scores = dict.fromkeys(generation.METRICS, value)
        return {"seed": seed, "test": {"headline": scores}}

    runs = {
        "headlines/single": [run(0, 0.2), run(1, 0.3), run(2, 0.1)],
        "headlines/multi": [run(0, 0.3), run(1, 0.4), run(2, 0.2)],
    }
    summary = generation.summarise(runs)
    assert summary["headlines/single"]["rougeL"]["mean"] == pytest.approx(0.2)
    diff = summary["headlines/multi - single"]["rougeL"]
    # the same +0.1 every seed: a zero-width interval above 0
    assert diff["mean"] == pytest.approx(0.1) and diff["verdict"] == "better"
