"""A flat dialogue task exported: ``ExportedModel.predict`` and ``mtlkit predict`` read dialogues
(``{"turns": [...], "speakers": [...]}``) and give the trained model's predictions."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import quiet_trainer, tiny_model, toy_datamodule, toy_task

from mtlkit.cli import main, predict_exported
from mtlkit.data import InMemory
from mtlkit.errors import ConfigError
from mtlkit.export import export_model
from mtlkit.inference import ExportedModel
from mtlkit.tasks import DialogueClassification

# the repeated toy dialogues make the carved validation split repeat training rows
pytestmark = pytest.mark.filterwarnings("ignore:.*leakage")

DIALOGUES = [
    {"turns": ["good movie", "bad film", "yes"], "speakers": ["john", "paris", "john"]},
    {"turns": ["no"], "speakers": ["paris"]},
    {  # longer than max_length 16: its oldest turns are dropped
        "turns": ["what a great movie", "good day", "very happy team", "now", "who is john"],
        "speakers": ["a", "b", "a", "b", "a"],
    },
    {"turns": ["love", "hate", "win", "lose", "play", "game"], "speakers": list("ababab")},
]


def _dialogue_task(encoding: str = "flat") -> DialogueClassification:
    turns = [d["turns"] for d in DIALOGUES] * 4
    speakers = [d["speakers"] for d in DIALOGUES] * 4
    source = InMemory({"train": {"turns": turns, "who": speakers, "label": ["x", "y"] * 8}})
    return DialogueClassification(
        "dlg", source, speakers_column="who", encoding=encoding, max_turns=5, max_length=16
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dialogue-export")
    torch.manual_seed(0)
    dm = toy_datamodule([_dialogue_task(), toy_task("txt", n=16)], batch_mode="mixed")
    model = tiny_model(dm.tasks)
    trainer = quiet_trainer(tmp, max_steps=4, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(model, dm)
    model.eval()
    folder = export_model(model, dm.tokenizer, tmp / "exported")
    return model, dm.tokenizer, ExportedModel.from_folder(folder), folder


def _module_logits(model, tokenizer) -> torch.Tensor:
    task = model.tasks["dlg"]
    raw = {
        "turns": [d["turns"] for d in DIALOGUES],
        "who": [d["speakers"] for d in DIALOGUES],
        "label": [0] * len(DIALOGUES),
    }
    sub = task.collate(task.tokenize(raw, tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        return model({"dlg": sub})["dlg"]["logits"]


def test_exported_predictions_match_the_module(trained) -> None:
    model, tokenizer, exported, folder = trained
    meta = json.loads((folder / "mtlkit.json").read_text())
    assert meta["tasks"]["dlg"]["input"] == {
        "type": "dialogue",
        "encoding": "flat",
        "max_turns": 5,
        "speakers": True,
    }
    expected = _module_logits(model, tokenizer)
    got = torch.stack(exported.logits(DIALOGUES, tasks=["dlg"], batch_size=3)["dlg"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    out = exported.predict(DIALOGUES, tasks=["dlg"], batch_size=3)["dlg"]
    names = model.tasks["dlg"].label_names
    assert names == ["x", "y"]
    assert [p["label"] for p in out] == [names[i] for i in expected.argmax(-1).tolist()]
    # the long dialogue lost turns to max_length, the six-turn one to max_turns
    assert [p.get("truncated", False) for p in out] == [False, False, True, True]


def test_dialogue_input_errors(trained) -> None:
    _, _, exported, _ = trained
    with pytest.raises(ValueError, match=r"task 'txt' reads texts, not dialogues \(input\(s\) \[0"):
        exported.predict(DIALOGUES)
    with pytest.raises(ValueError, match="needs 'speakers'"):
        exported.predict([{"turns": ["good", "bad"]}], tasks=["dlg"])
    with pytest.raises(ValueError, match="input 1: every turn must be a non-empty string"):
        exported.predict([DIALOGUES[0], {"turns": ["good", ""]}], tasks=["dlg"])
    with pytest.raises(ValueError, match="input 0: 'speakers' must be a list of one name per turn"):
        exported.predict([{"turns": ["good"], "speakers": ["a", "b"]}], tasks=["dlg"])


def test_mtlkit_predict_reads_dialogue_lines(trained, tmp_path, capsys) -> None:
    model, tokenizer, exported, folder = trained
    lines = [json.dumps(d) for d in DIALOGUES[:2]] + ["", json.dumps(DIALOGUES[2])]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    main(["predict", "--model", str(folder), "--input", str(source), "--output", str(out),
          "--tasks", "dlg"])  # fmt: skip
    assert "wrote 4 rows" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[2]["predictions"] is None
    assert rows[0]["turns"] == DIALOGUES[0]["turns"]
    assert rows[0]["speakers"] == DIALOGUES[0]["speakers"]
    expected = exported.predict([DIALOGUES[i] for i in (0, 1, 2)], tasks=["dlg"])["dlg"]
    assert [rows[i]["predictions"]["dlg"] for i in (0, 1, 3)] == expected
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": "good movie"}\n')
    with pytest.raises(ConfigError, match=r'bad\.jsonl line 1: "turns" must be a non-empty list'):
        predict_exported(str(folder), str(bad), str(tmp_path / "o.jsonl"), ["dlg"])


def test_hierarchical_dialogue_task_is_not_exported(tmp_path) -> None:
    task = _dialogue_task("hierarchical")
    dm = toy_datamodule([task])
    dm.setup("fit")
    model = tiny_model(dm.tasks)
    model.configure_model()
    with pytest.raises(ConfigError, match="hierarchical encoding .* train it with encoding: flat"):
        export_model(model, dm.tokenizer, tmp_path / "exp")
