"""benchmarks.suite_check: the whole-model mode's config, the reference file's checks, and the
comparison of verdicts on hand-made runs."""

import json

import pytest
import yaml

from benchmarks import run, suite_check


def _runs(values: dict[str, list[float]]) -> list[dict]:
    return [
        {
            "seed": s,
            "steps": 10,
            "best_step": 10,
            "max_steps": 10,
            "max_weight_move": 0.5,
            "seconds": 1.0,
            "val_curve": [(5, 0.5), (10, 0.6)],
            "train_sizes": {"trec": 4000, "bbc_topic": 1700, "sentiment": 10000},
            "test": {
                t: {"pearson" if t == "sentiment" else "accuracy": v[s]} for t, v in values.items()
            },
        }
        for s in range(len(next(iter(values.values()))))
    ]


SINGLE = {
    "single/trec": _runs({"trec": [0.80, 0.80, 0.80]}),
    "single/bbc_topic": _runs({"bbc_topic": [0.90, 0.90, 0.90]}),
    "single/sentiment": _runs({"sentiment": [0.60, 0.60, 0.60]}),
}
EQUAL = {"trec": [0.85, 0.86, 0.87], "bbc_topic": [0.92, 0.93, 0.94], "sentiment": [0.7] * 3}


def test_whole_mode_is_the_cpu_suite_on_the_whole_encoder(tmp_path):
    settings = run._settings("whole", None, None)
    assert settings["seeds"] == 3 and settings["steps"] == run.MODES["default"]["steps"]
    args = run.cli_args(run.rows()["weighting/pcgrad"], "whole", settings, tmp_path)
    config = yaml.safe_load(run.resolved_config(args, tmp_path))
    assert config["model"]["init_args"]["encoder"]["init_args"].get("keep_layers") is None
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 3.0e-4
    assert "FreezeLayers" not in {
        c["class_path"].split(".")[-1] for c in config["trainer"]["callbacks"]
    }
    works_on = config["model"]["init_args"]["weighting"]["init_args"]["works_on"]
    assert works_on == "representation"  # as the CPU suite


def test_verdicts_that_agree_and_differ_by_hand():
    # CPU side: equal beats single by +0.06 on every seed (better); famo is below equal on every
    # seed (worse). Whole side: famo within noise of equal (no difference).
    cpu = {
        **SINGLE,
        "weighting/equal": _runs(EQUAL),
        "weighting/famo": _runs({**EQUAL, "trec": [0.80, 0.81, 0.82]}),
    }
    whole = {
        **SINGLE,
        "weighting/equal": _runs(EQUAL),
        "weighting/famo": _runs({**EQUAL, "trec": [0.88, 0.84, 0.87]}),
    }
    result = suite_check.compare(cpu, whole)
    assert result["rows"]["cpu"]["weighting/famo"]["vs_equal"]["verdict"] == "worse"
    assert result["rows"]["whole"]["weighting/famo"]["vs_equal"]["verdict"] == "no difference"
    assert result["agree"] == {
        "weighting/equal vs_single": True,
        "weighting/famo vs_single": True,
        "weighting/famo vs_equal": False,
    }
    text = suite_check.markdown(result, 3)
    assert "Verdicts that agree: 2 of 3; they differ for weighting/famo vs_equal." in text


def test_reference_file_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(suite_check, "library_changes", lambda a, b: [])
    path = tmp_path / "mtl_suite.json"
    payload = {
        "commit": "c" * 40,
        "dirty": False,
        "for_readme": True,
        "mode": "default",
        "runs": {"single/trec": _runs({"trec": [0.8, 0.7, 0.9, 0.6]})},
    }
    path.write_text(json.dumps(payload))
    runs, commit = suite_check.reference(path, ["single/trec"], {0, 1, 2})
    assert commit == "c" * 40 and [r["seed"] for r in runs["single/trec"]] == [0, 1, 2]
    with pytest.raises(SystemExit, match="lacks seeds"):
        suite_check.reference(path, ["single/trec"], {0, 5})
    with pytest.raises(SystemExit, match="lacks seeds"):
        suite_check.reference(path, ["weighting/equal"], {0})
    for change, message in (
        ({"dirty": True}, "dirty"),
        ({"for_readme": False}, "partial"),
        ({"mode": "full"}, "not the default"),
    ):
        path.write_text(json.dumps({**payload, **change}))
        with pytest.raises(SystemExit, match=message):
            suite_check.reference(path, ["single/trec"], {0})
    path.write_text(json.dumps(payload))
    monkeypatch.setattr(suite_check, "library_changes", lambda a, b: ["mtlkit/optim.py"])
    with pytest.raises(SystemExit, match="library changed"):
        suite_check.reference(path, ["single/trec"], {0})
    with pytest.raises(SystemExit, match="no default-mode suite"):
        suite_check.reference(tmp_path / "missing.json", ["single/trec"], {0})
