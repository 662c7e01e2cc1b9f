"""One model object: the training module, export, ``ExportedModel``, a distillation teacher and
the feature cache all run :class:`~mtlkit.model.multitask.MultiTaskModel`, and give the same
outputs on the same inputs for every task type."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TOKENIZER, toy_task
from test_export import four_tasks

from mtlkit.export import export_model
from mtlkit.inference import ExportedModel
from mtlkit.model import HFEncoder, MultiTaskModel
from mtlkit.model.source import load_source
from mtlkit.testing import TINY_ENCODER
from mtlkit.training import MultiTaskModule
from mtlkit.training.distillation import Teacher
from mtlkit.transfer.features import FeatureDataModule

ROOT = Path(__file__).resolve().parents[1]
#: One task of each type: pair classification, regression, multi-label, token classification,
#: and single-text classification.
NAMES = ["nli", "sts", "topics", "ner", "single"]


def test_plain_model_imports_without_lightning():
    code = (
        "import sys, mtlkit.model.multitask, mtlkit.model.outputs, mtlkit.model.source\n"
        "heavy = [m for m in ('lightning', 'torchmetrics', 'datasets', 'mtlkit.training.module',"
        " 'mtlkit.tasks', 'mtlkit.data') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """A module of five task types (fresh heads, eval mode), a feature-cache data module over
    the same encoder weights, an export and a checkpoint of the module, and one mixed batch."""
    tmp = tmp_path_factory.mktemp("one_model")
    torch.manual_seed(0)
    encoder = HFEncoder(config=dict(TINY_ENCODER))
    tasks = [*four_tasks(), toy_task("single", n=16)]
    data = FeatureDataModule(
        tasks=tasks,
        encoder=copy.deepcopy(encoder),
        pooling="mean",
        tokenizer=TOKENIZER,
        batch_size=15,
        steps_per_epoch=2,
        cache_dir=None,
        feature_batch_size=4,
        batch_mode="mixed",
    )
    data.setup("fit")
    module = MultiTaskModule(encoder, data.tasks, pooling="mean").eval()
    cached = next(iter(data.train_dataloader()))["tasks"]
    plain = {n: {k: v for k, v in b.items() if k != "features"} for n, b in cached.items()}
    folder = export_model(module, data.tokenizer, tmp / "exported")
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp / "model.ckpt")
    return module, cached, plain, folder, tmp / "model.ckpt"


def _same(got: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor, token: bool) -> None:
    if token:  # padded positions carry no prediction
        got, expected = got[mask.bool()], expected[mask.bool()]
    torch.testing.assert_close(got.reshape(expected.shape), expected, atol=1e-5, rtol=1e-4)


def test_the_module_runs_the_model(setting):
    module, _, plain, _, _ = setting
    assert isinstance(module.model, MultiTaskModel)
    assert module.model.encoder is module.encoder and module.model.heads is module.heads
    # Checkpoint keys are the module's historical names (no "model." prefix).
    keys = module.state_dict()
    assert any(k.startswith("encoder.model.") for k in keys)
    assert all(any(k.startswith(f"heads.{n}.") for k in keys) for n in NAMES)
    assert not any(k.startswith("model.") for k in keys)


@pytest.mark.parametrize("user", ["exported", "teacher_ckpt", "teacher_export", "features"])
def test_every_user_gives_the_module_outputs(setting, user):
    module, cached, plain, folder, ckpt = setting
    with torch.no_grad():
        expected = {n: o["logits"] for n, o in module(plain).items()}
        if user == "exported":
            got = {
                n: o["logits"] for n, o in ExportedModel.from_folder(folder).model(plain).items()
            }
        elif user == "features":  # heads over the cached encoder outputs
            got = {n: o["logits"] for n, o in module(cached).items()}
        else:
            path = ckpt if user == "teacher_ckpt" else folder
            got = Teacher(load_source(str(path)), module.tasks)(plain)
    assert set(got) == set(NAMES)
    for name in NAMES:
        token = module.tasks[name].level == "token"
        _same(got[name], expected[name], plain[name]["attention_mask"], token)


def test_exported_predictions_decode_the_module_logits(setting):
    """ExportedModel's decoding (mtlkit.model.outputs, chosen by Task.output_spec) on the
    module's own logits."""
    module, _, plain, folder, _ = setting
    exported = ExportedModel.from_folder(folder)
    with torch.no_grad():
        logits = {n: o["logits"] for n, o in module(plain).items()}
    for name in NAMES:
        spec = module.tasks[name].output_spec()
        assert exported.tasks[name].kind == spec["kind"]
        row = logits[name][0]
        inputs = {}
        if module.tasks[name].level == "token":
            n = int(plain[name]["attention_mask"][0].sum())
            inputs = {"word_ids": [None, *range(n - 2), None], "words": ["w"] * (n - 2)}
        decoded = exported.model.decode(name, row, **inputs)
        assert module.model.decode(name, row, **inputs) == decoded  # the trained model's own
        if spec["kind"] == "sequence_classification":
            names = module.tasks[name].label_names or range(len(row))
            assert decoded["label"] == str(list(names)[int(row.argmax())])
        elif spec["kind"] == "regression":
            task = module.tasks[name]
            assert decoded["value"] == pytest.approx(
                float(row.reshape(-1)[0]) * task.target_scale + task.target_shift
            )
        elif spec["kind"] == "multi_label":
            probs = torch.sigmoid(row)
            names = module.tasks[name].label_names
            assert decoded["labels"] == [
                x for x, p in zip(names, probs, strict=True) if p > spec["threshold"]
            ]
        else:
            tags = module.tasks[name].label_names
            assert decoded["tags"] == [tags[int(i)] for i in row[1 : n - 1].argmax(-1)]


def test_stack_tasks_false_encodes_each_sub_batch_at_its_own_width(setting):
    """``HFEncoder(stack_tasks=False)``: one encoder pass per sub-batch, each as wide as its
    own inputs, with every task's outputs those of the one stacked pass (float rounding)."""
    module, _, plain, _, _ = setting
    widths = {n: b["input_ids"].shape[1] for n, b in plain.items()}
    assert len(set(widths.values())) > 1  # the stacked pass pads someone
    seen: list[tuple[int, int]] = []
    hook = module.encoder.model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            stacked = {n: o["logits"] for n, o in module(plain).items()}
            assert seen == [
                (sum(b["input_ids"].shape[0] for b in plain.values()), max(widths.values()))
            ]
            seen.clear()
            module.encoder.stack_tasks = False
            separate = {n: o["logits"] for n, o in module(plain).items()}
    finally:
        module.encoder.stack_tasks = True
        hook.remove()
    assert seen == [tuple(b["input_ids"].shape) for b in plain.values()]
    for name in NAMES:
        token = module.tasks[name].level == "token"
        _same(separate[name], stacked[name], plain[name]["attention_mask"], token)
