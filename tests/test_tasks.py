"""Task types: loading, tokenization, collation, losses, metrics and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from mtlkit.data.sources import DataSource, InMemory
from mtlkit.errors import DataError
from mtlkit.metrics import EntityF1, extract_entities, is_bio_scheme
from mtlkit.tasks.base import IGNORE_INDEX
from mtlkit.tasks.multi_label import MultiLabelClassification
from mtlkit.tasks.regression import Regression
from mtlkit.tasks.sequence_classification import SequenceClassification
from mtlkit.tasks.token_classification import TokenClassification

NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


class WithFeatures(DataSource):
    """In-memory splits with explicit features (for ClassLabel columns)."""

    def __init__(self, splits: dict, features: Features) -> None:
        super().__init__()
        self.splits, self.features = splits, features

    def _load(self) -> DatasetDict:
        return DatasetDict(
            {k: Dataset.from_dict(v, features=self.features) for k, v in self.splits.items()}
        )


def tokenize_split(task, data, tokenizer, split="train"):
    return task.tokenize(data[split][:], tokenizer)


def neg_log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return -(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def test_tiny_tokenizer_size(tiny_tokenizer):
    assert len(tiny_tokenizer) == 155


# ------------------------------------------------------------------ sequence classification
def text_source(labels=("pos", "neg", "pos"), val_labels=("neg", "pos"), **extra):
    train = {"text": ["good movie", "bad film", "great day"][: len(labels)], "label": list(labels)}
    val = {"text": ["awful news", "happy team"][: len(val_labels)], "label": list(val_labels)}
    for column, (tr, va) in extra.items():
        train[column], val[column] = tr, va
    return InMemory({"train": train, "validation": val})


def test_sequence_classification_single(tiny_tokenizer):
    task = SequenceClassification("sst", text_source())
    data = task.load()
    assert task.is_ready and task.num_labels == 2 and task.label_names == ["neg", "pos"]
    assert data["train"]["label"][:] == [1, 0, 1]
    out = tokenize_split(task, data, tiny_tokenizer)
    assert out["labels"] == [1, 0, 1]
    assert out["input_ids"][0] == tiny_tokenizer("good movie")["input_ids"]
    batch = task.collate({k: out[k][:2] for k in out}, tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["labels"].tolist() == [1, 0]
    assert task.head_state() == {"num_labels": 2, "label_names": ["neg", "pos"]}


def test_sequence_classification_pair_and_padding(tiny_tokenizer):
    pair = (["the city", "a very sad day"], ["paris"])
    source = text_source(("yes", "no"), ("no",), hyp=pair)
    task = SequenceClassification("nli", source, text_pair_column="hyp")
    data = task.load()
    out = tokenize_split(task, data, tiny_tokenizer)
    # [CLS] good movie [SEP] the city [SEP]  /  [CLS] bad film [SEP] a very sad day [SEP]
    assert out["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1]
    batch = task.collate(out, tiny_tokenizer.pad_token_id)
    width = max(len(x) for x in out["input_ids"])
    assert batch["input_ids"].shape == (2, width)
    pad = width - len(out["input_ids"][0])
    assert (width, pad) == (9, 2)
    assert batch["input_ids"][0, -pad:].tolist() == [tiny_tokenizer.pad_token_id] * pad
    assert batch["attention_mask"][0, -pad:].tolist() == [0] * pad
    assert batch["token_type_ids"][0, -pad:].tolist() == [0] * pad
    assert "hyp" in task.fingerprint()


def test_sequence_classification_loss_and_metrics():
    task = SequenceClassification("sst", text_source(), num_labels=3)
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 1, 2])
    expected = neg_log_softmax(logits)[np.arange(3), labels].mean()
    got = task.loss(torch.tensor(logits), torch.tensor(labels))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    metrics = task.build_metrics()
    preds = torch.tensor([[0.0, 1, 0], [0.0, 0, 1], [0.0, 1, 0], [1.0, 0, 0]])  # 1, 2, 1, 0
    metrics.update(*task.metric_inputs(preds, torch.tensor([1, 2, 2, 0])))
    result = metrics.compute()
    # class 0: f1 1; class 1: tp1 fp1 -> 2/3; class 2: tp1 fn1 -> 2/3
    assert result["accuracy"].item() == pytest.approx(0.75)
    assert result["macro_f1"].item() == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_sequence_classification_errors():
    with pytest.raises(DataError, match=r"task 'sst'.*no column.*'missing'"):
        SequenceClassification("sst", text_source(), label_column="missing").load()
    src = InMemory(
        {
            "train": {"text": ["a", "b"], "label": [0, 2]},
            "validation": {"text": ["a"], "label": [1]},
        }
    )
    with pytest.raises(DataError, match=r"task 'sst'.*label 2 outside \[0, 2\)"):
        SequenceClassification("sst", src, num_labels=2).load()
    with pytest.raises(DataError, match=r"task 'sst'.*labels not seen in train.*'maybe'"):
        SequenceClassification("sst", text_source(val_labels=("maybe", "pos"))).load()
    empty = InMemory(
        {"train": {"text": [], "label": []}, "validation": {"text": ["a"], "label": [0]}}
    )
    with pytest.raises(DataError, match=r"task 'sst'.*'train' is empty"):
        SequenceClassification("sst", empty, num_labels=2).load()
    features = Features({"text": Value("string"), "label": ClassLabel(names=["a", "b"])})
    splits = {s: {"text": ["x", "y"], "label": [0, 1]} for s in ("train", "validation")}
    with pytest.raises(DataError, match=r"task 'sst'.*num_labels=3 disagrees.*2 classes"):
        SequenceClassification("sst", WithFeatures(splits, features), num_labels=3).load()


# ------------------------------------------------------------------- token classification
def ner_source(train_tags=None, val_tags=None, val_tokens=None):
    train_tokens = [["johnny", "went", "to", "paris"], ["the", "town"]]
    train_tags = train_tags or [["B-PER", "O", "O", "B-LOC"], ["O", "I-LOC"]]
    val_tokens = val_tokens or [["johnny", "is", "glad"]]
    val_tags = val_tags or [["B-PER", "O", "O"]]
    return InMemory(
        {
            "train": {"tokens": train_tokens, "tags": train_tags},
            "validation": {"tokens": val_tokens, "tags": val_tags},
        }
    )


def test_token_classification_load_and_align(tiny_tokenizer):
    task = TokenClassification("ner", ner_source())
    assert task.level == "token"
    data = task.load()
    assert task.label_names == ["B-LOC", "B-PER", "I-LOC", "O"]  # sorted tag set of train
    assert task.num_labels == 4 and task.primary_metric == "f1"
    b_loc, b_per, _, o = range(4)
    assert data["train"]["tags"][0] == [b_per, o, o, b_loc]
    out = tokenize_split(task, data, tiny_tokenizer)
    tokens = tiny_tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    assert tokens == [
        "[CLS]",
        "john",
        "##n",
        "##y",
        "w",
        "##e",
        "##n",
        "##t",
        "t",
        "##o",
        "paris",
        "[SEP]",
    ]
    x = IGNORE_INDEX
    assert out["labels"][0] == [x, b_per, x, x, o, x, x, x, o, x, b_loc, x]
    assert out["labels"][1] == [x, o, 2, x, x, x, x]  # [CLS] the t ##o ##w ##n [SEP]
    batch = task.collate(out, tiny_tokenizer.pad_token_id)
    assert batch["labels"].shape == batch["input_ids"].shape == (2, 12)
    assert batch["labels"][1, 7:].tolist() == [x] * 5
    assert batch["input_ids"][1, 7:].tolist() == [tiny_tokenizer.pad_token_id] * 5
    assert batch["attention_mask"][1].tolist() == [1] * 7 + [0] * 5


def test_token_classification_label_all_subtokens(tiny_tokenizer):
    task = TokenClassification("ner", ner_source(), label_names=NER, label_all_subtokens=True)
    data = task.load()
    out = task.tokenize(data["validation"][:], tiny_tokenizer)
    # [CLS] john ##n ##y is g ##l ##a ##d [SEP]: B-PER then I-PER on johnny's sub-tokens
    assert out["labels"][0] == [IGNORE_INDEX, 1, 2, 2, 0, 0, 0, 0, 0, IGNORE_INDEX]
    assert task.align_labels([None, 0, 1, 1, None], [4, 3]) == [IGNORE_INDEX, 4, 3, 4, IGNORE_INDEX]
    assert task.fingerprint() != TokenClassification("ner", ner_source()).fingerprint()


def test_token_classification_loss():
    task = TokenClassification("ner", ner_source(), label_names=NER)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5)).astype(np.float32)
    labels = np.array([[-100, 1, 2, -100], [-100, 0, -100, -100]])
    valid = labels != -100
    nll = neg_log_softmax(logits)
    expected = np.mean([nll[b, t, labels[b, t]] for b, t in np.argwhere(valid)])
    got = task.loss(torch.tensor(logits), torch.tensor(labels))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    none = task.loss(torch.tensor(logits, requires_grad=True), torch.full((2, 4), -100))
    assert none.item() == 0.0 and math.isfinite(none.item()) and none.requires_grad
    head = task.build_head(hidden_size=8, dropout=0.1)
    assert head(torch.zeros(2, 4, 8)).shape == (2, 4, 5)


def one_hot_logits(ids: list[list[int]], num: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), num).float()


def test_entity_metrics_by_hand():
    task = TokenClassification("ner", ner_source(), label_names=NER)
    metrics = task.build_metrics()
    assert set(metrics.keys()) == {"precision", "recall", "f1", "token_accuracy"}
    x = IGNORE_INDEX
    # sentence 1 gold B-PER I-PER O B-LOC -> {PER 0-2, LOC 3-4}; pred B-PER I-PER O O -> {PER}
    # (-100 positions are sub-tokens whose predictions must be ignored)
    gold1 = [[x, 1, x, 2, 0, 3, x]]
    pred1 = [[3, 1, 3, 2, 0, 0, 4]]
    # sentence 2 gold B-LOC O B-PER -> {LOC 0-1, PER 2-3}; pred B-LOC O B-LOC -> {LOC, LOC 2-3}
    gold2 = [[x, 3, 0, 1, x, x, x]]
    pred2 = [[1, 3, 0, 3, 2, 2, 2]]
    for pred, gold in ((pred1, gold1), (pred2, gold2)):
        metrics.update(*task.metric_inputs(one_hot_logits(pred, 5), torch.tensor(gold)))
    result = metrics.compute()
    # tp = 2, predicted = 3, gold = 4; tokens: 3/4 + 2/3 correct
    assert result["precision"].item() == pytest.approx(2 / 3)
    assert result["recall"].item() == pytest.approx(2 / 4)
    assert result["f1"].item() == pytest.approx(2 * 2 / (3 + 4))
    assert result["token_accuracy"].item() == pytest.approx(5 / 7)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_entity_f1_states_and_empty():
    metric = EntityF1(NER, output="f1")
    assert metric.compute().item() == 0.0
    metric.update(torch.tensor([[1, 2, 0]]), torch.tensor([[1, 2, 0]]))
    assert (metric.tp.item(), metric.n_pred.item(), metric.n_gold.item()) == (1, 1, 1)
    assert metric.compute().item() == 1.0
    with pytest.raises(ValueError, match="output"):
        EntityF1(NER, output="accuracy")


@pytest.mark.parametrize(
    ("tags", "entities"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
        (["O", "I-PER", "I-PER"], {("PER", 1, 3)}),  # I- without B- starts an entity
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),  # type change
        (["B-PER", "B-PER", "I-PER"], {("PER", 0, 1), ("PER", 1, 3)}),
        (["S-PER", "B-LOC", "E-LOC", "O"], {("PER", 0, 1), ("LOC", 1, 3)}),  # IOBES
        (["B-MISC", "I-MISC"], {("MISC", 0, 2)}),  # entity running to the end
        (["O", "O"], set()),
        ([], set()),
        (["NN", "B-PER"], {("PER", 1, 2)}),  # tags outside the scheme count as O
    ],
)
def test_extract_entities(tags, entities):
    assert extract_entities(tags) == entities


def test_bio_scheme_detection():
    assert is_bio_scheme(NER)
    assert is_bio_scheme(["O", "S-X", "B-X", "I-X", "E-X"])
    assert not is_bio_scheme(["DT", "NN", "VB"])
    assert not is_bio_scheme(["O"])
    assert not is_bio_scheme(None)


def test_token_classification_pos_fallback():
    src = InMemory(
        {
            "train": {"tokens": [["the", "team", "win"]], "tags": [["DT", "NN", "VB"]]},
            "validation": {"tokens": [["a", "game"]], "tags": [["DT", "NN"]]},
        }
    )
    task = TokenClassification("pos", src)
    task.load()
    assert task.label_names == ["DT", "NN", "VB"]
    assert task.primary_metric == "token_accuracy"
    assert TokenClassification.primary_metric == "f1"
    metrics = task.build_metrics()
    assert set(metrics.keys()) == {"token_accuracy", "macro_f1"}
    x = IGNORE_INDEX
    metrics.update(torch.tensor([[2, 0, 1, 1, 1]]), torch.tensor([[x, 0, 1, 2, 1]]))
    result = metrics.compute()
    # DT: f1 1; NN: tp 2 fp 1 -> 0.8; VB: tp 0 fn 1 -> 0
    assert result["token_accuracy"].item() == pytest.approx(3 / 4)
    assert result["macro_f1"].item() == pytest.approx((1 + 0.8 + 0) / 3)


def test_token_classification_class_label_and_head_state():
    features = Features(
        {"tokens": Sequence(Value("string")), "tags": Sequence(ClassLabel(names=NER))}
    )
    splits = {s: {"tokens": [["john", "is"]], "tags": [[1, 0]]} for s in ("train", "validation")}
    task = TokenClassification("ner", WithFeatures(splits, features))
    task.load()
    assert task.label_names == NER and task.num_labels == 5
    state = task.head_state()
    fresh = TokenClassification("ner", ner_source())
    assert not fresh.is_ready
    fresh.load_head_state(state)
    assert fresh.is_ready and fresh.label_names == NER and fresh.primary_metric == "f1"
    with pytest.raises(DataError, match=r"task 'ner'.*num_labels=4 disagrees.*5 classes"):
        TokenClassification("ner", WithFeatures(splits, features), num_labels=4).load()
    with pytest.raises(DataError, match=r"task 'ner'.*checkpoint has 5 labels"):
        TokenClassification("ner", ner_source(), num_labels=3).load_head_state(state)
    other = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    with pytest.raises(DataError, match=r"task 'ner'.*label_names .* differ from .*ClassLabel"):
        TokenClassification("ner", WithFeatures(splits, features), label_names=other).load()
    with pytest.raises(DataError, match=r"task 'ner'.*num_labels=3 but 5 label_names"):
        TokenClassification("ner", ner_source(), num_labels=3, label_names=NER)


def test_token_classification_errors():
    bad_len = ner_source(
        val_tokens=[["john", "is", "glad"], ["a", "b"]], val_tags=[["B-PER", "O", "O"], ["O"]]
    )
    with pytest.raises(DataError, match=r"task 'ner'.*split 'validation' row 1.*2 tokens.*1 tag"):
        TokenClassification("ner", bad_len).load()
    with pytest.raises(DataError, match=r"task 'ner'.*labels not seen in train.*'B-ORG'"):
        TokenClassification("ner", ner_source(val_tags=[["B-ORG", "O", "O"]])).load()
    ints = ner_source(train_tags=[[1, 0, 0, 3], [0, 4]], val_tags=[[1, 0, 7]])
    with pytest.raises(DataError, match=r"task 'ner'.*set num_labels"):
        TokenClassification("ner", ints).load()
    with pytest.raises(DataError, match=r"task 'ner'.*'validation' has label 7 outside \[0, 5\)"):
        TokenClassification("ner", ints, num_labels=5).load()
    with pytest.raises(DataError, match=r"task 'ner'.*no column.*'labels'"):
        TokenClassification("ner", ner_source(), label_column="labels").load()
    not_list = InMemory(
        {s: {"tokens": ["john is"], "tags": [["B-PER", "O"]]} for s in ("train", "validation")}
    )
    with pytest.raises(DataError, match=r"task 'ner'.*'tokens' must hold one list"):
        TokenClassification("ner", not_list).load()
    empty = InMemory(
        {"train": {"tokens": [], "tags": []}, "validation": {"tokens": [["a"]], "tags": [["O"]]}}
    )
    with pytest.raises(DataError, match=r"task 'ner'.*'train' is empty"):
        TokenClassification("ner", empty).load()


# ------------------------------------------------------------------------------ regression
def sts_source(train_y=(0.5, 4.0, 2.5), val_y=(1.0, 3.0)):
    return InMemory(
        {
            "train": {
                "text": ["good day", "bad night", "the city"][: len(train_y)],
                "score": list(train_y),
            },
            "validation": {"text": ["happy team", "sad news"][: len(val_y)], "score": list(val_y)},
        }
    )


def test_regression_load_tokenize_collate(tiny_tokenizer):
    task = Regression("sts", sts_source(), label_column="score")
    data = task.load()
    out = tokenize_split(task, data, tiny_tokenizer)
    assert out["labels"] == [0.5, 4.0, 2.5]
    batch = task.collate(out, tiny_tokenizer.pad_token_id)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [0.5, 4.0, 2.5]
    head = task.build_head(hidden_size=8, dropout=0.0)
    assert head(torch.zeros(3, 8)).shape == (3,)
    assert Regression("sts", sts_source(), label_column="score", target_shift=1.0).is_ready


def test_regression_loss_and_normalisation():
    task = Regression("sts", sts_source(), label_column="score", target_scale=2.0, target_shift=1.0)
    z = np.array([0.1, -0.5, 1.2], dtype=np.float32)
    y = np.array([2.0, 0.0, 4.0], dtype=np.float32)
    expected = np.mean((z - (y - 1.0) / 2.0) ** 2)
    got = task.loss(torch.tensor(z), torch.tensor(y))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    preds, target = task.metric_inputs(torch.tensor(z), torch.tensor(y))
    assert preds.tolist() == pytest.approx((z * 2.0 + 1.0).tolist())
    assert target.tolist() == y.tolist()
    fresh = Regression("sts", sts_source(), label_column="score")
    fresh.load_head_state(task.head_state())
    assert (fresh.target_scale, fresh.target_shift) == (2.0, 1.0)


def test_regression_metrics():
    task = Regression("sts", sts_source(), label_column="score")
    metrics = task.build_metrics()
    preds = np.array([1.0, 2.5, 2.0, 4.5, 3.0], dtype=np.float32)
    target = np.array([1.5, 2.0, 2.2, 5.0, 2.5], dtype=np.float32)
    metrics.update(*task.metric_inputs(torch.tensor(preds), torch.tensor(target)))
    result = metrics.compute()
    assert result["pearson"].item() == pytest.approx(np.corrcoef(preds, target)[0, 1], rel=1e-5)
    # ranks: preds 1 3 2 5 4, target 1 2 3 5 4 -> sum d^2 = 2 -> 1 - 6*2/(5*(25-1))
    assert result["spearman"].item() == pytest.approx(1 - 6 * 2 / 120, rel=1e-5)
    assert result["mse"].item() == pytest.approx(np.mean((preds - target) ** 2), rel=1e-5)


def test_regression_errors():
    with pytest.raises(DataError, match=r"task 'sts'.*split 'validation' has 1 NaN"):
        Regression("sts", sts_source(val_y=(1.0, float("nan"))), label_column="score").load()
    with pytest.raises(DataError, match=r"task 'sts'.*split 'train' has 2 NaN/inf"):
        Regression("sts", sts_source(train_y=(math.inf, None, 1.0)), label_column="score").load()
    with pytest.raises(DataError, match=r"task 'sts'.*'label' must be numeric"):
        Regression("sts", text_source()).load()
    with pytest.raises(DataError, match=r"task 'sts'.*no column.*'label'"):
        Regression("sts", sts_source()).load()


# -------------------------------------------------------------------------------- multi-label
def topics_source(train_labels=None, val_labels=None):
    train_labels = train_labels or [["sport", "news"], ["money"], []]
    val_labels = val_labels or [["news"], ["money", "sport"]]
    return InMemory(
        {
            "train": {"text": ["win the game", "free money", "the day"], "labels": train_labels},
            "validation": {"text": ["city news", "team market"], "labels": val_labels},
        }
    )


def test_multi_label_from_names(tiny_tokenizer):
    task = MultiLabelClassification("topics", topics_source())
    data = task.load()
    assert task.label_names == ["money", "news", "sport"] and task.num_labels == 3
    out = tokenize_split(task, data, tiny_tokenizer)
    assert out["labels"] == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    batch = task.collate(out, tiny_tokenizer.pad_token_id)
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (3, 3)
    assert task.build_head(8, 0.1)(torch.zeros(2, 8)).shape == (2, 3)


def test_multi_label_from_columns(tiny_tokenizer):
    splits = {
        s: {
            "text": ["win the game", "free money"],
            "sport": [1, 0],
            "money": [0, 1],
            "news": [True, False],
        }
        for s in ("train", "validation")
    }
    task = MultiLabelClassification(
        "topics", InMemory(splits), label_columns=["sport", "money", "news"]
    )
    assert task.is_ready and task.label_names == ["sport", "money", "news"]
    data = task.load()
    out = tokenize_split(task, data, tiny_tokenizer)
    assert out["labels"] == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    with pytest.raises(DataError, match=r"task 'topics'.*num_labels gives 2.*3 label_columns"):
        MultiLabelClassification(
            "topics", InMemory(splits), num_labels=2, label_columns=["sport", "money", "news"]
        )
    splits["validation"]["money"] = [0, 2]
    with pytest.raises(DataError, match=r"task 'topics'.*'validation'.*'money'.*0/1"):
        MultiLabelClassification("topics", InMemory(splits), label_columns=["money"]).load()


def test_multi_label_loss_and_metrics():
    task = MultiLabelClassification("topics", topics_source(), num_labels=3)
    logits = np.array([[2.0, 0.3, -1.0], [-0.7, 1.5, -0.2]], dtype=np.float32)
    target = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    p = 1 / (1 + np.exp(-logits))
    expected = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
    got = task.loss(torch.tensor(logits), torch.tensor(target))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    metrics = task.build_metrics()
    metrics.update(*task.metric_inputs(torch.tensor(logits), torch.tensor(target)))
    result = metrics.compute()
    # predicted [[1,1,0],[0,1,0]]: label0 f1 1; label1 tp1 fp1 -> 2/3; label2 fn1 -> 0
    assert result["macro_f1"].item() == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert result["micro_f1"].item() == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    strict = MultiLabelClassification("topics", topics_source(), num_labels=3, threshold=0.8)
    metrics = strict.build_metrics()  # only sigmoid(2.0)=0.88 and sigmoid(1.5)=0.82 pass
    metrics.update(*strict.metric_inputs(torch.tensor(logits), torch.tensor(target)))
    assert metrics.compute()["micro_f1"].item() == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))


def test_multi_label_errors():
    with pytest.raises(DataError, match=r"task 'topics'.*labels not seen in train.*'weather'"):
        MultiLabelClassification("topics", topics_source(val_labels=[["weather"], []])).load()
    ints = topics_source(train_labels=[[0, 2], [1], []], val_labels=[[3], []])
    with pytest.raises(DataError, match=r"task 'topics'.*set num_labels"):
        MultiLabelClassification("topics", ints).load()
    with pytest.raises(DataError, match=r"task 'topics'.*label 3 outside \[0, 3\)"):
        MultiLabelClassification("topics", ints, num_labels=3).load()
    features = Features({"text": Value("string"), "labels": Sequence(ClassLabel(names=["a", "b"]))})
    splits = {s: {"text": ["x"], "labels": [[0, 1]]} for s in ("train", "validation")}
    with pytest.raises(DataError, match=r"task 'topics'.*num_labels=3 disagrees"):
        MultiLabelClassification("topics", WithFeatures(splits, features), num_labels=3).load()
    single = InMemory({s: {"text": ["x"], "labels": [1]} for s in ("train", "validation")})
    with pytest.raises(DataError, match=r"task 'topics'.*list of labels.*label_columns"):
        MultiLabelClassification("topics", single, num_labels=2).load()
    with pytest.raises(DataError, match=r"task 'topics'.*no column.*'tags'"):
        MultiLabelClassification("topics", topics_source(), label_column="tags").load()
