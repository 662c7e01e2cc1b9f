"""``benchmarks.run`` (the English suite's bookkeeping) and ``benchmarks.transfer`` (smoke run)."""

import json
from pathlib import Path

import pytest
import yaml

from benchmarks import run, transfer


def _runs(values: dict[str, list[float]]) -> list[dict]:
    """One fake run per seed with the given primary metric per task."""
    seeds = len(next(iter(values.values())))
    return [
        {"seconds": 1.0, "val": {t: {run.PRIMARY[t]: v[s]} for t, v in values.items()}}
        for s in range(seeds)
    ]


def test_delta_m_against_hand_computation():
    results = {
        "single/trec": _runs({"trec": [0.8, 0.8]}),
        "single/bbc_topic": _runs({"bbc_topic": [0.9, 0.9]}),
        "single/sentiment": _runs({"sentiment": [0.5, 0.7]}),  # mean 0.6
        "sampling/t2": _runs(
            {"trec": [0.88, 0.72], "bbc_topic": [0.9, 0.9], "sentiment": [0.66, 0.6]}
        ),
    }
    summary = run.summarise(results)
    # seed 0: (+10% + 0% + 10%) / 3; seed 1: (-10% + 0% + 0%) / 3
    d0, d1 = 20 / 3, -10 / 3
    mean, std = summary["sampling/t2"]["delta_m"]
    assert mean == pytest.approx((d0 + d1) / 2)
    assert std == pytest.approx(abs(d0 - d1) / 2**0.5)
    assert summary["sampling/t2"]["tasks"]["trec"][0] == pytest.approx(0.8)
    assert "delta_m" not in summary["single/trec"]
    text = run.markdown(summary, {"steps": 30, "seeds": 2, "max_eval": 200, "max_length": {}})
    assert "| sampling/t2 |" in text and f"{mean:.2f} ± {std:.2f}" in text


def test_rows_cover_every_weighting_config_and_sampling():
    rows = run.rows()
    shipped = {p.stem for p in (run.ROOT / "configs" / "weighting").glob("*.yaml")}
    assert {r.split("/")[1] for r in rows if r.startswith("weighting/")} == shipped
    assert {"sampling/proportional", "sampling/uniform", "sampling/t2", "sampling/t5"} <= set(rows)
    assert all(rows[f"weighting/{m}"]["mixed"] for m in shipped)


def test_override_files_select_tasks_and_cut_lengths(tmp_path):
    args = run._override_files(run.rows()["single/bbc_topic"], tmp_path, {"bbc_topic": 64})
    (tasks_file,) = [a for a in args if a.endswith("tasks.yaml")]
    tasks = yaml.safe_load(Path(tasks_file).read_text())["data"]["init_args"]["tasks"]
    assert [t["init_args"]["name"] for t in tasks] == ["bbc_topic"]
    assert tasks[0]["init_args"]["max_length"] == 64
    args = run._override_files(run.rows()["sampling/t5"], tmp_path, {})
    override = yaml.safe_load(Path(args[-1]).read_text())["data"]["init_args"]["sampling"]
    assert override == {
        "class_path": "mtlkit.data.sampling.Temperature",
        "init_args": {"temperature": 5.0},
    }


def test_transfer_smoke(tmp_path, monkeypatch):
    """Every start and regime of the transfer benchmark runs (tiny encoder, toy data)."""
    monkeypatch.setenv("MTLKIT_RESULTS_DIR", str(tmp_path / "results"))
    path = transfer.run("smoke", source=tmp_path / "missing.ckpt")
    payload = json.loads(path.read_text())
    assert {(r["init"], r["regime"]) for r in payload["runs"]} == {
        (i, r) for i in transfer.INITS for r in transfer.REGIMES
    }
    assert all(0 <= r["macro_f1"] <= 1 for r in payload["runs"])
    assert set(payload["summary"]) == {f"{i}/{r}" for i in transfer.INITS for r in transfer.REGIMES}
    text = (tmp_path / "results" / "transfer_smoke.md").read_text()
    assert "| multitask/lora |" in text and "- gradual:" in text


def test_cpu_suite_runs_gradient_methods_on_the_representation(tmp_path):
    rows = run.rows()
    assert rows["weighting/pcgrad"]["gradient_on"] == "representation"
    assert "gradient_on" not in rows["weighting/famo"]
    args = run._override_files(
        rows["weighting/pcgrad"], tmp_path, run.MODES["default"]["max_length"]
    )
    override = yaml.safe_load(Path(args[-1]).read_text())
    assert override == {
        "model": {"init_args": {"weighting": {"init_args": {"works_on": "representation"}}}}
    }
    full = run._override_files(rows["weighting/pcgrad"], tmp_path, run.MODES["full"]["max_length"])
    assert not any(a.endswith("gradient_on.yaml") for a in full)
