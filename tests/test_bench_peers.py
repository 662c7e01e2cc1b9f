"""benchmarks.peers: the step clock, the no-padding workload, the summary's arithmetic against
hand-computed values, and every side taking exactly the asked optimizer steps (the peers where
installed: `bash benchmarks/peers_setup.sh`)."""

import importlib.util

import pytest
import torch

from benchmarks import peers

SMOKE = peers.MODES["smoke"]


def test_step_clock_stamps_every_optimizer_step(monkeypatch):
    ticks = iter([1.0, 1.5, 2.5, 4.0, 6.0])
    monkeypatch.setattr(peers.time, "perf_counter", lambda: next(ticks))
    w = torch.nn.Parameter(torch.ones(2))
    sgd = torch.optim.SGD([w], lr=0.1)
    with peers.StepClock() as clock:
        for _ in range(5):
            w.sum().backward()
            sgd.step()
    sgd.step()  # after the clock: not stamped
    assert clock.times == [1.0, 1.5, 2.5, 4.0, 6.0]
    # from the end of warm-up step 2 (2.5 s / ... 1.5 s) to the end of step 5: (6.0 - 1.5) / 3
    assert clock.per_step(warmup=2, steps=3, side="s") == pytest.approx(1.5)
    assert clock.optimizers == {"SGD(fused=None, foreach=None)"}
    with pytest.raises(RuntimeError, match="s took 5 optimizer steps, not 6"):
        clock.per_step(warmup=2, steps=4, side="s")


def test_workload_needs_no_padding(tmp_path):
    from mtlkit.testing.tiny import save_tiny_encoder

    data = peers.workload(SMOKE)
    size = (SMOKE["warmup"] + SMOKE["steps"]) * SMOKE["batch"]
    assert {n: len(c["text"]) for n, c in data.items()} == dict.fromkeys(peers.LABELS, size)
    tensors = peers._tokenized(data, save_tiny_encoder(tmp_path / "tiny"))
    for name, t in tensors.items():
        assert t["input_ids"].shape == (size, SMOKE["words"] + 2)  # [CLS] words [SEP]
        assert int(t["labels"].max()) < peers.LABELS[name]


def test_summary_by_hand():
    measured = {
        "seconds_per_step": {
            "mtlkit": [0.010, 0.020, 0.012],
            "tasknet": [0.020, 0.030, 0.036],  # ratios 2.0, 1.5, 3.0: median 2.0
            "mtlkit_mixed": [0.030, 0.030, 0.030],
            "libmtl": [0.060, 0.030, 0.045],  # ratios 2.0, 1.0, 1.5: median 1.5
        },
        "optimizers": dict.fromkeys(["mtlkit", "tasknet", "mtlkit_mixed", "libmtl"], ["X"]),
    }
    rows = peers.summarise(measured, {"batch": 16})
    assert rows["mtlkit"]["examples_per_second"] == pytest.approx(16 / 0.012)
    assert rows["libmtl"]["examples_per_second"] == pytest.approx(48 / 0.045)
    assert rows["tasknet"]["time_vs_mtlkit"]["mean"] == pytest.approx(2.0)
    assert rows["libmtl"]["time_vs_mtlkit"]["mean"] == pytest.approx(1.5)
    assert "time_vs_mtlkit" not in rows["mtlkit"] and "plain" not in rows
    payload = {
        "settings": {**SMOKE, "rounds": 3},
        "rows": rows,
        "versions": {"mtlkit": "m", "tasknet": "1.60", "mtlkit_mixed": "m", "libmtl": None},
    }
    text = peers.markdown(payload)
    assert "| homogeneous | tasknet | 1.60 | 533 | 30.0 | 2.00x [" in text
    assert "Not installed, not measured: libmtl." in text


SIDES = ["plain", "mtlkit", "plain_mixed", "mtlkit_mixed"]
SIDES += [s for s, p in peers.PEERS.items() if importlib.util.find_spec(p) is not None]


def test_every_side_takes_exactly_the_steps():
    """Each side's run is timed from its own optimizer steps: a side that took another number
    of steps (or none) would raise in ``per_step``."""
    measured = peers.measure({**SMOKE, "rounds": 1}, SIDES)
    assert set(measured["seconds_per_step"]) == set(SIDES)
    assert all(len(v) == 1 and v[0] > 0 for v in measured["seconds_per_step"].values())
    assert "AdamW(fused=True, foreach=None)" in measured["optimizers"]["mtlkit"]


def test_results_of_a_partial_run_are_not_for_the_readme(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLKIT_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(peers, "available", lambda s: None if s in peers.PEERS else "v")
    monkeypatch.setattr(peers, "MODES", {**peers.MODES, "default": {**SMOKE, "rounds": 1}})
    payload = peers.run("default")
    assert payload["versions"]["tasknet"] is None and "tasknet" not in payload["rows"]
    import json

    assert json.loads((tmp_path / "peers.json").read_text())["for_readme"] is False
