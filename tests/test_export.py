"""``export_model`` / ``ExportedModel``: an exported model predicts what the trained one does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import WORDS, quiet_trainer, tiny_model, toy_datamodule, toy_task
from torch import nn

from mtlkit.cli import cli_main, main, predict_exported
from mtlkit.data import InMemory
from mtlkit.errors import ConfigError
from mtlkit.export import export_model, read_exported
from mtlkit.inference import ExportedModel
from mtlkit.model import HFEncoder
from mtlkit.tasks import (
    IGNORE_INDEX,
    MultiLabelClassification,
    Regression,
    SequenceClassification,
    TokenClassification,
)
from mtlkit.testing import TINY_ENCODER
from mtlkit.training import MultiTaskModule

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny/tiny.yaml")
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# Whitespace words with several sub-tokens ("johnny" -> john ##n ##y; "paris," -> paris ,), and
# texts of different lengths, so padding and the first-sub-token rule are exercised.
INPUTS = [
    {"text": "johnny went to paris, now", "text_pair": "the city"},
    {"text": "good", "text_pair": "a very sad day in london"},
    {"text": "what is money 42", "text_pair": "yes"},
    {"text": "hate spam call free now very bad movie", "text_pair": "no no"},
    {"text": "xyzzy", "text_pair": "team"},
]


def words(n: int, seed: int) -> list[list[str]]:
    import random

    rng = random.Random(seed)
    return [[rng.choice(WORDS) for _ in range(rng.randint(2, 6))] for _ in range(n)]


def four_tasks() -> list:
    n = 16
    texts = [" ".join(w) for w in words(n, 0)]
    pairs = [" ".join(w) for w in words(n, 1)]
    tokens = words(n, 2)
    tags = [[TAGS[(i + j) % 5] for j in range(len(t))] for i, t in enumerate(tokens)]
    topics = [["sport", "news"][: i % 3] for i in range(n)]
    return [
        SequenceClassification(
            "nli",
            InMemory({"train": {"text": texts, "hyp": pairs, "label": ["yes", "no"] * (n // 2)}}),
            text_pair_column="hyp",
        ),
        Regression(
            "sts",
            InMemory({"train": {"text": texts, "label": [float(i % 5) for i in range(n)]}}),
            target_scale=2.0,
            target_shift=1.5,
        ),
        MultiLabelClassification(
            "topics", InMemory({"train": {"text": texts, "labels": topics}}), threshold=0.45
        ),
        TokenClassification(
            "ner", InMemory({"train": {"tokens": tokens, "tags": tags}}), label_names=TAGS
        ),
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-task model (one task of each type) trained a few steps, and its export."""
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    dm = toy_datamodule(four_tasks(), batch_mode="mixed")
    model = tiny_model(dm.tasks, pooling="cls")
    trainer = quiet_trainer(tmp, max_steps=4, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(model, dm)
    model.eval()
    folder = export_model(model, dm.tokenizer, tmp / "exported")
    return model, dm.tokenizer, ExportedModel.from_folder(folder), folder


def module_outputs(model: MultiTaskModule, tokenizer, name: str) -> tuple[dict, torch.Tensor]:
    """The trained module's sub-batch and logits for INPUTS, tokenized by the task itself."""
    task, n = model.tasks[name], len(INPUTS)
    texts = [i["text"] for i in INPUTS]
    raw = {
        "nli": {"text": texts, "hyp": [i["text_pair"] for i in INPUTS], "label": [0] * n},
        "sts": {"text": texts, "label": [0.0] * n},
        "topics": {"text": texts, "labels": [[]] * n},
        "ner": {
            "tokens": [t.split() for t in texts],
            "tags": [[0] * len(t.split()) for t in texts],
        },
    }[name]
    sub = task.collate(task.tokenize(raw, tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        return sub, model({name: sub})[name]["logits"]


@pytest.mark.parametrize("name", ["nli", "sts", "topics"])
def test_sequence_logits_match_the_module(trained, name):
    model, tokenizer, exported, _ = trained
    _, expected = module_outputs(model, tokenizer, name)
    got = torch.stack(exported.logits(INPUTS, tasks=[name], batch_size=2)[name])
    torch.testing.assert_close(got.reshape(expected.shape), expected, atol=1e-5, rtol=1e-4)


def test_predictions_match_the_module_for_every_task_type(trained):
    model, tokenizer, exported, _ = trained
    out = exported.predict(INPUTS, batch_size=2)
    json.dumps(out)  # JSON-ready
    assert set(out) == {"nli", "sts", "topics", "ner"}

    _, logits = module_outputs(model, tokenizer, "nli")
    names = model.tasks["nli"].label_names
    assert names == ["no", "yes"]
    assert [p["label"] for p in out["nli"]] == [names[i] for i in logits.argmax(-1).tolist()]
    probs = torch.tensor([[p["probabilities"][n] for n in names] for p in out["nli"]])
    torch.testing.assert_close(probs, logits.softmax(-1), atol=1e-5, rtol=1e-4)

    task = model.tasks["sts"]
    _, logits = module_outputs(model, tokenizer, "sts")
    values = torch.tensor([p["value"] for p in out["sts"]])
    expected = task.metric_inputs(logits, torch.zeros(len(INPUTS)))[0]  # on the data's scale
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(values, logits.reshape(-1), atol=1e-3)  # scale and shift undone

    task = model.tasks["topics"]
    _, logits = module_outputs(model, tokenizer, "topics")
    probs = task.metric_inputs(logits, torch.zeros_like(logits))[0]
    names = task.label_names
    assert names == ["news", "sport"]
    got = torch.tensor([[p["probabilities"][n] for n in names] for p in out["topics"]])
    torch.testing.assert_close(got, probs, atol=1e-5, rtol=1e-4)
    chosen = [[n for n, p in zip(names, row, strict=True) if p > 0.45] for row in probs.tolist()]
    assert [p["labels"] for p in out["topics"]] == chosen


def test_token_tags_match_the_module_first_subtoken_rule(trained):
    model, tokenizer, exported, _ = trained
    sub, logits = module_outputs(model, tokenizer, "ner")
    out = exported.predict(INPUTS, tasks=["ner"], batch_size=2)["ner"]
    raw = exported.logits(INPUTS, tasks=["ner"], batch_size=2)["ner"]
    for i, item in enumerate(INPUTS):
        # Training marks exactly each word's first sub-token with a label (the rest -100).
        first = sub["labels"][i] != IGNORE_INDEX
        expected = [TAGS[t] for t in logits[i][first].argmax(-1).tolist()]
        assert out[i] == {"words": item["text"].split(), "tags": expected}
        length = int(sub["attention_mask"][i].sum())
        torch.testing.assert_close(raw[i], logits[i, :length], atol=1e-5, rtol=1e-4)
    assert len(out[0]["words"]) == 5 and first.sum() < sub["attention_mask"][0].sum()


def test_pair_task_needs_pairs_and_unknown_task(trained):
    exported = trained[2]
    with pytest.raises(ValueError, match="task 'nli' takes text pairs"):
        exported.predict(["good movie"], tasks=["nli"])
    assert exported.predict("good movie", tasks=["sts"])["sts"][0]["value"] == pytest.approx(
        exported.predict([("good movie", "ignored")], tasks=["sts"])["sts"][0]["value"]
    )
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]"):
        exported.predict(["good"], tasks=["nope"])


def test_export_folder_layout_and_read_back(trained):
    model, _, _, folder = trained
    meta = json.loads((folder / "mtlkit.json").read_text())
    assert meta["pooling"] == "cls" and meta["version"] == 1
    spec = meta["tasks"]["sts"]
    assert spec["kind"] == "regression" and spec["type"] == "mtlkit.tasks.regression.Regression"
    assert spec["head_state"] == {"target_scale": 2.0, "target_shift": 1.5}
    assert meta["tasks"]["topics"]["threshold"] == 0.45
    assert meta["tasks"]["nli"]["text_pair_column"] == "hyp"
    assert meta["tasks"]["ner"]["level"] == "token"
    assert (folder / "encoder" / "model.safetensors").exists()
    source = read_exported(folder)
    own = model.encoder.model.state_dict()
    assert source.encoder_state.keys() == own.keys()
    assert all(torch.equal(source.encoder_state[k], own[k]) for k in own)
    assert torch.equal(source.heads["ner"]["1.weight"], model.heads["ner"][1].weight)
    assert source.tasks["ner"]["label_names"] == TAGS and source.pooling == "cls"


def test_missing_file_is_named(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained[3], broken)
    (broken / "heads.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no heads.safetensors"):
        ExportedModel.from_folder(broken)
    with pytest.raises(ConfigError, match="has no heads.safetensors"):
        read_exported(broken)


class PerTask(HFEncoder):
    per_task = True


def test_export_refuses_per_task_encoders_and_non_linear_heads(tmp_path, tiny_tokenizer):
    model = MultiTaskModule(PerTask(config=dict(TINY_ENCODER)), [toy_task("a")])
    with pytest.raises(ConfigError, match="cannot export PerTask: it gives each task its own"):
        export_model(model, tiny_tokenizer, tmp_path / "x")
    model = tiny_model([toy_task("a")])
    model.heads["a"] = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="task 'a': its head is not a single linear layer"):
        export_model(model, tiny_tokenizer, tmp_path / "y")
    assert not (tmp_path / "y" / "mtlkit.json").exists()


def test_inference_import_stays_light():
    code = (
        "import sys, mtlkit.inference\n"
        # The plain model (mtlkit.model.multitask) is what ExportedModel runs; the training
        # module (mtlkit.training.module) and the task types stay out.
        "heavy = [m for m in ('lightning', 'datasets', 'torchmetrics', 'mtlkit.training.module',"
        " 'mtlkit.tasks', 'mtlkit.data') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """configs/tiny/tiny.yaml fitted 3 steps, then `mtlkit export` of its checkpoint."""
    tmp = tmp_path_factory.mktemp("cli")
    fast = ["--trainer.max_steps=3", "--trainer.limit_val_batches=0"]
    cli = cli_main(["fit", "--config", TINY, f"--trainer.default_root_dir={tmp}", *fast])
    ckpt = tmp / "tiny.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    main(["export", "--config", TINY, "--ckpt_path", str(ckpt), "--output", str(tmp / "exp")])
    return cli.model.eval(), tmp


def test_cli_export_matches_the_trained_model(cli_export):
    model, tmp = cli_export
    exported = ExportedModel.from_folder(tmp / "exp")
    assert torch.equal(exported.tasks["trec"].weight, model.heads["trec"][1].weight)
    enc = exported.tokenizer(["what is a movie", "who is john"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model({"trec": dict(enc), "sentiment": dict(enc)})
    got = exported.logits(["what is a movie", "who is john"])
    torch.testing.assert_close(torch.stack(got["trec"]), out["trec"]["logits"], atol=1e-5, rtol=0)
    sentiment = torch.stack(got["sentiment"]).reshape(-1)
    torch.testing.assert_close(sentiment, out["sentiment"]["logits"], atol=1e-5, rtol=0)


def test_cli_predict_writes_jsonl(cli_export):
    _, tmp = cli_export
    (tmp / "in.txt").write_text("what is a movie\n\nwho is john\n")
    out = tmp / "preds" / "out.jsonl"
    argv = ["predict", "--model", str(tmp / "exp"), "--input", str(tmp / "in.txt")]
    main([*argv, "--output", str(out), "--tasks", "trec", "--batch_size", "1"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    exported = ExportedModel.from_folder(tmp / "exp")
    expected = exported.predict(["what is a movie", "who is john"], batch_size=1)
    assert [r["text"] for r in rows] == ["what is a movie", "", "who is john"]
    assert rows[1]["predictions"] is None  # a blank line keeps its place
    rows = [rows[0], rows[2]]
    assert [list(r["predictions"]) for r in rows] == [["trec"], ["trec"]]
    assert [r["predictions"]["trec"] for r in rows] == expected["trec"]
    assert rows[0]["predictions"]["trec"]["label"] in {"0", "1", "2"}

    lines = [{"text": "good movie", "text_pair": "yes"}, {"text": "bad film"}]
    (tmp / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    main(
        [
            "predict",
            "--model",
            str(tmp / "exp"),
            "--input",
            str(tmp / "in.jsonl"),
            "--output",
            str(out),
        ]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text_pair"] for r in rows[:1]] == ["yes"] and "text_pair" not in rows[1]
    assert set(rows[1]["predictions"]) == {"trec", "sentiment"}
    assert isinstance(rows[1]["predictions"]["sentiment"]["value"], float)


def test_cli_predict_errors(cli_export, capsys):
    _, tmp = cli_export
    out = str(tmp / "o.jsonl")

    def predict(model: str, input_name: str) -> None:
        main(
            [
                "predict",
                "--model",
                str(tmp / model),
                "--input",
                str(tmp / input_name),
                "--output",
                out,
            ]
        )  # noqa: E501

    def error_line() -> str:  # the console prints mtlkit's message as one line
        return capsys.readouterr().err.splitlines()[0]

    with pytest.raises(SystemExit):
        predict("exp", "nothing.txt")
    assert re.match(r"error: input file .*nothing.txt' does not exist", error_line())
    (tmp / "bad.jsonl").write_text('{"text": "ok"}\n{"label": 1}\n')
    with pytest.raises(SystemExit):
        predict("exp", "bad.jsonl")
    assert re.search(r'line 2 needs a string "text" field', error_line())
    (tmp / "ok.txt").write_text("good\n")
    with pytest.raises(SystemExit):
        predict("missing", "ok.txt")
    assert re.match(r"error: exported model folder .*missing' does not exist", error_line())
    with pytest.raises(SystemExit):
        main(["export", "--config", TINY, "--ckpt_path", str(tmp / "no.ckpt"), "--output", out])
    assert re.match(r"error: checkpoint .* does not exist", error_line())
    with pytest.raises(ConfigError, match="input file .*nothing.txt' does not exist"):
        predict_exported(str(tmp / "exp"), str(tmp / "nothing.txt"), out)  # the Python API


def test_predict_with_config_is_lightning_predict(monkeypatch):
    seen = []
    monkeypatch.setattr("mtlkit.cli.cli_main", lambda args=None, run=True: seen.append(args))
    main(["predict", "--config", "x.yaml", "--ckpt_path", "y.ckpt"])
    main(["fit", "--config", "x.yaml"])
    assert seen == [
        ["predict", "--config", "x.yaml", "--ckpt_path", "y.ckpt"],
        ["fit", "--config", "x.yaml"],
    ]
