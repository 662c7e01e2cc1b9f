"""Generation from a dialogue context: flat encoding (oldest turns dropped first), row checks, a fit
next to a dialogue classifier, and an export that generates from ``{"turns": [...]}``."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import WORDS, quiet_trainer, tiny_model, toy_datamodule

from mtlkit.data import InMemory
from mtlkit.dialogue import encode_dialogues
from mtlkit.errors import ConfigError, DataError
from mtlkit.tasks import DialogueClassification, Seq2SeqGeneration


def dialogues(n: int, seed: int = 0) -> tuple[list[list[str]], list[str]]:
    """Contexts of 1-3 turns; the reply repeats the last turn's first two words."""
    rng = random.Random(seed)
    contexts, replies = [], []
    for _ in range(n):
        turns = [" ".join(rng.choice(WORDS) for _ in range(3)) for _ in range(rng.randint(1, 3))]
        contexts.append(turns)
        replies.append(" ".join(turns[-1].split()[:2]))
    return contexts, replies


def reply_task(**kw) -> Seq2SeqGeneration:
    c, r = dialogues(40)
    vc, vr = dialogues(8, seed=1)
    splits = {"train": {"context": c, "reply": r}, "validation": {"context": vc, "reply": vr}}
    return Seq2SeqGeneration(
        "reply",
        InMemory(splits),
        text_column="context",
        target_column="reply",
        dialogue=True,
        max_target_length=6,
        **kw,
    )


def test_a_dialogue_source_keeps_the_latest_turns(tiny_tokenizer):
    task = reply_task(max_length=8)
    task.bind_tokenizer(tiny_tokenizer)
    context = [["good movie now", "bad film night", "who is john"]]
    out = task.tokenize({"context": context, "reply": ["who is"]}, tiny_tokenizer)
    vocab = tiny_tokenizer.get_vocab()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    # 8 tokens: [CLS] + the two latest turns cut from the oldest's start, each closed by [SEP].
    expected = [cls, vocab["film"], vocab["night"], sep, vocab["who"], vocab["is"], vocab["john"]]
    assert out["input_ids"] == [[*expected, sep]]
    assert out["input_ids"] == encode_dialogues(tiny_tokenizer, context, 8)["input_ids"]
    assert out["labels"] == [[vocab["who"], vocab["is"], sep]]


def test_a_bad_turns_cell_names_task_split_column_and_row():
    splits = {"train": {"context": [["a b"], [], ["c"]], "reply": ["x", "y", "z"]}}
    task = Seq2SeqGeneration(
        "reply", InMemory(splits), text_column="context", target_column="reply", dialogue=True
    )
    with pytest.raises(DataError, match=r"task 'reply': split 'train' column 'context'.*row 1"):
        task.load()


def test_dialogue_settings_need_a_dialogue_source():
    with pytest.raises(ConfigError, match="set dialogue: true"):
        Seq2SeqGeneration("g", InMemory({"train": {"text": ["a"]}}), max_turns=2)


def test_reply_generation_fits_next_to_response_selection_and_exports(tmp_path):
    from mtlkit.export import export_model
    from mtlkit.inference import ExportedModel

    c, _ = dialogues(40, seed=2)
    labels = [i % 2 for i in range(40)]
    select = DialogueClassification(
        "select", InMemory({"train": {"turns": c, "label": labels}}), num_labels=2
    )
    gen = reply_task(num_beams=2)
    dm = toy_datamodule([gen, select], batch_mode="mixed", steps_per_epoch=4)
    module = tiny_model([gen, select])
    trainer = quiet_trainer(tmp_path, accelerator="cpu", max_steps=4, limit_val_batches=1)
    trainer.fit(module, dm)
    assert {"val/reply/rougeL", "val/reply/bleu", "val/select/accuracy"} <= set(
        trainer.callback_metrics
    )
    module.eval()
    tokenizer = dm.tokenizer
    context = [["good movie now", "who is john"], ["sad day"]]
    batch = encode_dialogues(tokenizer, context, gen.max_length)
    padded = tokenizer.pad(batch, return_tensors="pt")
    with torch.no_grad():
        before = gen.decode(module.model.generate("reply", dict(padded), **gen.generation))
    folder = export_model(module, tokenizer, tmp_path / "exported")
    predicted = ExportedModel.from_folder(folder).predict(
        [{"turns": turns} for turns in context], tasks=["reply"]
    )
    assert [p["text"] for p in predicted["reply"]] == before
