"""``benchmarks.run`` (the English suite: rows, overrides, provenance keys, an end-to-end run on a
tiny encoder), ``benchmarks.suite_report`` (paired comparisons on hand-made numbers) and
``benchmarks.transfer`` (smoke run)."""

import json
import math
from pathlib import Path

import pytest
import yaml

from benchmarks import common, findings, run, suite_report, suite_rows, transfer


def _runs(values: dict[str, list[float]], move: float = 0.5) -> list[dict]:
    """One fake run per seed with the given primary test metric per task."""
    seeds = len(next(iter(values.values())))
    return [
        {
            "seed": s,
            "seconds": 1.0,
            "steps": 10,
            "best_step": 5,
            "max_steps": 10,
            "val_curve": [(5, 0.5), (10, 0.5)],
            "max_weight_move": move,
            "train_sizes": {"trec": 4000, "bbc_topic": 1700, "sentiment": 10000},
            "test": {t: {suite_report.PRIMARY[t]: v[s]} for t, v in values.items()},
        }
        for s in range(seeds)
    ]


SINGLE = {
    "single/trec": _runs({"trec": [0.8, 0.8, 0.8]}),
    "single/bbc_topic": _runs({"bbc_topic": [0.9, 0.9, 0.9]}),
    "single/sentiment": _runs({"sentiment": [0.5, 0.7, 0.6]}),
}


def test_late_gain_by_hand():
    # Best over the run 0.80 (step 80), best by mid-run (steps <= 50) 0.70: +0.10 still to gain.
    curve = [(20, 0.5), (40, 0.7), (60, 0.65), (80, 0.8), (100, 0.75)]
    assert suite_report.late_gain(curve, 100) == pytest.approx(0.10)
    # A plateau by mid-run: nothing gained after it (a later dip does not count).
    assert suite_report.late_gain([(25, 0.6), (50, 0.9), (75, 0.88), (100, 0.9)], 100) == 0.0
    # Early stopping at step 60: the half is step 30.
    assert suite_report.late_gain([(20, 0.4), (40, 0.6), (60, 0.5)], 60) == pytest.approx(0.2)
    assert suite_report.late_gain([(80, 0.5)], 100) is None


def test_paired_comparison_against_single_task_by_hand():
    results = {
        **SINGLE,
        "sampling/t2": _runs(
            {
                "trec": [0.88, 0.72, 0.84],
                "bbc_topic": [0.9, 0.9, 0.9],
                "sentiment": [0.55, 0.7, 0.6],
            }
        ),
    }
    entry = suite_report.summarise(results)["sampling/t2"]
    # Δm% per seed against that seed's baselines: seed 0 (+10% + 0 + 10%) / 3, seed 1 -10% / 3,
    # seed 2 +5% / 3 -> 20/3, -10/3, 5/3; mean 5/3, sd 5, t_{0.975,2} = 4.303.
    dm = entry["vs_single"]["delta_m"]
    half = 4.303 * 5 / math.sqrt(3)
    assert dm["mean"] == pytest.approx(5 / 3)
    assert (dm["low"], dm["high"]) == pytest.approx((5 / 3 - half, 5 / 3 + half), abs=2e-3)
    assert dm["verdict"] == "no difference"
    # Absolute: the mean primary metric minus the single-task rows' mean, per seed:
    # (+0.08 + 0 + 0.05) / 3, -0.08 / 3, +0.04 / 3 -> mean 0.09 / 9.
    absolute = entry["vs_single"]["absolute"]
    assert absolute["mean"] == pytest.approx(0.01)
    assert entry["vs_single"]["below_floor"] == []
    assert entry["tasks"]["trec"][0] == pytest.approx(0.8133333)
    assert "vs_single" not in suite_report.summarise(results)["single/trec"]


def test_budget_check_by_hand():
    # Twice the steps: TREC +0.05, +0.06, +0.04 (mean 0.05, sd 0.01; t_{0.975,2} = 4.303, half
    # width 4.303 * 0.01 / sqrt(3) = 0.0248): still gaining. BBC -0.01, +0.01, 0: plateau.
    results = {
        **SINGLE,
        "budget/trec": _runs({"trec": [0.85, 0.86, 0.84]}, move=0.0),
        "budget/bbc_topic": _runs({"bbc_topic": [0.89, 0.91, 0.9]}, move=0.0),
    }
    summary = suite_report.summarise(results)
    trec = summary["budget/trec"]["vs_budget"]
    assert trec["mean"] == pytest.approx(0.05)
    assert (trec["low"], trec["high"]) == pytest.approx((0.0252, 0.0748), abs=2e-4)
    assert trec["verdict"] == "better"
    assert summary["budget/bbc_topic"]["vs_budget"]["verdict"] == "no difference"
    assert "vs_budget" not in summary["single/trec"]
    # One-task rows: no comparison against single-task and never flagged as still weights.
    assert "vs_single" not in summary["budget/trec"] and not summary["budget/trec"]["weights_still"]
    text = suite_report.markdown(summary, run._settings("default", None, None))
    assert "Still gaining (trec)" in text and "budget/bbc_topic" in text
    del results["budget/trec"]
    text = suite_report.markdown(suite_report.summarise(results), run.MODES["default"])
    assert "No task gains" in text


def test_multi_task_budget_check_by_hand():
    # Equal weighting with twice the steps against its own row, the mean of the three primary
    # metrics per seed: seed 0 (0.03 + 0 + 0) / 3 = 0.01, seed 1 0.02, seed 2 0 -> mean 0.01,
    # sd 0.01, half width 4.303 * 0.01 / sqrt(3) = 0.0248: no difference.
    equal = {"trec": [0.80, 0.80, 0.80], "bbc_topic": [0.9] * 3, "sentiment": [0.6] * 3}
    longer = {"trec": [0.83, 0.86, 0.80], "bbc_topic": [0.9] * 3, "sentiment": [0.6] * 3}
    results = {
        **SINGLE,
        "weighting/equal": _runs(equal, move=0.0),
        "budget/equal": _runs(longer, move=0.0),
    }
    summary = suite_report.summarise(results)
    check = summary["budget/equal"]["vs_budget"]
    assert check["mean"] == pytest.approx(0.01)
    assert (check["low"], check["high"]) == pytest.approx((-0.0148, 0.0348), abs=2e-4)
    assert check["verdict"] == "no difference"
    # A multi-task row: compared with single-task too; its fixed weights are not flagged.
    assert "vs_single" in summary["budget/equal"] and not summary["budget/equal"]["weights_still"]
    text = suite_report.markdown(summary, run._settings("default", None, None))
    assert "Multi-task budget check" in text and "No row gains" in text
    assert "Budget check (`budget/` rows)" not in text  # no single-task budget rows here


def test_patience_counts_the_same_training_per_task_in_every_row(tmp_path):
    settings = run._settings("default", None, None)

    def trainer_args(name: str) -> dict[str, int]:
        args = run.cli_args(run.rows()[name], "default", settings, tmp_path)
        pairs = (a.removeprefix("--trainer.").split("=") for a in args if "=" in a)
        return {k: int(v) for k, v in pairs if k in ("max_steps", "val_check_interval")}

    assert (settings["steps"], settings["eval_every"], settings["task_budget"]) == (
        100,
        25,
        {"trec": 2},
    )
    assert trainer_args("single/bbc_topic") == {"max_steps": 100, "val_check_interval": 25}
    assert trainer_args("single/trec") == {"max_steps": 200, "val_check_interval": 25}
    # Three tasks, one task's batch per step on average: the sum of the single-task budgets,
    # validated about every 3 * 25 steps (80: the divisor of 400 nearest 75).
    for name in ("sampling/t2", "weighting/equal"):
        assert trainer_args(name) == {"max_steps": 400, "val_check_interval": 80}
    # The budget check: the single-task row with twice the steps, validated as often.
    assert trainer_args("budget/trec") == {"max_steps": 400, "val_check_interval": 25}
    assert trainer_args("budget/sentiment") == {"max_steps": 200, "val_check_interval": 25}
    # ... and equal weighting's multi-task row: 800 steps, every 80 (divisors 50, 80, 100).
    assert trainer_args("budget/equal") == {"max_steps": 800, "val_check_interval": 80}
    assert "--data.init_args.batch_mode=mixed" in run.cli_args(
        run.rows()["budget/equal"], "default", settings, tmp_path
    )


def test_rows_start_longest_first_one_process_each(monkeypatch):
    settings = run._settings("default", None, None)
    costs = {n: suite_rows.row_cost(r, settings) for n, r in run.suite_rows("default").items()}
    assert costs["budget/equal"] == 2 * costs["weighting/equal"] == 2 * 1.3 * 400
    assert costs["single/bbc_topic"] == 100 and costs["sampling/t2"] == 400
    order = suite_rows.longest_first(costs)
    assert order[0] == "budget/equal" and sorted(order) == sorted(costs)
    assert [costs[n] for n in order] == sorted(costs.values(), reverse=True)
    assert suite_rows.longest_first({"c": 6, "a": 10, "d": 6, "b": 8}) == ["a", "b", "c", "d"]
    # By hand, 2 processes: a (3 polls) and b (1) start; b ends, c starts; c ends, d starts.
    polls = {"a": 3, "b": 1, "c": 1, "d": 2}
    started, most = [], [0]
    running: set[str] = set()

    class Process:
        def __init__(self, command, env, cwd):
            self.row = command[3].removeprefix("--rows=")
            self.returncode = None
            assert command[1:3] == ["-m", "benchmarks.run"] and env["OMP_NUM_THREADS"] == "1"
            started.append(self.row)
            running.add(self.row)
            most[0] = max(most[0], len(running))

        def poll(self):
            polls[self.row] -= 1
            if polls[self.row] == 0:
                running.discard(self.row)
                self.returncode = 1 if self.row == "c" else 0
            return self.returncode

    monkeypatch.setattr(common.subprocess, "Popen", Process)
    monkeypatch.setattr(common, "POLL_SECONDS", 0)
    with pytest.raises(SystemExit, match=r"rows \['c'\] failed"):
        common.train_in_workers("benchmarks.run", ["a", "b", "c", "d"], 2, ["--no-summary"])
    assert started == ["a", "b", "c", "d"] and most[0] == 2 and not running


def test_validation_interval_divides_the_budget():
    assert suite_rows.val_interval(300, 75) == 75
    assert suite_rows.val_interval(400, 75) == 80  # divisors 50, 80, 100: 80 is nearest
    assert suite_rows.val_interval(100, 30) == 25  # 25 is 5 away, 20 is 10
    assert suite_rows.val_interval(12, 5) == 4  # 4 and 6 tie at 1 away: the smaller
    assert suite_rows.val_interval(7, 3) == 1  # a prime budget: every step


def test_default_mode_skips_the_row_that_repeats_mgda():
    rows, default = run.rows(), run.suite_rows("default")
    assert set(rows) - set(default) == {"weighting/mgda_ub"}
    assert run.suite_rows("full") == rows  # per-parameter gradients: MGDA-UB differs there
    text = suite_report.markdown({}, run._settings("default", None, None))
    assert "weighting/mgda_ub = weighting/mgda" in text


def test_vs_equal_verdict_floor_flag_and_still_weights():
    single = {**SINGLE, "single/bbc_topic": _runs({"bbc_topic": [0.1, 0.1, 0.1]})}
    equal = {"trec": [0.8, 0.8, 0.8], "bbc_topic": [0.1, 0.1, 0.1], "sentiment": [0.5, 0.7, 0.6]}
    better = {
        k: [v + d for v, d in zip(vals, (0.03, 0.04, 0.05), strict=True)]
        for k, vals in equal.items()
    }
    results = {
        **single,
        "weighting/equal": _runs(equal, move=0.0),
        "weighting/dwa": _runs(better, move=0.0),  # a dynamic method whose weights never moved
        "weighting/uncertainty": _runs(equal, move=0.2),
        "weighting/mgda": _runs(better),
        "weighting/mgda_ub": _runs(better),  # the same scores on every seed as mgda
    }
    summary = suite_report.summarise(results)
    # every seed +0.03..+0.05 on each task: the mean primary metric +0.04, interval above 0
    assert summary["weighting/dwa"]["vs_equal"]["mean"] == pytest.approx(0.04)
    assert summary["weighting/dwa"]["vs_equal"]["verdict"] == "better"
    assert summary["weighting/uncertainty"]["vs_equal"]["verdict"] == "no difference"
    assert summary["weighting/dwa"]["weights_still"] is True
    assert summary["weighting/equal"]["weights_still"] is False  # fixed by design
    assert summary["weighting/uncertainty"]["weights_still"] is False
    assert summary["weighting/dwa"]["vs_single"]["below_floor"] == ["bbc_topic"]
    settings = {**run.MODES["default"], "seeds": 3}
    text = suite_report.markdown(summary, settings)
    assert "| weighting/dwa |" in text and "**never moved**" in text
    assert "+0.040 [" in text and "] better" in text
    assert "Δm% is unstable for bbc_topic" in text
    # Identical seed by seed: dwa, mgda and mgda_ub; equal and uncertainty.
    assert summary["weighting/mgda"]["same_as"] == ["weighting/dwa", "weighting/mgda_ub"]
    assert summary["weighting/equal"]["same_as"] == ["weighting/uncertainty"]
    assert "weighting/dwa = weighting/mgda = weighting/mgda_ub" in text
    assert "same_as" not in summary["single/trec"]


def test_findings_verdicts_from_paired_comparisons():
    prop = {"trec": [0.8] * 3, "bbc_topic": [0.60, 0.62, 0.61], "sentiment": [0.6] * 3}
    hot = {**prop, "bbc_topic": [0.70, 0.75, 0.72]}  # bbc_topic: the smallest training set
    equal = {"trec": [0.8] * 3, "bbc_topic": [0.9] * 3, "sentiment": [0.6] * 3}
    noisy = {**equal, "trec": [0.82, 0.78, 0.81]}
    results = {
        "sampling/proportional": _runs(prop),
        "sampling/t2": _runs(hot),
        "weighting/equal": _runs(equal),
        "weighting/famo": _runs(noisy),
    }
    out = findings.check(results)
    assert out["temperature_sampling"]["task"] == "bbc_topic"
    assert out["temperature_sampling"]["status"] == "consistent"
    assert out["equal_weighting"]["status"] == "consistent"
    assert out["equal_weighting"]["better_than_equal"] == []
    text = findings.markdown(out)
    assert "Verdict: **consistent**" in text and "Arivazhagan" in text and "Kurin" in text
    results["weighting/famo"] = _runs({**equal, "trec": [0.85, 0.86, 0.87]})
    assert findings.check(results)["equal_weighting"]["status"] == "contradicted"
    results["sampling/t2"] = _runs({**prop, "bbc_topic": [0.5, 0.52, 0.51]})
    assert findings.check(results)["temperature_sampling"]["status"] == "contradicted"


def test_rows_cover_every_weighting_config_and_sampling():
    rows = run.rows()
    shipped = {p.stem for p in (run.ROOT / "configs" / "weighting").glob("*.yaml")}
    assert {r.split("/")[1] for r in rows if r.startswith("weighting/")} == shipped
    assert {"sampling/proportional", "sampling/uniform", "sampling/t2", "sampling/t5"} <= set(rows)
    assert all(rows[f"weighting/{m}"]["mixed"] for m in shipped)


def test_override_files_select_tasks_cut_lengths_and_layers(tmp_path):
    args = suite_rows._override_files(
        run.rows()["single/bbc_topic"], tmp_path, {"bbc_topic": 64}, "default"
    )
    (tasks_file,) = [a for a in args if a.endswith("tasks.yaml")]
    tasks = yaml.safe_load(Path(tasks_file).read_text())["data"]["init_args"]["tasks"]
    assert [t["init_args"]["name"] for t in tasks] == ["bbc_topic"]
    assert tasks[0]["init_args"]["max_length"] == 64
    (encoder,) = [a for a in args if a.endswith("encoder.yaml")]
    keep = yaml.safe_load(Path(encoder).read_text())["model"]["init_args"]["encoder"]
    assert keep == {"init_args": {"keep_layers": [0, 1, 2], "stack_tasks": False}}
    args = suite_rows._override_files(run.rows()["sampling/t5"], tmp_path, {})
    assert not any(a.endswith("encoder.yaml") for a in args)  # --full: the whole model
    override = yaml.safe_load(Path(args[-1]).read_text())["data"]["init_args"]["sampling"]
    assert override == {
        "class_path": "mtlkit.data.sampling.Temperature",
        "init_args": {"temperature": 5.0},
    }


@pytest.mark.parametrize(
    "method,setting", [("uncertainty", {"lr": 1.0e-2}), ("dwa", {"window_steps": 10})]
)
def test_dynamic_methods_get_their_settings(tmp_path, method, setting):
    args = suite_rows._override_files(run.rows()[f"weighting/{method}"], tmp_path, {}, "full")
    override = yaml.safe_load(Path(args[-1]).read_text())
    assert override == {"model": {"init_args": {"weighting": {"init_args": setting}}}}
    # The row's window is far shorter than the default suite's multi-task budget: many windows.
    if method == "dwa":
        assert run.MODES["default"]["steps"] * 3 // setting["window_steps"] >= 10


def test_cpu_suite_runs_gradient_methods_on_the_representation(tmp_path):
    rows = run.rows()
    assert rows["weighting/pcgrad"]["gradient_on"] == "representation"
    assert "gradient_on" not in rows["weighting/famo"]
    args = suite_rows._override_files(rows["weighting/pcgrad"], tmp_path, {}, "default")
    override = yaml.safe_load(Path(args[-1]).read_text())
    assert override == {
        "model": {"init_args": {"weighting": {"init_args": {"works_on": "representation"}}}}
    }
    full = suite_rows._override_files(rows["weighting/pcgrad"], tmp_path, {}, "full")
    assert not any(a.endswith("gradient_on.yaml") for a in full)


def test_resolved_config_is_the_merged_yaml_without_the_run_folder(tmp_path):
    settings = run._settings("default", None, None)
    args = run.cli_args(run.rows()["weighting/uncertainty"], "default", settings, tmp_path)
    text = run.resolved_config(args, tmp_path)
    config = yaml.safe_load(text)
    assert str(tmp_path) not in text and "<tmp>/checkpoints" in text
    assert config["model"]["init_args"]["weighting"]["init_args"]["lr"] == 1.0e-2
    assert config["model"]["init_args"]["encoder"]["init_args"]["keep_layers"] == [0, 1, 2]
    assert config["model"]["init_args"]["encoder"]["init_args"]["stack_tasks"] is False
    assert config["trainer"]["max_steps"] == 4 * settings["steps"]  # TREC 2x, BBC, sentiment
    assert config["trainer"]["accelerator"] == "cpu"  # --full: auto
    # The CPU budget's learning rates replace the config's 1e-4 / 1e-3; embeddings and the
    # lowest layer frozen.
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 3.0e-4
    assert config["model"]["init_args"]["head_lr"] == 3.0e-3
    assert [c["class_path"].rsplit(".", 1)[1] for c in config["trainer"]["callbacks"]] == [
        "EarlyStopping",
        "ModelCheckpoint",
        "RunRecorder",
        "FreezeLayers",
    ]
    assert config["trainer"]["callbacks"][-1]["init_args"] == {"n": 1, "embeddings": True}
    full = yaml.safe_load(
        run.resolved_config(
            run.cli_args(
                run.rows()["single/trec"], "full", run._settings("full", None, None), tmp_path
            ),
            tmp_path,
        )
    )
    assert full["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 1.0e-4  # the config's
    assert len(full["trainer"]["callbacks"]) == 3


def test_cache_key_changes_with_commit_config_and_settings(monkeypatch):
    state = {"commit": "a" * 40, "dirty": False}
    text = {"value": "model: 1"}
    monkeypatch.setattr(run, "git_state", lambda: dict(state))
    monkeypatch.setattr(run, "resolved_config", lambda args, tmp: text["value"])
    settings = run._settings("default", None, None)
    first = run.row_provenance("weighting/equal", "default", settings)
    assert first["commit"] == "a" * 40 and first["config_hash"] and first["machine"]["python"]
    assert run.row_provenance("weighting/equal", "default", settings)["key"] == first["key"]
    state["commit"] = "b" * 40
    assert run.row_provenance("weighting/equal", "default", settings)["key"] != first["key"]
    state["commit"] = "a" * 40
    text["value"] = "model: 2"
    assert run.row_provenance("weighting/equal", "default", settings)["key"] != first["key"]
    text["value"] = "model: 1"
    state.update(dirty=True, changes="c1")
    dirty = run.row_provenance("weighting/equal", "default", settings)["key"]
    assert dirty != first["key"]
    state["changes"] = "c2"  # another dirty state of the same commit: not the same row
    assert run.row_provenance("weighting/equal", "default", settings)["key"] != dirty
    state.update(dirty=False, changes=None)
    other = run._settings("default", 2, None)
    assert run.row_provenance("weighting/equal", "default", other)["key"] != first["key"]


def test_suite_refuses_a_dirty_tree(monkeypatch):
    from benchmarks import common

    monkeypatch.setattr(common, "git_state", lambda cwd=None: {"commit": "a" * 40, "dirty": True})
    monkeypatch.setattr(run, "mtl_suite", lambda *a, **k: pytest.fail("trained from a dirty tree"))
    with pytest.raises(SystemExit, match="uncommitted changes.*--allow-dirty"):
        run.main(["--only", "mtl", "--rows", "single/trec"])


TINY_BASE = """
seed_everything: 0
trainer: {accelerator: cpu, max_epochs: 1, num_sanity_val_steps: 0}
model:
  class_path: mtlkit.training.MultiTaskModule
  init_args:
    encoder:
      class_path: mtlkit.model.HFEncoder
      init_args:
        config: {model_type: bert, vocab_size: 155, hidden_size: 32, num_hidden_layers: 2,
                 num_attention_heads: 4, intermediate_size: 37, max_position_embeddings: 64}
    head_lr: 1.0e-2
data:
  class_path: mtlkit.data.MultiTaskDataModule
  init_args:
    tokenizer: pkg:mtlkit/testing/tiny_tokenizer
    batch_size: 6
    cache_dir: null
    tasks:
"""


def _tiny_base(path: Path) -> Path:
    """Three toy tasks named like the quickstart's, with distinct train/validation/test texts."""
    words = [
        "what",
        "is",
        "a",
        "movie",
        "who",
        "john",
        "where",
        "paris",
        "news",
        "won",
        "game",
        "city",
        "money",
        "happy",
    ]

    def split(offset: int, labels: list) -> dict:
        n = len(words)
        texts = [f"{words[i % n]} {words[(i * 5 + offset) % n]} {i + offset}" for i in range(24)]
        return {"text": texts, "label": labels}

    def task(cls: str, name: str, labels: list, extra: dict) -> dict:
        splits = {s: split(o, labels) for s, o in (("train", 0), ("validation", 1), ("test", 2))}
        source = {"class_path": "mtlkit.data.InMemory", "init_args": {"splits": splits}}
        init = {"name": name, "source": source, "max_length": 16, **extra}
        return {"class_path": cls, "init_args": init}

    classify = "mtlkit.tasks.SequenceClassification"
    config = yaml.safe_load(TINY_BASE)
    config["data"]["init_args"]["tasks"] = [
        task(classify, "trec", [i % 3 for i in range(24)], {"num_labels": 3}),
        task(classify, "bbc_topic", [i % 2 for i in range(24)], {"num_labels": 2}),
        task("mtlkit.tasks.Regression", "sentiment", [float(i % 5) for i in range(24)], {}),
    ]
    path.write_text(yaml.safe_dump(config))
    return path


def test_suite_end_to_end_on_a_tiny_encoder(tmp_path, monkeypatch):
    """Two rows, two seeds: early stopping and checkpoint selection, test scores, the recorded
    steps and weights, provenance per row, and a report that is not for the README."""
    monkeypatch.setattr(suite_rows, "BASE", _tiny_base(tmp_path / "base.yaml"))
    monkeypatch.setattr(run, "CACHE", tmp_path / "cache")
    monkeypatch.setenv("MTLKIT_RESULTS_DIR", str(tmp_path / "results"))
    smoke = {**run.MODES["full"], "steps": 4, "eval_every": 2, "patience": 1, "seeds": 2}
    monkeypatch.setitem(run.MODES, "smoke", smoke)
    names = ["weighting/equal", "weighting/uncertainty"]
    path = run.mtl_suite("smoke", names, None, None)
    payload = json.loads(path.read_text())
    assert payload["for_readme"] is False  # a partial table
    for name in names:
        row = payload["rows"][name]
        assert len(row["commit"]) == 40 and len(row["config_hash"]) == 16
        assert row["settings"]["steps"] == 4 and row["wall_seconds"] > 0
        for r in payload["runs"][name]:
            assert r["max_steps"] == 12 and 2 <= r["steps"] <= 12
            assert r["best_step"] in [s for s, _ in r["val_curve"]]
            assert set(r["test"]) == {"trec", "bbc_topic", "sentiment"}
            assert r["step_cpu_seconds"] > 0 and r["commit"] == row["commit"]
    weights = payload["runs"]["weighting/uncertainty"][0]["weights"]
    assert weights["sentiment"][0] == [0, 0.5]  # the regression form's 0.5 * exp(-0)
    assert payload["summary"]["weighting/uncertainty"]["max_weight_move"] > 1e-3
    assert payload["summary"]["weighting/equal"]["max_weight_move"] == 0.0
    assert "vs_equal" in payload["summary"]["weighting/uncertainty"]
    assert (path.parent / "mtl_suite_weights.png").stat().st_size > 0
    assert (path.parent / "findings.md").exists()
    # A second call finds both rows cached under the same keys: nothing is trained again.
    monkeypatch.setattr(run, "run_one", lambda *a: pytest.fail("cached row trained again"))
    assert (
        json.loads(run.mtl_suite("smoke", names, None, None).read_text())["runs"] == payload["runs"]
    )


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
    # The parameter-efficient regimes train far fewer parameters than full fine-tuning.
    costs = {r["regime"]: r["trainable_parameters"] for r in payload["runs"]}
    assert all(costs[r] < costs["full"] / 4 for r in transfer.PEFT_CONFIGS)
    assert "| houlsby |" in text and all(r["peak_memory_mb"] >= 0 for r in payload["runs"])
    assert len(payload["source"]["sha256"]) == 64 and payload["source"]["trained_now"]
    assert payload["for_readme"] is False
    # Two seeds: each regime's effect is a paired difference with an interval.
    effect = payload["effects"]["full"]["16"]
    assert effect["n"] == 2 and effect["low"] <= effect["mean"] <= effect["high"]


def test_transfer_effect_is_paired_by_seed():
    def runs(init, values):
        return [
            {"init": init, "regime": "full", "size": 100, "seed": s, "macro_f1": v}
            for s, v in enumerate(values)
        ]

    # Seeds differ a lot (0.5 .. 0.9) but the multi-task start is +0.02 on every seed: paired,
    # the interval is [0.02, 0.02] and the verdict "better" (unpaired stds would say nothing).
    effects = transfer.paired_effects(
        runs("pretrained", [0.5, 0.7, 0.9]) + runs("multitask", [0.52, 0.72, 0.92])
    )
    effect = effects["full"]["100"]
    assert effect["mean"] == pytest.approx(0.02) and effect["verdict"] == "better"
    assert "- full: 100: +0.020 [+0.020, +0.020] (better)" in transfer.verdict(effects)


def test_budget_check_rows_train_only_when_asked_or_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "CACHE", tmp_path)
    monkeypatch.setattr(run, "row_provenance", lambda name, mode, settings: {"key": "k"})
    settings = run._settings("default", None, None)
    every = list(run.suite_rows("default"))
    checks = [n for n in every if n.startswith("budget/")]
    assert checks == ["budget/trec", "budget/bbc_topic", "budget/sentiment", "budget/equal"]
    assert run.default_rows("default", settings, budget_check=True) == every
    plain = run.default_rows("default", settings, budget_check=False)
    assert plain == [n for n in every if n not in checks]
    # A budget row finished earlier under this commit and config is reported again.
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "budget__equal.json").write_text("{}")
    again = run.default_rows("default", settings, budget_check=False)
    assert again == [n for n in every if n not in checks[:3]]


def test_the_table_caption_names_the_encoder_settings():
    assert suite_report.encoder_text(run.MODES["default"]) == (
        "MiniLM-L6 (layers [0, 1, 2]; embeddings and the lowest layer frozen; one encoder pass "
        "per task in mixed batches)"
    )
    assert suite_report.encoder_text(run.MODES["full"]) == "MiniLM-L6"
    assert suite_report.encoder_text({"freeze_embeddings": True, "frozen_layers": 2}) == (
        "MiniLM-L6 (embeddings and the lowest 2 layers frozen)"
    )
    text = suite_report.markdown({}, run._settings("default", None, None))
    assert "MiniLM-L6 (layers [0, 1, 2]; embeddings and the lowest layer frozen;" in text
