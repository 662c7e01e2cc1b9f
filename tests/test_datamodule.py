"""The multi-task data module: loading, tokenization cache, batch modes, padding, evaluation."""

import pytest
import torch
from helpers import toy_datamodule, toy_task

from mtlkit.data import InMemory, MultiTaskDataModule
from mtlkit.data.batching import count_tokens
from mtlkit.errors import ConfigError, DataError
from mtlkit.tasks import SequenceClassification


def test_tokenizer_vocabulary_is_the_real_one(tiny_tokenizer):
    dm = toy_datamodule([toy_task("a")])
    dm.setup("fit")
    assert len(dm.tokenizer) == len(tiny_tokenizer) == 155
    assert max(dm.tokenizer.get_vocab().values()) == 154  # ids are dense: no duplicate entries
    assert dm.tokenizer.tokenize("good movie") == ["good", "movie"]


def test_validation_is_carved_deterministically():
    sizes = []
    for _ in range(2):
        dm = toy_datamodule([toy_task("a", n=50)])
        dm.setup("fit")
        sizes.append((len(dm.splits["a"]["train"]), dm.splits["a"]["validation"]["input_ids"]))
    assert sizes[0][0] == 45
    assert sizes[0][1] == sizes[1][1]


@pytest.mark.parametrize("mode", ["homogeneous", "mixed"])
def test_batch_modes(mode):
    dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)], batch_mode=mode, batch_size=6)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 5
    for batch in batches:
        subs = batch["tasks"]
        if mode == "homogeneous":
            assert len(subs) == 1
        assert sum(s["input_ids"].shape[0] for s in subs.values()) == 6
    if mode == "mixed":
        assert any(len(b["tasks"]) == 2 for b in batches)


def test_dynamic_padding_per_sub_batch():
    dm = toy_datamodule([toy_task("a")], batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    sub = batch["tasks"]["a"]
    lengths = sub["attention_mask"].sum(1)
    assert sub["input_ids"].shape[1] == int(lengths.max())  # padded to the longest, no further
    assert torch.all(sub["input_ids"][sub["attention_mask"] == 0] == dm.tokenizer.pad_token_id)
    assert sub["labels"].shape == (8,)


def test_length_grouping_cuts_padding():
    task_args = dict(n=400)
    ratios = []
    for group in (False, True):
        dm = toy_datamodule(
            [toy_task("a", **task_args)], batch_size=16, group_by_length=group, steps_per_epoch=20
        )
        dm.setup("fit")
        real = total = 0
        for batch in dm.train_dataloader():
            r, t = count_tokens(batch)
            real, total = real + r, total + t
        ratios.append(real / total)
    assert ratios[1] > ratios[0] + 0.05


def test_eval_loaders_cover_every_example_once():
    dm = toy_datamodule([toy_task("a", n=60), toy_task("b", n=30)], eval_batch_size=7)
    dm.setup("fit")
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    seen = sum(b["tasks"]["a"]["input_ids"].shape[0] for b in loaders[0])
    assert seen == len(dm.splits["a"]["validation"]) == 6


def test_tokenization_is_cached(tmp_path):
    dm = toy_datamodule([toy_task("a")], cache_dir=str(tmp_path))
    dm.setup("fit")
    files = sorted(p.name for p in (tmp_path / "a").glob("*.arrow"))
    assert len(files) == 2  # train + validation
    dm2 = toy_datamodule([toy_task("a")], cache_dir=str(tmp_path))
    dm2.setup("fit")
    assert sorted(p.name for p in (tmp_path / "a").glob("*.arrow")) == files
    # another max_length changes the key
    dm3 = toy_datamodule([toy_task("a", max_length=8)], cache_dir=str(tmp_path))
    dm3.setup("fit")
    assert len(list((tmp_path / "a").glob("*.arrow"))) == 4


def test_datamodule_state_round_trip():
    dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)], steps_per_epoch=8)
    dm.setup("fit")
    all_plans = [
        (b["step"], {k: v["input_ids"].tolist() for k, v in b["tasks"].items()})
        for b in dm.train_dataloader()
    ]
    it = iter(dm.train_dataloader())
    for _ in range(3):
        dm.on_before_batch_transfer(next(it), 0)
    state = dm.state_dict()
    dm2 = toy_datamodule([toy_task("a"), toy_task("b", seed=1)], steps_per_epoch=8)
    dm2.load_state_dict(state)
    dm2.setup("fit")
    rest = [
        (b["step"], {k: v["input_ids"].tolist() for k, v in b["tasks"].items()})
        for b in dm2.train_dataloader()
    ]
    assert rest == all_plans[3:]


def test_duplicate_task_names():
    with pytest.raises(ConfigError, match="duplicate task names \\['a'\\]"):
        toy_datamodule([toy_task("a"), toy_task("a")])


def test_empty_split_and_missing_column():
    empty = SequenceClassification(
        "e",
        InMemory({"train": {"text": [], "label": []}, "validation": {"text": ["x"], "label": [0]}}),
        num_labels=2,
    )
    with pytest.raises(DataError, match="task 'e': split 'train' is empty"):
        toy_datamodule([empty]).setup("fit")
    wrong = SequenceClassification(
        "w", InMemory({"train": {"sentence": ["a", "b"], "label": [0, 1]}}), num_labels=2
    )
    with pytest.raises(
        DataError, match="no column\\(s\\) \\['text'\\].*available columns: \\['sentence'"
    ):
        toy_datamodule([wrong]).setup("fit")


def test_label_out_of_range_and_num_labels_mismatch():
    bad = SequenceClassification(
        "r", InMemory({"train": {"text": ["a"] * 4, "label": [0, 1, 2, 5]}}), num_labels=3
    )
    with pytest.raises(DataError, match="label 5 outside \\[0, 3\\)"):
        toy_datamodule([bad]).setup("fit")


def test_sampling_must_be_a_strategy():
    with pytest.raises(ConfigError, match="SamplingStrategy"):
        MultiTaskDataModule([toy_task("a")], tokenizer="x", sampling="temperature")
