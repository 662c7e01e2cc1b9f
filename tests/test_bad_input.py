"""Bad input stops before training with one clear message (the README's Troubleshooting table).

Each case builds the tiny components (or the CLI) with one thing wrong and checks the exact
message; the cases that need a ``Trainer`` also check that no optimizer step was taken.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import short_cpu_trainer, tiny_model, toy_datamodule, toy_task, toy_texts
from lightning.pytorch.callbacks import ModelCheckpoint

from mtlkit.cli import cli_main
from mtlkit.data import InMemory, LocalFiles
from mtlkit.errors import ConfigError, DataError
from mtlkit.model import HFEncoder
from mtlkit.tasks import Regression, SequenceClassification, TokenClassification
from mtlkit.testing import TINY_ENCODER
from mtlkit.training import MultiTaskModule
from mtlkit.weighting import DynamicWeightAverage

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/tiny/tiny.yaml"


# ------------------------------------------------------------------ builders
def _cls(name="a", num_labels=2, **splits):
    """A SequenceClassification task over in-memory splits (default: a learnable toy train)."""
    if "train" not in splits:
        texts, labels = toy_texts(10)
        splits["train"] = {"text": texts, "label": labels}
    return SequenceClassification(name=name, source=InMemory(splits), num_labels=num_labels)


def _reg(name="r", labels=None, **kw):
    labels = labels if labels is not None else [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    texts = [f"good movie {i}" for i in range(len(labels))]
    return Regression(name=name, source=InMemory({"train": {"text": texts, "label": labels}}), **kw)


def _setup(*tasks, **dm_kwargs):
    dm = toy_datamodule(list(tasks), **dm_kwargs)
    dm.setup("fit")
    return dm


def _trainer(tmp_path, **kw) -> L.Trainer:
    return short_cpu_trainer(tmp_path, **{"max_steps": 2, **kw})


def _fit(tmp_path, model, dm, **fit_kw):
    trainer = _trainer(tmp_path)
    try:
        trainer.fit(model, dm, **fit_kw)
    finally:
        assert trainer.global_step == 0, "training started before the bad input was caught"


def _cli(tmp_path, *args):
    cli_main(["fit", "--config", str(TINY), *args])


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------- cases
def case_malformed_yaml(tmp_path):
    _cli(tmp_path, "--config", _yaml(tmp_path, "trainer:\n  max_steps: [1\nmodel: {\n"))


def case_unknown_class_path(tmp_path):
    bad = TINY.read_text().replace("mtlkit.tasks.Regression", "mtlkit.tasks.Regresion")
    cli_main(["fit", "--config", _yaml(tmp_path, bad)])


def case_unknown_sampling(tmp_path):
    _cli(tmp_path, "--data.init_args.sampling=mtlkit.data.sampling.Nope")


def case_bad_pooling_cli(tmp_path):
    _cli(tmp_path, "--model.init_args.pooling=max")


def case_bad_pooling(tmp_path):
    tiny_model([toy_task("a")], pooling="max")


def case_bad_batch_mode(tmp_path):
    toy_datamodule([toy_task("a")], batch_mode="interleaved")


def case_missing_file(tmp_path):
    source = LocalFiles({"train": str(tmp_path / "nope.csv")})
    _setup(SequenceClassification(name="a", source=source, num_labels=2))


def case_misnamed_column(tmp_path):
    texts, labels = toy_texts(10)
    _setup(_cls(train={"sentence": texts, "label": labels}))


def case_text_labels_in_regression(tmp_path):
    _setup(_reg(labels=["high", "low", "high", "low", "high", "low"]))


def case_float_labels_in_classification(tmp_path):
    texts, _ = toy_texts(10)
    _setup(_cls(train={"text": texts, "label": [0.5] * 10}))


def case_nan_target(tmp_path):
    _setup(_reg(labels=[0.5, math.nan, 1.5, 2.0, math.nan, 3.0]))


def case_inf_target(tmp_path):
    _setup(_reg(labels=[0.5, 1.0, math.inf, 2.0, 2.5, -math.inf]))


def case_missing_target(tmp_path):
    _setup(_reg(labels=[0.5, 1.0, None, 2.0, 2.5, 3.0]))


def case_label_out_of_range(tmp_path):
    texts, labels = toy_texts(10)
    _setup(_cls(num_labels=3, train={"text": texts, "label": labels}, validation={
        "text": ["good movie", "bad film"], "label": [1, 7]}))  # fmt: skip


def case_negative_label(tmp_path):
    texts, labels = toy_texts(10)
    _setup(_cls(train={"text": texts, "label": [-1, *labels[1:]]}))


def case_no_num_labels(tmp_path):
    texts, labels = toy_texts(10)
    _setup(_cls(num_labels=None, train={"text": texts, "label": [5, *labels[1:]]}))


def case_num_labels_disagrees(tmp_path):
    texts, _ = toy_texts(10)
    _setup(_cls(num_labels=3, train={"text": texts, "label": ["pos", "neg"] * 5}))


def case_unseen_string_label(tmp_path):
    texts, _ = toy_texts(10)
    _setup(_cls(num_labels=None, train={"text": texts, "label": ["pos", "neg"] * 5},
                validation={"text": ["good day"], "label": ["neutral"]}))  # fmt: skip


def case_empty_validation(tmp_path):
    _setup(_cls(validation={"text": [], "label": []}))


def case_empty_train(tmp_path):
    _setup(_cls(train={"text": [], "label": []}, validation={"text": ["a"], "label": [0]}))


def case_nothing_left_after_filtering(tmp_path):
    _setup(toy_task("a"), max_train_examples=0)


def case_duplicate_task_names(tmp_path):
    toy_datamodule([toy_task("a"), toy_task("a", seed=1)])


def case_duplicate_task_names_model(tmp_path):
    tiny_model([toy_task("a"), toy_task("a", seed=1)])


def case_tokenizer_larger_than_embedding(tmp_path):
    tasks = [toy_task("a")]
    model = MultiTaskModule(HFEncoder(config={**TINY_ENCODER, "vocab_size": 100}), tasks)
    _fit(tmp_path, model, toy_datamodule(tasks))


def case_needs_all_tasks_homogeneous(tmp_path):
    tasks = [toy_task("a"), toy_task("b", seed=1)]
    model = tiny_model(tasks, weighting=DynamicWeightAverage())
    _fit(tmp_path, model, toy_datamodule(tasks, batch_mode="homogeneous"))


def case_checkpoint_other_architecture(tmp_path):
    tasks = [toy_task("a")]
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(tiny_model(tasks), toy_datamodule(tasks))
    path = tmp_path / "small.ckpt"
    trainer.save_checkpoint(path)
    tasks = [toy_task("a")]
    wide = MultiTaskModule(HFEncoder(config={**TINY_ENCODER, "hidden_size": 64}), tasks)
    _fit(tmp_path, wide, toy_datamodule(tasks), ckpt_path=str(path), weights_only=False)


def case_checkpoint_other_labels(tmp_path):
    tasks = [toy_task("a")]
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(tiny_model(tasks), toy_datamodule(tasks))
    path = tmp_path / "two_labels.ckpt"
    trainer.save_checkpoint(path)
    texts, labels = toy_texts(10)
    tasks = [_cls(num_labels=3, train={"text": texts, "label": labels})]
    _fit(
        tmp_path, tiny_model(tasks), toy_datamodule(tasks), ckpt_path=str(path), weights_only=False
    )


def _tagging(**train):
    # An explicit validation split: no carve, so row numbers are those of the given train data.
    validation = {"tokens": [["who", "won"]], "tags": [[0, 0]]}
    source = InMemory({"train": train, "validation": validation})
    return TokenClassification(name="ner", source=source, num_labels=3)


def case_tags_of_other_length(tmp_path):
    tokens = [["john", "is", "in", "paris"]] * 5 + [["who", "won"]]
    tags = [[1, 0, 0, 2]] * 5 + [[0]]
    _setup(_tagging(tokens=tokens, tags=tags))


def case_text_where_word_lists_expected(tmp_path):
    source = InMemory({"train": {"tokens": ["john is in paris"] * 6, "tags": [[1, 0, 0, 2]] * 6}})
    _setup(TokenClassification(name="ner", source=source, num_labels=3))


def case_unknown_tokenizer_folder(tmp_path):
    _setup(toy_task("a"), tokenizer=str(tmp_path / "no-such-tokenizer"))


# (case, exception type, regex of the message; for CLI cases, of stderr)
CASES = [
    (case_malformed_yaml, SystemExit, r"Problems parsing config.*did not find expected ','"),
    (case_unknown_class_path, SystemExit, r"mtlkit\.tasks\.Regresion"),
    (case_unknown_sampling, SystemExit, r"mtlkit\.data\.sampling\.Nope"),
    (
        case_bad_pooling_cli,
        SystemExit,
        r"Parser key \"pooling\":\s+Expected a typing.Literal\['cls', 'mean', 'last'\]. "
        r"Got value: max",
    ),
    (case_bad_pooling, ConfigError, r"pooling must be 'cls', 'mean' or 'last', got 'max'"),
    (case_bad_batch_mode, ConfigError, r"batch_mode must be 'homogeneous' or 'mixed'"),
    (case_missing_file, DataError, r"data file\(s\) not found: \[.*nope\.csv'\]"),
    (
        case_misnamed_column,
        DataError,
        r"task 'a': split 'train' has no column\(s\) \['text'\]; "
        r"available columns: \['sentence', 'label'\]",
    ),
    (
        case_text_labels_in_regression,
        DataError,
        r"task 'r': split 'train' column 'label' must be numeric for regression",
    ),
    (
        case_float_labels_in_classification,
        DataError,
        r"task 'a': split 'train' column 'label' holds float64 values, expected integer class ids",
    ),
    (case_nan_target, DataError, r"task 'r': split 'train' has 2 NaN/inf/missing target\(s\)"),
    (case_inf_target, DataError, r"task 'r': split 'train' has 2 NaN/inf/missing target\(s\)"),
    (case_missing_target, DataError, r"task 'r': split 'train' has 1 NaN/inf/missing target\(s\)"),
    (
        case_label_out_of_range,
        DataError,
        r"task 'a': split 'validation' has label 7 outside \[0, 3\)",
    ),
    (case_negative_label, DataError, r"task 'a': split 'train' has label -1 outside \[0, 2\)"),
    (case_no_num_labels, DataError, r"set num_labels \(the largest label seen is 5, so probably"),
    (
        case_num_labels_disagrees,
        DataError,
        r"task 'a': num_labels=3 disagrees with the data, which has 2 classes",
    ),
    (
        case_unseen_string_label,
        DataError,
        r"task 'a': split 'validation' has labels not seen in train: \['neutral'\]",
    ),
    (case_empty_validation, DataError, r"task 'a': split 'validation' is empty"),
    (case_empty_train, DataError, r"task 'a': split 'train' is empty"),
    (
        case_nothing_left_after_filtering,
        DataError,
        r"task 'a': no training examples left after filtering",
    ),
    (case_duplicate_task_names, ConfigError, r"duplicate task names \['a'\]"),
    (case_duplicate_task_names_model, ConfigError, r"duplicate task names in \['a', 'a'\]"),
    (
        case_tokenizer_larger_than_embedding,
        ConfigError,
        r"the tokenizer has 155 tokens but the encoder's embedding has 100",
    ),
    (
        case_needs_all_tasks_homogeneous,
        ConfigError,
        r"DynamicWeightAverage needs every task's loss in every step; set data\.batch_mode: mixed",
    ),
    (
        case_checkpoint_other_architecture,
        ConfigError,
        r"checkpoint parameter 'encoder\.model\.embeddings\.word_embeddings\.weight' has shape "
        r"\(155, 32\) but this model's has \(155, 64\)",
    ),
    (case_checkpoint_other_labels, DataError, r"task 'a': checkpoint has 2 labels, config has 3"),
    (
        case_tags_of_other_length,
        DataError,
        r"task 'ner': split 'train' row 5 has 2 tokens in 'tokens' but 1 tags in 'tags'",
    ),
    (
        case_text_where_word_lists_expected,
        DataError,
        r"task 'ner': column 'tokens' must hold one list per example \(words or tags\)",
    ),
    (case_unknown_tokenizer_folder, ConfigError, r"no-such-tokenizer.*does not exist"),
]


@pytest.mark.parametrize(
    "case, error, message", CASES, ids=[c.__name__.removeprefix("case_") for c, _, _ in CASES]
)
def test_bad_input_fails_before_training(case, error, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        case(tmp_path)
    text = capsys.readouterr().err if error is SystemExit else str(info.value)
    assert info.type is not SystemExit or info.value.code not in (0, None)
    assert re.search(message, text, flags=re.DOTALL), text


def test_numbers_in_a_text_column_are_read_as_text():
    """A number where text is expected is not an error: it is tokenized as its digits."""
    task = _cls(train={"text": list(range(10)), "label": [0, 1] * 5})
    dm = _setup(task)
    assert len(dm.splits["a"]["train"]) == 9


def test_non_finite_loss_stops_training_and_keeps_earlier_checkpoints(tmp_path):
    task = _reg(labels=[float(i % 3) for i in range(24)])
    model = tiny_model([task])
    original = task.loss

    def loss(logits, labels):  # finite for steps 0-2, NaN from step 3 on
        value = original(logits, labels)
        return value * math.nan if model.global_step >= 3 else value

    task.loss = loss
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    trainer = _trainer(tmp_path, max_steps=10, enable_checkpointing=True, callbacks=[checkpoints])
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss for task\(s\) \['r'\] at step 3"
    ):
        trainer.fit(model, toy_datamodule([task]))
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert saved == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt"]
    state = torch.load(tmp_path / "ckpt" / saved[-1], map_location="cpu", weights_only=False)
    assert all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


# ------------------------------------------------------------------- safety
def _small_checkpoint(tmp_path) -> Path:
    tasks = [toy_task("a")]
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(tiny_model(tasks), toy_datamodule(tasks))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


# The module's hyperparameters hold the optimizer and scheduler *callables* (``adamw``,
# ``LinearWarmupDecay``), which the checkpoint pickles by reference; they are its only globals.


def test_checkpoint_loads_with_weights_only(tmp_path):
    """A checkpoint holds only tensors and plain containers: no pickled code to execute."""
    state = torch.load(_small_checkpoint(tmp_path), map_location="cpu", weights_only=True)
    assert "encoder.model.embeddings.word_embeddings.weight" in state["state_dict"]
    assert state["mtlkit_tasks"] == {"a": {"num_labels": 2, "label_names": None}}


def test_trust_remote_code_is_off_by_default():
    default = inspect.signature(HFEncoder).parameters["trust_remote_code"].default
    assert default is False


def test_folder_needing_remote_code_is_refused(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    config = {
        "model_type": "mtlkit-custom",
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModel": "modeling_custom.CustomModel",
        },
        "hidden_size": 32,
    }
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "executed"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "configuration_custom.py").write_text(code)
    (folder / "modeling_custom.py").write_text(code)
    with pytest.raises(ValueError, match=r"trust_remote_code=True"):
        HFEncoder(str(folder))
    assert not marker.exists()  # the folder's code never ran


def test_non_finite_loss_can_skip_the_step(tmp_path):
    task = _reg(labels=[float(i % 3) for i in range(24)])
    model = tiny_model([task], on_nonfinite_loss="skip")
    original = task.loss

    def loss(logits, labels):  # NaN at step 2 only
        value = original(logits, labels)
        return value * math.nan if model.global_step == 2 and not model.skipped else value

    model.skipped = False
    task.loss = loss
    trainer = _trainer(tmp_path, max_steps=4)
    with pytest.warns(UserWarning, match=r"non-finite loss for task\(s\) \['r'\] at step 2"):
        original_step = model.training_step

        def step(*args, **kwargs):
            out = original_step(*args, **kwargs)
            model.skipped = model.skipped or out is None
            return out

        model.training_step = step
        trainer.fit(model, toy_datamodule([task]))
    assert model.skipped and trainer.global_step == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())
