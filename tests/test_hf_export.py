"""A task exported as a standalone transformers model gives what mtlkit gives.

The folders are loaded as a transformers user would (``pipeline``, ``AutoModelFor...``), and
their outputs are compared with :class:`~mtlkit.inference.ExportedModel` on the same inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import quiet_trainer, tiny_model, toy_datamodule
from test_export import INPUTS, TAGS, four_tasks
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForSequenceClassification,
    pipeline,
)

import mtlkit.hf_export as hf_export
from mtlkit.cli import cli_main, main
from mtlkit.errors import ConfigError
from mtlkit.export import export_model
from mtlkit.hf_export import export_hf_task, git_commit, push_to_hub
from mtlkit.inference import ExportedModel

ROOT = Path(__file__).resolve().parents[1]


def _export(tmp: Path, pooling: str) -> Path:
    torch.manual_seed(0)
    dm = toy_datamodule(four_tasks(), batch_mode="mixed")
    model = tiny_model(dm.tasks, pooling=pooling)
    trainer = quiet_trainer(tmp, max_steps=4, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(model, dm)
    return export_model(model.eval(), dm.tokenizer, tmp / f"exported-{pooling}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 4-task model with cls pooling (one task of each type), exported, and each task as a
    transformers folder."""
    tmp = tmp_path_factory.mktemp("hf")
    folder = _export(tmp, "cls")
    model = ExportedModel.from_folder(folder)
    hf = {name: export_hf_task(folder, name, tmp / "hf" / name) for name in model.task_names}
    return model, hf


def _pipe(task: str, folder: Path, **kw):
    return pipeline(task, model=str(folder), device="cpu", **kw)


def test_sequence_classification_pair_task_in_the_pipeline(exported):
    model, hf = exported
    config = AutoModelForSequenceClassification.from_pretrained(hf["nli"]).config
    assert config.id2label == {0: "no", 1: "yes"} and config.label2id == {"no": 0, "yes": 1}
    assert config.problem_type == "single_label_classification"
    pipe = _pipe("text-classification", hf["nli"])
    ours = model.predict(INPUTS, tasks=["nli"])["nli"]
    for item, expected in zip(INPUTS, ours, strict=True):
        got = {r["label"]: r["score"] for r in pipe(dict(item), top_k=None)}
        assert got == pytest.approx(expected["probabilities"], abs=1e-5)
        assert max(got, key=got.get) == expected["label"]


def test_regression_gives_the_value_on_the_data_scale(exported):
    model, hf = exported
    config = AutoModelForSequenceClassification.from_pretrained(hf["sts"]).config
    assert config.problem_type == "regression" and config.num_labels == 1
    pipe = _pipe("text-classification", hf["sts"])
    texts = [item["text"] for item in INPUTS]
    got = [pipe(t, top_k=None)[0]["score"] for t in texts]
    values = [p["value"] for p in model.predict(texts, tasks=["sts"])["sts"]]
    assert got == pytest.approx(values, abs=1e-4)
    # target_scale 2.0 and shift 1.5 are folded in: the raw head output differs.
    raw = [float(x.reshape(-1)[0]) for x in model.logits(texts, tasks=["sts"])["sts"]]
    assert got != pytest.approx(raw, abs=1e-2)


def test_multi_label_probabilities(exported):
    model, hf = exported
    config = AutoModelForSequenceClassification.from_pretrained(hf["topics"]).config
    assert config.problem_type == "multi_label_classification"
    pipe = _pipe("text-classification", hf["topics"])
    texts = [item["text"] for item in INPUTS]
    for text, expected in zip(texts, model.predict(texts, tasks=["topics"])["topics"], strict=True):
        got = {r["label"]: r["score"] for r in pipe(text, top_k=None)}  # sigmoid per label
        assert got == pytest.approx(expected["probabilities"], abs=1e-5)


def test_token_classification_tags_every_word_as_mtlkit(exported):
    model, hf = exported
    auto = AutoModelForTokenClassification.from_pretrained(hf["ner"]).eval()
    assert [auto.config.id2label[i] for i in range(len(TAGS))] == TAGS
    texts = [item["text"] for item in INPUTS]
    ours = model.predict(texts, tasks=["ner"])["ner"]
    logits = model.logits(texts, tasks=["ner"])["ner"]
    pipe = _pipe("token-classification", hf["ner"], ignore_labels=[])
    compared = 0
    for text, expected, rows in zip(texts, ours, logits, strict=True):
        enc = model.tokenizer(text.split(), is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            got = auto(**enc).logits[0]
        torch.testing.assert_close(got, rows, atol=1e-5, rtol=1e-4)
        # The pipeline's tag of each word's first sub-token is mtlkit's tag of the word.
        entities = pipe(text)
        firsts = [e["entity"] for e in entities if not e["word"].startswith("##")]
        words = [e["word"] for e in entities if not e["word"].startswith("##")]
        assert len(firsts) >= len(expected["words"])
        if words == [w.lower() for w in expected["words"]]:  # no punctuation split off
            assert firsts == expected["tags"]
            compared += 1
    assert compared >= 2  # "paris," and the out-of-vocabulary "xyzzy" split otherwise


def test_the_classifier_is_the_bert_classes_own(exported):
    _, hf = exported
    config = json.loads((hf["nli"] / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert "auto_map" not in config  # no custom code: plain transformers loads it
    model = BertForSequenceClassification.from_pretrained(hf["nli"])
    torch.testing.assert_close(model.bert.pooler.dense.weight, torch.eye(32) * hf_export.EPS)


def test_a_tanh_that_is_not_near_identity_is_caught(exported, tmp_path, monkeypatch):
    """The check after writing compares the reloaded model's logits with mtlkit's: with the
    pooler's scale at 1 (tanh far from linear), the export refuses."""
    model, _ = exported
    monkeypatch.setattr(hf_export, "EPS", 1.0)
    with pytest.raises(ConfigError, match="gives other outputs in transformers than in mtlkit"):
        export_hf_task(model, "nli", tmp_path / "nli")


def test_mean_pooling_is_one_clear_error(tmp_path):
    folder = _export(tmp_path, "mean")
    with pytest.raises(ConfigError) as err:
        export_hf_task(folder, "nli", tmp_path / "nli")
    assert "pools the tokens by 'mean'" in str(err.value) and "pooling: cls" in str(err.value)
    # Token classification reads every token state: it exports under mean pooling too.
    export_hf_task(folder, "ner", tmp_path / "ner")
    with pytest.raises(ConfigError, match="unknown|the model has"):
        export_hf_task(folder, "nope", tmp_path / "nope")


def test_model_card_and_cli(tmp_path, monkeypatch, capsys):
    """``mtlkit export --hf_task all``: the multi-task folder and one transformers folder per
    task, each with a model card naming tasks, labels, metrics, training data and commit."""
    monkeypatch.chdir(tmp_path)
    override = tmp_path / "cls.yaml"
    override.write_text("model:\n  init_args:\n    pooling: cls\n")
    configs = [str(ROOT / "configs/tiny/tiny.yaml"), str(override)]
    args = ["fit", *[a for c in configs for a in ("--config", c)]]
    cli = cli_main([*args, f"--trainer.default_root_dir={tmp_path}"])
    ckpt = tmp_path / "model.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    stored = torch.load(ckpt, weights_only=True)["mtlkit_metrics"]
    assert "val/trec/accuracy" in stored
    out = tmp_path / "out"
    main(["export", *[a for c in configs for a in ("--config", c)], "--ckpt_path", str(ckpt),
          "--output", str(out), "--hf_task", "all"])  # fmt: skip
    assert sorted(p.name for p in (out / "hf").iterdir()) == ["sentiment", "trec"]
    card = (out / "hf" / "trec" / "README.md").read_text()
    assert "library_name: transformers" in card and "pipeline_tag: text-classification" in card
    assert "| trec | sequence_classification | 0, 1, 2 | InMemory(splits=['train']) |" in card
    accuracy = f"{stored['val/trec/accuracy']:.4f}"
    assert f"| val | trec | accuracy | {accuracy} |" in card
    commit = git_commit()
    assert commit and f"Git commit: `{commit}`" in card
    assert "sentiment" not in card.split("## Tasks")[1]  # this folder serves trec only
    whole = (out / "README.md").read_text()
    assert (
        "| sentiment | regression | - | InMemory(splits=['train']) |" in whole and accuracy in whole
    )
    pipe = _pipe("text-classification", out / "hf" / "trec")
    ours = ExportedModel.from_folder(out).predict(["what is a movie"], tasks=["trec"])["trec"][0]
    assert pipe("what is a movie")[0]["label"] == ours["label"]


def test_push_to_hub_without_token_or_network_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token
    with pytest.raises(ConfigError, match="needs a Hugging Face token"):
        push_to_hub(tmp_path, "someone/model")
    with pytest.raises(ConfigError, match="push_to_hub 'someone/model' failed"):
        push_to_hub(tmp_path, "someone/model", token="hf_fake")  # offline: refused, no traffic
