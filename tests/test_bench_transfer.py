"""benchmarks.transfer's run cache: keys, atomic writes, and a stopped call resuming (the
training itself is replaced by a stand-in: what is tested is which runs train again)."""

import json

import pytest

from benchmarks import transfer, update_readme

RUN = {"init": "pretrained", "regime": "full", "size": 100, "steps": 50, "seed": 0}


def test_run_key_names_everything_a_result_depends_on():
    key = transfer.run_key("c" * 40, "default", RUN, "s" * 64)
    assert key == transfer.run_key("c" * 40, "default", dict(RUN), "s" * 64)
    others = [
        transfer.run_key("d" * 40, "default", RUN, "s" * 64),  # another commit
        transfer.run_key("c" * 40, "full", RUN, "s" * 64),  # another mode
        transfer.run_key("c" * 40, "default", {**RUN, "seed": 1}, "s" * 64),
        transfer.run_key("c" * 40, "default", {**RUN, "size": None}, "s" * 64),
        transfer.run_key("c" * 40, "default", {**RUN, "regime": "lora"}, "s" * 64),
        transfer.run_key("c" * 40, "default", RUN, "t" * 64),  # another source checkpoint
    ]
    assert len({key, *others}) == 7


def test_cached_run_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"macro_f1": 0.5}

    first, hit = transfer.cached_run(tmp_path, "k", compute, "c" * 40)
    assert (first, hit) == ({"macro_f1": 0.5, "commit": "c" * 40}, False)
    assert transfer.cached_run(tmp_path, "k", compute, "c" * 40) == (first, True)
    assert len(calls) == 1 and [p.name for p in tmp_path.iterdir()] == ["k.json"]
    transfer.cached_run(None, "k", compute, "c" * 40)  # no cache: always computed
    assert len(calls) == 2


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A clean tree at commit c..c, a fake source, one seed of two sizes, and run_one
    replaced by a counter (it fails on the 3rd run of the first call: a stopped call)."""
    source = tmp_path / "source.ckpt"
    source.write_bytes(b"weights")
    monkeypatch.setenv("MTLKIT_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(transfer, "git_state", lambda: {"commit": "c" * 40, "dirty": False})
    mode = {"sizes": [10, None], "steps": [2, 3], "seeds": 1}
    monkeypatch.setitem(transfer.MODES, "default", mode)
    monkeypatch.setattr(transfer, "plot", lambda *a: None)
    trained = []

    def run_one(init, regime, size, steps, seed, source, smoke):
        trained.append((init, regime, size))
        if trained_limit and len(trained) > trained_limit[0]:
            raise KeyboardInterrupt  # the call is stopped
        return {
            "init": init,
            "regime": regime,
            "size": size,
            "steps": steps,
            "seed": seed,
            "train_examples": size or 40,
            "train_seconds": 1.0,
            "seconds_per_step": 0.1,
            "trainable_parameters": 7,
            "peak_memory_mb": 1.0,
            "macro_f1": 0.5 + 0.01 * len(trained),
            "accuracy": 0.9,
        }

    trained_limit = [2]
    monkeypatch.setattr(transfer, "run_one", run_one)
    return source, trained, trained_limit


def test_a_stopped_call_resumes(tmp_path, stand_in):
    source, trained, limit = stand_in
    cache = tmp_path / "cache"
    regimes = ["full", "frozen"]
    with pytest.raises(KeyboardInterrupt):
        transfer.run("default", source, regimes, cache=cache)
    assert len(list(cache.glob("*.json"))) == 2  # the two runs finished before the stop
    limit.clear()
    path = transfer.run("default", source, regimes, cache=cache)
    # 2 starts x 2 regimes x 2 sizes = 8 runs: 2 cached, 1 interrupted and rerun, 5 new
    assert len(trained) == 3 + 6 and len(list(cache.glob("*.json"))) == 8
    payload = json.loads(path.read_text())
    assert len(payload["runs"]) == 8 and {r["commit"] for r in payload["runs"]} == {"c" * 40}
    transfer.run("default", source, regimes, cache=cache)
    assert len(trained) == 9  # everything cached now


def test_smoke_and_dirty_runs_are_not_cached(tmp_path, stand_in, monkeypatch):
    source, trained, limit = stand_in
    limit.clear()
    cache = tmp_path / "cache"
    monkeypatch.setattr(transfer, "git_state", lambda: {"commit": "c" * 40, "dirty": True})
    transfer.run("default", source, ["full"], cache=cache)
    assert not cache.exists()


def test_readme_refuses_transfer_runs_of_another_commit():
    payload = {"commit": "a", "runs": [{"commit": "a"}, {"commit": "b"}]}
    assert update_readme._commits(payload) == {"a", "b"}


def test_trainable_parameters_are_counted_at_the_end_of_training(tmp_path):
    """Gradual unfreezing has opened every layer by the end of its run, so it trains what full
    fine-tuning trains; the frozen regime trains the head only (Lightning's BaseFinetuning
    re-freezes at trainer.test, so a count taken after testing read 770 for gradual)."""
    counts = {
        regime: transfer.run_one("pretrained", regime, 16, 16, 0, tmp_path / "none", True)[
            "trainable_parameters"
        ]
        for regime in ("full", "gradual", "frozen")
    }
    assert counts["gradual"] == counts["full"]
    assert 0 < counts["frozen"] < counts["full"] // 10
