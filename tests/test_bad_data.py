"""Users' own files, as a new user writes them: each case is read correctly, or stops with one
mtlkit message naming task, split, column, row and file before training (issue 11, data part).

Files are written the way users write them (csv by hand, pandas/pyarrow parquet) and go through
the real data module with the tiny tokenizer.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from helpers import quiet_trainer, tiny_model, toy_datamodule, toy_texts

from mtlkit.data import InMemory, LocalFiles
from mtlkit.data.sampling import Annealed, Temperature
from mtlkit.errors import ConfigError, DataError, DataWarning
from mtlkit.tasks import (
    MultiLabelClassification,
    Regression,
    SequenceClassification,
    TokenClassification,
)

TRAIN_CSV = "text,label\ngood movie,pos\nbad film,neg\ngood day,pos\nbad day,neg\n"
DEV_CSV = "text,label\ngood film,pos\nbad movie,neg\n"
DEV_IDS = "text,label\ngood film,1\nbad movie,0\n"


def _files(tmp_path, train: str, dev: str, suffix: str = ".csv") -> LocalFiles:
    (tmp_path / f"train{suffix}").write_text(train, encoding="utf-8")
    (tmp_path / f"dev{suffix}").write_text(dev, encoding="utf-8")
    paths = {
        "train": str(tmp_path / f"train{suffix}"),
        "validation": str(tmp_path / f"dev{suffix}"),
    }
    return LocalFiles(paths)


def _setup(*tasks, **kw):
    dm = toy_datamodule(list(tasks), **kw)
    dm.setup("fit")
    return dm


def _cls(source, **kw) -> SequenceClassification:
    return SequenceClassification(name="a", source=source, **kw)


# ---------------------------------------------------------------- reading files
@pytest.mark.parametrize("sep, suffix", [(",", ".csv"), ("\t", ".tsv")])
def test_csv_and_tsv_string_labels_are_classes(tmp_path, sep, suffix):
    train, dev = (t.replace(",", sep) for t in (TRAIN_CSV, DEV_CSV))
    task = _cls(_files(tmp_path, train, dev, suffix))
    dm = _setup(task)
    assert task.label_names == ["neg", "pos"] and task.num_labels == 2
    assert dm.splits["a"]["train"]["labels"] == [1, 0, 1, 0]


def test_non_utf8_csv_names_the_file_and_the_encoding_option(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("text,label\ncafé good,1\nbad,0\ngood day,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"data file .*train\.csv: is not utf-8 text \(byte 0xe9 "
                       r"on line 2\); set the file's encoding .*encoding: latin-1"):  # fmt: skip
        _setup(_cls(LocalFiles({"train": str(path)}), num_labels=2))
    data = _cls(LocalFiles({"train": str(path)}, encoding="latin-1"), num_labels=2).load()
    assert "café good" in [*data["train"]["text"], *data["validation"]["text"]]


def test_broken_jsonl_line_names_file_and_line(tmp_path):
    lines = [
        '{"text": "good", "label": 1}',
        '{"text": "bad", "label": 0',
        '{"text": "x", "label": 0}',
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    source = LocalFiles({"train": str(tmp_path / "train.jsonl")})
    with pytest.raises(DataError, match=r"data file .*train\.jsonl: line 2 is not valid JSON"):
        _setup(_cls(source, num_labels=2))


def test_nested_parquet_text_column_is_refused(tmp_path):
    rows = {"text": [{"title": "good", "body": "day"}, {"title": "bad", "body": "film"}] * 3,
            "label": [1, 0] * 3}  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    source = LocalFiles({"train": str(tmp_path / "train.parquet")})
    message = r"split 'train' column 'text' of .*train\.parquet holds nested \(struct\) values"
    with pytest.raises(DataError, match=rf"task 'a': {message} .*expected one text per row"):
        _setup(_cls(source, num_labels=2))


def test_nested_parquet_labels_are_refused(tmp_path):
    rows = {"text": ["good day", "bad film"] * 3, "label": [{"id": 1}, {"id": 0}] * 3}
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    source = LocalFiles({"train": str(tmp_path / "train.parquet")})
    message = r"split 'train' column 'label' of .*train\.parquet holds nested \(struct\) values"
    with pytest.raises(DataError, match=rf"task 'a': {message} .*expected one class id or name"):
        _setup(_cls(source))


# ---------------------------------------------------------------- empty or missing cells
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_empty_text_cell_is_an_error_not_the_word_none(tmp_path, suffix):
    if suffix == ".csv":
        train = "text,label\ngood movie,1\n,0\ngood day,1\nbad day,0\n"
        dev = "text,label\ngood film,1\nbad movie,0\n"
    else:
        rows = [("good movie", 1), (None, 0), ("good day", 1), ("bad day", 0)]
        train = "\n".join(json.dumps({"text": t, "label": y}) for t, y in rows)
        dev = json.dumps({"text": "good film", "label": 1})
    source = _files(tmp_path, train, dev, suffix)
    with pytest.raises(DataError, match=r"task 'a': split 'train' column 'text': empty text in "
                       rf"row 1 of .*train{suffix}"):  # fmt: skip
        _setup(_cls(source, num_labels=2))


def test_missing_string_label_is_not_a_class_none(tmp_path):
    rows = [("good movie", "pos"), ("bad film", "neg"), ("good day", None), ("bad day", "neg")]
    train = "\n".join(json.dumps({"text": t, "label": y}) for t, y in rows)
    source = _files(tmp_path, train, json.dumps({"text": "good film", "label": "pos"}), ".jsonl")
    with pytest.raises(DataError, match=r"task 'a': split 'train' column 'label': missing label in "
                       r"row 2 of .*train\.jsonl"):  # fmt: skip
        _setup(_cls(source))


def test_missing_integer_label_says_missing_not_float64(tmp_path):
    source = _files(tmp_path, "text,label\ngood movie,1\nbad film,0\ngood day,\n", DEV_IDS)
    with pytest.raises(DataError, match=r"task 'a': split 'train' column 'label': missing label in "
                       r"row 2 of .*train\.csv"):  # fmt: skip
        _setup(_cls(source, num_labels=2))


def test_labels_with_surrounding_spaces_are_stripped_with_a_warning(tmp_path):
    train = 'text,label\ngood movie,pos\nbad film,neg\ngood day," pos"\nbad day,neg \n'
    task = _cls(_files(tmp_path, train, DEV_CSV))
    with pytest.warns(DataWarning, match=r"task 'a': split 'train' column 'label' has labels with "
                      r"surrounding spaces \(e\.g\. ' pos'\); they are stripped"):  # fmt: skip
        _setup(task)
    assert task.label_names == ["neg", "pos"]


def test_missing_regression_target_names_the_row(tmp_path):
    source = _files(tmp_path, "text,label\ngood movie,0.5\nbad film,\ngood day,2.5\n", DEV_IDS)
    message = r"has 1 NaN/inf/missing target\(s\) in column 'label': row 1 of .*train\.csv"
    with pytest.raises(DataError, match=rf"task 'r': split 'train' {message}"):
        _setup(Regression(name="r", source=source))


def test_missing_value_in_a_multi_label_column_names_the_row():
    splits = {"train": {"text": ["good day", "bad film", "good film"], "x": [1, None, 0],
                        "y": [0, 1, 1]},
              "validation": {"text": ["bad day"], "x": [1], "y": [0]}}  # fmt: skip
    task = MultiLabelClassification("m", InMemory(splits), label_columns=["x", "y"])
    with pytest.raises(DataError, match=r"task 'm': split 'train' column 'x': missing label in "
                       r"row 1"):  # fmt: skip
        _setup(task)


# ---------------------------------------------------------------- label values
def test_fractional_labels_without_num_labels_point_to_regression(tmp_path):
    source = _files(tmp_path, "text,label\ngood movie,1.0\nbad film,0.0\ngood day,0.5\n", DEV_IDS)
    with pytest.raises(DataError, match=r"task 'a': split 'train' column 'label' holds float64 "
                       r"values, expected integer class ids \(row 2 of .*train\.csv has 0\.5\); "
                       r"for a real-valued target use mtlkit\.tasks\.Regression"):  # fmt: skip
        _setup(_cls(source))


def test_whole_number_float_labels_are_class_ids(tmp_path):
    dev = "text,label\ngood film,1.0\nbad movie,0.0\n"
    task = _cls(_files(tmp_path, "text,label\ngood movie,1.0\nbad film,0.0\ngood day,1.0\n", dev),
                num_labels=2)  # fmt: skip
    dm = _setup(task)
    assert dm.splits["a"]["train"]["labels"] == [1, 0, 1]


def test_single_class_task_is_refused_with_its_name(tmp_path):
    train = "text,label\ngood movie,pos\nbad film,pos\ngood day,pos\n"
    source = _files(tmp_path, train, "text,label\ngood film,pos\n")
    message = r"task 'a': split 'train' column 'label' has a single class \['pos'\]"
    with pytest.raises(DataError, match=message):
        _setup(_cls(source))


def test_single_label_multi_label_task_is_refused(tmp_path):
    splits = {s: {"text": ["good day", "bad film"], "labels": [["spam"], []]}
              for s in ("train", "validation")}  # fmt: skip
    task = MultiLabelClassification("m", InMemory(splits))
    with pytest.raises(DataError, match=r"task 'm': multi-label classification needs at least 2 "
                       r"labels, found 1 \['spam'\]"):  # fmt: skip
        _setup(task)


# ---------------------------------------------------------------- tags
def _tagging(tags: list[list[str]]) -> TokenClassification:
    tokens = [["john", "is", "in", "paris"]] * len(tags)
    validation = {"tokens": [["who", "won"]], "tags": [tags[0][:2]]}
    source = InMemory({"train": {"tokens": tokens, "tags": tags}, "validation": validation})
    return TokenClassification(name="ner", source=source)


def test_typo_among_bio_tags_is_named(tmp_path):
    task = _tagging([["B-PER", "O", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B_LOC"]])
    with pytest.warns(DataWarning, match=r"task 'ner': tag\(s\) \['B_LOC'\] do not follow the BIO "
                      r"scheme .*entity f1 is off"):  # fmt: skip
        _setup(task)
    assert task.primary_metric == "token_accuracy"


def test_tags_that_are_not_bio_say_entity_f1_is_off(tmp_path):
    task = _tagging([["NNP", "VBZ", "IN", "NNP"]] * 2)
    with pytest.warns(DataWarning, match=r"task 'ner': its tags are not BIO \(e\.g\. \['IN', "
                      r"'NNP', 'VBZ'\]\): entity f1 is off"):  # fmt: skip
        _setup(task)


# ---------------------------------------------------------------- lengths and sizes
@pytest.mark.parametrize("max_length", [0, -1])
def test_max_length_zero_or_negative_is_refused(max_length):
    with pytest.raises(ConfigError, match=rf"task 'a': max_length must be a positive number of "
                       rf"tokens, got {max_length}"):  # fmt: skip
        _cls(InMemory({"train": {"text": ["a", "b"], "label": [0, 1]}}), max_length=max_length)


def test_max_length_without_room_for_text_is_refused():
    texts, labels = toy_texts(10)
    task = _cls(InMemory({"train": {"text": texts, "label": labels}}), num_labels=2, max_length=2)
    with pytest.raises(ConfigError, match=r"task 'a': max_length 2 leaves no room for text: the "
                       r"tokenizer adds 2 special tokens"):  # fmt: skip
        _setup(task)


def test_max_length_beyond_the_encoder_positions_stops_before_training(tmp_path):
    texts, labels = toy_texts(10)
    texts[0] = " ".join(["good"] * 300)
    tasks = [_cls(InMemory({"train": {"text": texts, "label": labels}}), num_labels=2,
                  max_length=512)]  # fmt: skip
    trainer = quiet_trainer(tmp_path, max_steps=2, num_sanity_val_steps=0, limit_val_batches=0)
    with pytest.raises(ConfigError, match=r"task 'a': max_length 512 is more than the encoder's "
                       r"128 positions; set max_length <= 128"):  # fmt: skip
        trainer.fit(tiny_model(tasks), toy_datamodule(tasks))
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps_per_epoch": 0}, r"steps_per_epoch must be an integer >= 1 \(or unset"),
        ({"batch_size": 0, "steps_per_epoch": None}, r"batch_size must be an integer >= 1, got 0"),
    ],
    ids=["steps_per_epoch_0", "batch_size_0"],
)
def test_zero_steps_or_batch_size_is_refused(kwargs, message):
    texts, labels = toy_texts(10)
    task = _cls(InMemory({"train": {"text": texts, "label": labels}}), num_labels=2)
    with pytest.raises(ConfigError, match=message):
        _setup(task, **kwargs)


@pytest.mark.parametrize(
    "strategy", [lambda: Temperature(math.nan), lambda: Annealed(1.0, math.nan)]
)
def test_nan_temperature_is_refused(strategy):
    with pytest.raises(ConfigError, match=r"temperature.* must be > 0"):
        strategy()


def test_batch_larger_than_a_train_split_warns(tmp_path):
    texts, labels = toy_texts(6)
    splits = {"train": {"text": texts[:5], "label": labels[:5]},
              "validation": {"text": texts[5:], "label": labels[5:]}}  # fmt: skip
    task = _cls(InMemory(splits), num_labels=2)
    with pytest.warns(DataWarning, match=r"task 'a': a step draws 8 examples \(batch_size 8\) but "
                      r"its train split has only 5: every step repeats rows"):  # fmt: skip
        _setup(task, batch_size=8)


def test_validation_rows_identical_to_training_rows_are_counted(tmp_path):
    dev = "text,label\ngood movie,pos\nbad day,neg\nbad movie,neg\n"
    task = _cls(_files(tmp_path, TRAIN_CSV, dev))
    with pytest.warns(DataWarning, match=r"task 'a': 2 of 3 'validation' rows have the same "
                      r"\['text'\] as a training row \(train/validation leakage\)"):  # fmt: skip
        _setup(task)
