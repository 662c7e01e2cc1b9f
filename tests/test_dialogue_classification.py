"""DialogueClassification: the flat encoding (exact token ids, truncation keeps the latest turns),
the row checks, and the hierarchical encoding (turn order, masked padding turns, both batch
modes)."""

from __future__ import annotations

import pytest
import torch
from datasets import DatasetDict
from helpers import quiet_trainer, tiny_model, toy_datamodule, toy_task
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from torch import nn
from transformers import PreTrainedTokenizerFast

from mtlkit.data import InMemory
from mtlkit.dialogue import encode_dialogues
from mtlkit.errors import ConfigError, DataError
from mtlkit.model import HFEncoder
from mtlkit.model.multitask import MultiTaskModel, scatter_turns
from mtlkit.model.pooling import pool
from mtlkit.tasks import DialogueClassification
from mtlkit.tasks.dialogue_classification import ContextHead
from mtlkit.testing import TINY_ENCODER
from mtlkit.testing.tiny import tiny_vocab
from mtlkit.transfer import FeatureDataModule
from mtlkit.weighting import GradientWeighting
from mtlkit.weighting.gradient import MGDAUB, UPGrad

# the hand-made splits repeat train as validation
pytestmark = pytest.mark.filterwarnings("ignore:.*leakage")

V = {token: i for i, token in enumerate(tiny_vocab())}
CLS, SEP, COLON = V["[CLS]"], V["[SEP]"], V[":"]
GOOD, MOVIE, BAD, FILM, YES, NO = (V[w] for w in ("good", "movie", "bad", "film", "yes", "no"))
WHAT, A, GREAT, JOHN, PARIS = (V[w] for w in ("what", "a", "great", "john", "paris"))


def _ids(tok, turns, max_length, speakers=None, max_turns=None) -> list[int]:
    speakers = [speakers] if speakers is not None else None
    return encode_dialogues(tok, [turns], max_length, speakers, max_turns)["input_ids"][0]


# ----------------------------------------------------------------------------- flat encoding


def test_flat_joins_turns_with_separators(tiny_tokenizer) -> None:
    turns = ["good movie", "bad film", "yes"]
    expected = [CLS, GOOD, MOVIE, SEP, BAD, FILM, SEP, YES, SEP]
    assert _ids(tiny_tokenizer, turns, 64) == expected
    out = encode_dialogues(tiny_tokenizer, [turns], 64)
    assert out["attention_mask"] == [[1] * 9] and out["token_type_ids"] == [[0] * 9]


def test_flat_truncation_drops_the_oldest_first(tiny_tokenizer) -> None:
    turns = ["good movie", "bad film", "yes"]
    # 8 tokens: the oldest turn keeps only its last token
    assert _ids(tiny_tokenizer, turns, 8) == [CLS, MOVIE, SEP, BAD, FILM, SEP, YES, SEP]
    # 7: no room for a token of it after its separator: dropped whole
    assert _ids(tiny_tokenizer, turns, 7) == [CLS, BAD, FILM, SEP, YES, SEP]
    assert _ids(tiny_tokenizer, turns, 5) == [CLS, FILM, SEP, YES, SEP]
    # the latest turn alone too long: its end survives
    assert _ids(tiny_tokenizer, ["good", "what a great movie"], 4) == [CLS, GREAT, MOVIE, SEP]
    assert _ids(tiny_tokenizer, turns, 64, max_turns=2) == [CLS, BAD, FILM, SEP, YES, SEP]


def test_flat_speaker_markers_survive_truncation(tiny_tokenizer) -> None:
    turns, speakers = ["good movie", "no"], ["john", "paris"]
    full = [CLS, JOHN, COLON, GOOD, MOVIE, SEP, PARIS, COLON, NO, SEP]
    assert _ids(tiny_tokenizer, turns, 64, speakers) == full
    cut = [CLS, JOHN, COLON, MOVIE, SEP, PARIS, COLON, NO, SEP]
    assert _ids(tiny_tokenizer, turns, 9, speakers) == cut
    assert _ids(tiny_tokenizer, turns, 8, speakers) == [CLS, PARIS, COLON, NO, SEP]


def _task(turns, labels, **kw) -> DialogueClassification:
    columns = {"turns": turns, "label": labels}
    if "speakers" in kw:
        columns["speakers"] = kw.pop("speakers")
        kw["speakers_column"] = "speakers"
    kw.setdefault("num_labels", 2)
    return DialogueClassification("dlg", InMemory({"train": columns, "validation": columns}), **kw)


def test_task_tokenizes_with_the_flat_encoding(tiny_tokenizer) -> None:
    task = _task([["good movie", "yes"], ["no"]], [1, 0], max_length=5)
    data: DatasetDict = task.load()
    assert task.num_labels == 2 and task.level == "sequence"
    out = task.tokenize(data["train"][:2], tiny_tokenizer)
    assert out["input_ids"] == [[CLS, MOVIE, SEP, YES, SEP], [CLS, NO, SEP]]
    assert out["labels"] == [1, 0]


# --------------------------------------------------------------------------------- row checks


@pytest.mark.parametrize(
    ("turns", "problem"),
    [
        ([["good"], None, ["yes"]], r"missing or empty dialogue \(no turns\)"),
        ([["good"], [], ["yes"]], r"missing or empty dialogue \(no turns\)"),
        ([["good"], ["yes", " "], ["yes"]], "empty turn"),
        ([["good"], ["yes", None], ["yes"]], "empty turn"),
    ],
)
def test_bad_turn_cells_name_task_split_column_and_row(turns, problem) -> None:
    task = _task(turns, [0, 1, 0])
    with pytest.raises(
        DataError, match=rf"task 'dlg': split 'train' column 'turns': {problem} in row 1$"
    ):
        task.load()


def test_turns_must_be_lists_and_speakers_match() -> None:
    with pytest.raises(DataError, match=r"column 'turns'.* expected a list of turns"):
        _task(["good movie", "no"], [0, 1]).load()
    with pytest.raises(DataError, match=r"column 'turns'.*lists of int64"):
        _task([[1, 2], [3]], [0, 1]).load()
    speakers = [["john", "paris"], ["john"]]
    with pytest.raises(
        DataError, match=r"column 'speakers': 1 speaker\(s\) for 2 turn\(s\) in row 1"
    ):
        _task([["good", "no"], ["yes", "no"]], [0, 1], speakers=speakers).load()


# ---------------------------------------------------------------------------- hierarchical


def test_scatter_turns_lays_rows_out_by_dialogue() -> None:
    vectors = torch.arange(5.0)[:, None].repeat(1, 2)  # five turns, in encoder-row order
    mask = torch.tensor([[True, True, False], [True, True, True]])
    expected = torch.tensor([[[0.0, 0], [1, 1], [0, 0]], [[2, 2], [3, 3], [4, 4]]])
    assert torch.equal(scatter_turns(vectors, mask), expected)


def test_context_head_reads_turns_in_order_and_ignores_padding() -> None:
    torch.manual_seed(0)
    head = ContextHead(4, nn.Linear(4, 2))
    a, b = torch.randn(4), torch.randn(4)
    padded = torch.stack([torch.stack([a, b, torch.randn(4)]), torch.stack([b, a, torch.randn(4)])])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    logits = head(padded, mask)
    # against the GRU run by hand over the real turns only
    gru = head.context
    for row, turns in enumerate(([a, b], [b, a])):
        state = torch.zeros(1, 1, 4)
        for turn in turns:
            _, state = gru(turn[None, None], state)
        assert torch.allclose(logits[row], head.head(state[0, 0]), atol=1e-6)
    assert not torch.allclose(logits[0], logits[1])  # order matters


def test_context_head_learns_a_label_decided_by_order() -> None:
    torch.manual_seed(0)
    head = ContextHead(8, nn.Linear(8, 2))
    x, y = torch.randn(8), torch.randn(8)
    turns = torch.stack([torch.stack([x, y]), torch.stack([y, x])]).repeat(8, 1, 1)
    labels = torch.tensor([1, 0]).repeat(8)
    mask = torch.ones(16, 2, dtype=torch.bool)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(turns, mask), labels).backward()
        optimizer.step()
    assert torch.equal(head(turns, mask).argmax(-1), labels)


def test_hierarchical_collate_and_model_match_turn_by_turn_encoding(tiny_tokenizer) -> None:
    turns = [["good movie", "bad"], ["yes", "no", "what a great film"]]
    task = _task(turns, [0, 1], encoding="hierarchical", max_length=16)
    data = task.load()
    assert task.level == "dialogue" and task.max_turns == 16
    rows = task.tokenize(data["train"][:2], tiny_tokenizer)
    assert rows["input_ids"][0] == [[CLS, GOOD, MOVIE, SEP], [CLS, BAD, SEP]]
    batch = task.collate(rows, pad_token_id=0)
    assert batch["input_ids"].shape == (5, 6)
    assert batch["turn_mask"].tolist() == [[True, True, False], [True, True, True]]

    torch.manual_seed(0)
    encoder = HFEncoder(config=dict(TINY_ENCODER))
    model = MultiTaskModel(encoder, "mean").eval()
    model.add_task("dlg", "dialogue", task.build_head(encoder.hidden_size, 0.0))
    other = {"input_ids": torch.tensor([[CLS, YES, YES, YES, YES, YES, YES, YES, SEP]])}
    other["attention_mask"] = torch.ones_like(other["input_ids"])
    model.add_task("txt", "sequence", nn.Linear(encoder.hidden_size, 2))
    with torch.no_grad():
        out = model({"dlg": batch, "txt": other})  # one encoder pass, wider rows of another task
        for row, dialogue in enumerate(turns):
            vectors = []
            for text in dialogue:
                enc = tiny_tokenizer(text, return_tensors="pt")
                hidden = encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
                vectors.append(pool(hidden, enc["attention_mask"], "mean")[0])
            one = model.heads["dlg"](
                torch.stack(vectors)[None], torch.ones(1, len(vectors), dtype=torch.bool)
            )
            assert torch.allclose(out["dlg"]["logits"][row], one[0], atol=1e-5)
    assert out["dlg"]["features"].shape == (2, 3, encoder.hidden_size)
    assert torch.all(out["dlg"]["features"][0, 2] == 0)


def _order_task(encoding: str, n: int = 24) -> DialogueClassification:
    turns = [["good movie", "bad film"] if i % 2 else ["bad film", "good movie"] for i in range(n)]
    labels = [i % 2 for i in range(n)]
    return DialogueClassification(
        "dlg",
        InMemory({"train": {"turns": turns, "label": labels}}),
        encoding=encoding,
        num_labels=2,
    )


@pytest.mark.parametrize("batch_mode", ["homogeneous", "mixed"])
@pytest.mark.parametrize("encoding", ["hierarchical", "flat"])
def test_fit_with_a_text_task(tmp_path, batch_mode: str, encoding: str) -> None:
    tasks = [_order_task(encoding), toy_task("txt", n=24)]
    dm = toy_datamodule(tasks, batch_mode=batch_mode, steps_per_epoch=3, eval_batch_size=8)
    model = tiny_model(tasks)
    trainer = quiet_trainer(tmp_path, max_epochs=1, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert {"val/dlg/accuracy", "val/txt/accuracy"} <= set(metrics)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_hierarchical_model_learns_a_label_decided_by_turn_order(tmp_path) -> None:
    # the same two turns, swapped: only the order tells the labels apart, so an order-blind
    # context (a mean of turn vectors) stays at chance (0.5)
    turns = [["good movie", "bad film"] if i % 2 else ["bad film", "good movie"] for i in range(32)]
    labels = [i % 2 for i in range(32)]
    splits = {"train": {"turns": turns, "label": labels}}
    splits["validation"] = {"turns": turns[:8], "label": labels[:8]}
    task = DialogueClassification("dlg", InMemory(splits), encoding="hierarchical", num_labels=2)
    dm = toy_datamodule([task], steps_per_epoch=30, batch_size=8, eval_batch_size=8)
    trainer = quiet_trainer(tmp_path, max_epochs=1, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(tiny_model([task], head_lr=1e-2), datamodule=dm)
    assert float(trainer.callback_metrics["val/dlg/accuracy"]) == 1.0


def test_feature_cache_refuses_a_hierarchical_task() -> None:
    with pytest.raises(ConfigError, match=r"task\(s\) \['dlg'\].* use encoding: flat"):
        FeatureDataModule(
            HFEncoder(config=dict(TINY_ENCODER)),
            tasks=[_order_task("hierarchical")],
            tokenizer="pkg:mtlkit/testing/tiny_tokenizer",
        )


@pytest.mark.parametrize("aggregator", [MGDAUB, UPGrad])  # representation rows, parameter rows
def test_fit_under_gradient_weighting(tmp_path, aggregator) -> None:
    tasks = [_order_task("hierarchical"), toy_task("txt", n=24)]
    dm = toy_datamodule(tasks, batch_mode="mixed", steps_per_epoch=2)
    model = tiny_model(tasks, weighting=GradientWeighting(aggregator()))
    trainer = quiet_trainer(tmp_path, max_epochs=1, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    weights = {k: v for k, v in trainer.callback_metrics.items() if k.endswith("/weight")}
    assert set(weights) == {"train/dlg/weight", "train/txt/weight"}
    assert all(torch.isfinite(v) for v in weights.values())


def _tokenizer_without_cls(template: str, **special: str):
    """The tiny vocabulary with another post-processor: ``$A [SEP]`` (T5's ``$A </s>``) or
    ``$A`` (GPT-2), and ``[SEP]`` as the eos token only."""
    tok = Tokenizer(WordPiece(V, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("[SEP]", SEP)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **special)


def test_flat_encoding_uses_each_tokenizers_own_special_tokens() -> None:
    t5_like = _tokenizer_without_cls("$A [SEP]", eos_token="[SEP]", pad_token="[PAD]")
    assert _ids(t5_like, ["good movie", "yes"], 64) == [GOOD, MOVIE, SEP, YES, SEP]
    assert _ids(t5_like, ["good movie", "yes"], 4) == [MOVIE, SEP, YES, SEP]
    gpt2_like = _tokenizer_without_cls("$A", eos_token="[SEP]")
    assert _ids(gpt2_like, ["good movie", "yes"], 64) == [GOOD, MOVIE, SEP, YES]
    with pytest.raises(ConfigError, match="no sep or eos token"):
        _ids(_tokenizer_without_cls("$A"), ["good", "yes"], 64)
