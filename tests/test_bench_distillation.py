"""Smoke run of ``benchmarks.distillation`` (stand-in teacher, 2 steps, results in a tmp folder)."""

import json

import pytest

from benchmarks import distillation


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLKIT_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "results"


def test_distillation_smoke(results_dir, tmp_path):
    path = distillation.run("smoke", teacher=tmp_path / "absent.ckpt")
    payload = json.loads(path.read_text())
    assert [r["variant"] for r in payload["runs"]] == ["labels", "logits", "logits+layers"]
    assert all(r["steps"] == 2 for r in payload["runs"])
    assert payload["student_parameters"] < payload["teacher_parameters"]
    assert len(payload["speed_ratio_rounds"]) == 5
    assert set(payload["teacher_test"]) == {"trec", "bbc_topic", "sentiment"}
    table = (results_dir / "distillation.md").read_text()
    assert table.startswith("| student |") and "logits+layers" in table


def test_summary_is_the_fraction_of_the_teachers_metric():
    runs = [{"variant": "logits", "seed": s, "test": {"a": v}} for s, v in enumerate([0.4, 0.6])]
    summary = distillation.summarise(runs, {"a": 0.8})
    assert summary["logits"]["a"]["mean"] == pytest.approx(0.625)
    assert summary["logits"]["a"]["std"] == pytest.approx(0.1767767, rel=1e-6)
