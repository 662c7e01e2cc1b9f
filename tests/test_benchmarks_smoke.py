"""Smoke runs of ``benchmarks.throughput`` and ``benchmarks.chinese`` (results in a tmp folder),
plus the Δm% formula on hand-made numbers and the character tokenizer."""

import json

import pytest
from transformers import AutoTokenizer

from benchmarks import chinese, throughput
from benchmarks._chinese_data import SPECIALS, build_char_tokenizer


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLKIT_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


def test_throughput_smoke(results_dir):
    payload = throughput.run("smoke")
    assert json.loads((results_dir / "throughput.json").read_text())["mode"] == "smoke"
    assert "| mtlkit_logged |" in (results_dir / "throughput.md").read_text()
    assert payload["same_batches"] and payload["headline"]["step_time_ratio"] > 0
    head = payload["headline"]
    low, high = head["loop_time_ratio_interval"]
    assert low <= head["loop_time_ratio"] <= high and head["rounds"] == 2
    assert head["target"] in ("met", "not met", "inconclusive")
    assert head["within_target"] == (head["target"] == "met")
    saved = json.loads((results_dir / "throughput.json").read_text())
    assert saved["for_readme"] is False  # a smoke run
    assert (results_dir / "throughput.md").read_text().startswith("Headline (tiny)")
    sides = payload["runs"]["tiny"]["sides"]
    assert list(sides) == throughput.ALL_SIDES
    for side in sides.values():
        assert len(side["rounds"]) == 2
        for r in side["rounds"]:
            # The loop's span holds every step's span: per step it cannot be shorter.
            assert 0 < r["step"] <= r["loop"] and r["cpu"] > 0
        assert side["step"]["tokens_per_s"] > side["step"]["steps_per_s"] > 0
        assert all(ratio > 0 for ratio in side["ratio"].values())
    assert sides["plain"]["ratio"]["step_fastest"] == sides["plain"]["ratio"]["loop_paired"] == 1.0
    grouped, ungrouped = payload["padding"]["grouped"], payload["padding"]["ungrouped"]
    assert grouped["batches"] == ungrouped["batches"] > 0
    for stats in (grouped, ungrouped):
        assert 0 < stats["mean_batch_share"] <= 1 and 0 < stats["overall_share"] <= 1
        assert set(stats["per_task"]) == {"trec", "bbc_topic", "sentiment"}
    assert grouped["overall_share"] > ungrouped["overall_share"]  # real lengths vary
    assert grouped["mean_batch_share"] >= ungrouped["mean_batch_share"]


def test_chinese_smoke(results_dir):
    payload = chinese.run("smoke")
    assert (results_dir / "chinese.md").read_text().startswith("| task |")
    cfg = payload["settings"]
    assert payload["primary_metrics"] == {
        "sentiment": "accuracy",
        "ner": "f1",
        "pos": "token_accuracy",
    }
    assert payload["mtl_steps"] == 3 * cfg["st_steps"]
    assert sum(payload["mtl_expected_steps_per_task"].values()) == pytest.approx(
        3 * cfg["st_steps"]
    )
    assert payload["vocab_size"] > 1000  # thousands of distinct characters, not a stub vocabulary
    assert set(payload["metrics"]) == {"sentiment", "ner", "pos"}
    for task, settings in payload["metrics"].items():
        assert set(settings) == {"single", "multi"}
        for values in settings.values():
            assert payload["primary_metrics"][task] in values
            for metric, stats in values.items():
                assert len(stats["values"]) == cfg["seeds"] and stats["std"] >= 0
                upper = float("inf") if metric == "loss" else 1.0
                assert all(0 <= v <= upper for v in stats["values"]), (task, metric)
    for task, paired in payload["paired_difference"].items():
        assert paired["n"] == cfg["seeds"] and paired["verdict"], task
    deltas = [d for d in payload["delta_percent_per_task"].values() if d is not None]
    if deltas:
        assert payload["delta_m_percent"] == pytest.approx(sum(deltas) / len(deltas))


def test_delta_m_on_hand_made_numbers():
    def run(a, b):
        return {"metrics": {"a": {"acc": a, "loss": 1.0}, "b": {"f1": b, "loss": 1.0}}}

    runs = {"single": [run(0.5, 0.2), run(0.5, 0.0)], "multi": [run(0.6, 0.1), run(0.4, 0.1)]}
    summary = chinese.summarise(runs, {"a": "acc", "b": "f1"})
    # a: 0.5 -> 0.5 (0%); b: 0.1 -> 0.1 (0%) from the means.
    assert summary["delta_percent_per_task"] == pytest.approx({"a": 0.0, "b": 0.0})
    assert summary["delta_m_percent"] == pytest.approx(0.0)
    # Seed 0: a +20%, b -50% -> -15%. Seed 1: a -20%, b undefined (ST 0) -> -20%.
    assert summary["delta_m_percent_per_seed"]["values"] == pytest.approx([-15.0, -20.0])
    assert summary["metrics"]["b"]["multi"]["f1"]["mean"] == pytest.approx(0.1)
    # b's single-task score (0.1) is below the floor: flagged; the paired absolute differences
    # stand beside it: a 0.6 - 0.5 = +0.1, 0.4 - 0.5 = -0.1 (mean 0); b -0.1, +0.1 (mean 0).
    assert summary["below_floor"] == ["b"]
    assert summary["paired_difference"]["a"]["mean"] == pytest.approx(0.0)
    assert summary["paired_difference"]["b"]["verdict"] == "no difference"


def test_char_tokenizer(tmp_path):
    size = build_char_tokenizer(["中国人民", "中国 ２００８", "人民日报"], tmp_path, min_count=2)
    assert size == len(SPECIALS) + len(set("中国人民0"))  # 2 and 8 are seen only once
    tok = AutoTokenizer.from_pretrained(tmp_path)
    enc = tok(["中国", "日报ab"], is_split_into_words=True)
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == [
        "[CLS]", "中", "国", "[UNK]", "[UNK]", "[UNK]", "[UNK]", "[SEP]"
    ]  # fmt: skip
    assert enc.word_ids() == [None, 0, 0, 1, 1, 1, 1, None]
