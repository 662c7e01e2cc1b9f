"""Data sources: local files, dataset names, Python callables; validation carving."""

import json

import pytest
from datasets import Dataset

from mtlkit.data import HubDataset, InMemory, LocalFiles, PythonCallable
from mtlkit.errors import ConfigError, DataError


def _write_csv(path, rows, sep=","):
    path.write_text("text" + sep + "label\n" + "".join(f"{t}{sep}{y}\n" for t, y in rows))
    return str(path)


def test_local_csv_tsv_json(tmp_path):
    rows = [(f"text {i}", i % 2) for i in range(20)]
    data = LocalFiles({"train": _write_csv(tmp_path / "a.csv", rows)}).load()
    assert (
        set(data) == {"train", "validation"} and len(data["train"]) + len(data["validation"]) == 20
    )
    tsv = LocalFiles({"train": _write_csv(tmp_path / "a.tsv", rows, sep="\t")}).load()
    assert tsv["train"].column_names == ["text", "label"]
    jl = tmp_path / "a.jsonl"
    jl.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    assert len(LocalFiles({"train": str(jl), "validation": str(jl)}).load()["validation"]) == 20


def test_dataset_name_path_loads_a_local_folder(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    _write_csv(folder / "train.csv", [("a", 0), ("b", 1), ("c", 0), ("d", 1)])
    data = HubDataset(str(folder), validation_fraction=0.25).load()
    assert len(data["train"]) == 3 and len(data["validation"]) == 1


def test_python_callable_dataset_and_bad_target():
    def_target = "tests.test_sources:_make"
    data = PythonCallable(def_target, {"n": 10}).load()
    assert len(data["train"]) == 9
    with pytest.raises(ConfigError, match="cannot import data callable 'nowhere.fn'"):
        PythonCallable("nowhere.fn").load()


def _make(n):
    return Dataset.from_dict({"text": [str(i) for i in range(n)], "label": [0] * n})


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="data file\\(s\\) not found"):
        LocalFiles({"train": str(tmp_path / "nope.csv")}).load()
    with pytest.raises(ConfigError, match="cannot infer the file format"):
        LocalFiles({"train": "data.xlsx"})


def test_carving_is_deterministic_and_seeded():
    splits = {"train": {"text": [str(i) for i in range(100)], "label": [0] * 100}}
    a = InMemory(splits).load()["validation"]["text"]
    b = InMemory(splits).load()["validation"]["text"]
    c = InMemory(splits, split_seed=1).load()["validation"]["text"]
    assert a == b and a != c and len(a) == 10


def test_no_train_split():
    with pytest.raises(DataError, match="no 'train' split"):
        InMemory({"validation": {"text": ["a"], "label": [0]}}).load()
