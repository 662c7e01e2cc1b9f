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


def test_jobs_run_in_worker_processes_through_the_command_line(results_dir, monkeypatch):
    """``run(workers=2)`` hands every row-seed job to ``train_in_workers``; each job, run here
    through ``main()``'s command line as a worker process would run it, writes its file, and the
    parent assembles the same payload as the in-process path, decoding speed included."""
    calls = []

    def fake_workers(module, rows, workers, extra):
        calls.append((module, list(rows), workers))
        for row in rows:
            monkeypatch.setattr("sys.argv", ["generation", f"--rows={row}", *extra])
            generation.main()

    monkeypatch.setattr(generation, "train_in_workers", fake_workers)
    payload = json.loads(generation.run("smoke", workers=2).read_text())
    assert calls == [("benchmarks.generation", generation.jobs(generation.MODES["smoke"]), 2)]
    assert {r["seed"] for runs in payload["runs"].values() for r in runs} == {0}
    assert payload["runs"]["replies/multi"][0]["steps"] == 4
    assert set(payload["baselines"]) == {"headlines/lead", "replies/frequent"}
    assert all(d["same_tokens"] for d in payload["decoding"].values())


def test_jobs_list_every_row_and_seed_once():
    jobs = generation.jobs({"seeds": 3})
    assert len(jobs) == len(set(jobs)) == 3 * len(generation.ROWS)
    assert {j.rsplit("@", 1)[0] for j in jobs} == set(generation.ROWS)
