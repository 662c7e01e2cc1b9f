"""Intermediate-layer distillation (hidden states, attention maps), one teacher per task, and the
temperature schedule."""

import math

import lightning as L
import pytest
import torch
from helpers import TINY_ENCODER, quiet_trainer, toy_datamodule, toy_task

from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.training import DistillationModule, MultiTaskModule
from mtlkit.training.layer_match import (
    LayerMatch,
    attention_kl,
    attention_mse,
    capture,
    hidden_cosine,
    hidden_mse,
)
from mtlkit.weighting import EqualWeighting

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


# ------------------------------------------------------------------- loss terms, by hand
def test_hidden_mse_averages_over_real_tokens_and_dimensions():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    t = torch.tensor([[[0.0, 2.0], [3.0, 0.0]]])
    # Only token 0: ((1-0)^2 + (2-2)^2) / (1 token * 2 dims).
    assert hidden_mse(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(0.5)
    # Both tokens: (1 + 0 + 0 + 16) / (2 * 2).
    assert hidden_mse(s, t, torch.tensor([[1, 1]])).item() == pytest.approx(4.25)


def test_hidden_cosine_is_one_minus_cosine_over_real_tokens():
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    t = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])  # orthogonal, then parallel
    assert hidden_cosine(s, t, torch.tensor([[1, 1]])).item() == pytest.approx(0.5)
    assert hidden_cosine(s, t, torch.tensor([[0, 1]])).item() == pytest.approx(0.0, abs=1e-7)


TEACHER_ATT = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])  # [batch, heads, query, key]
STUDENT_ATT = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])


def test_attention_kl_is_minilm_kl_of_each_query_row():
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    got = attention_kl(STUDENT_ATT, TEACHER_ATT, torch.tensor([[1, 1]]))
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # A padded second token: only query 0 over key 0 counts.
    teacher, student = torch.tensor([[[[1.0, 0.0], [0.3, 0.7]]]]), STUDENT_ATT.clone()
    student[0, 0, 0] = torch.tensor([0.8, 0.2])
    got = attention_kl(student, teacher, torch.tensor([[1, 0]]))
    assert got.item() == pytest.approx(math.log(1 / 0.8), rel=1e-6)


def test_attention_mse_averages_over_heads_real_queries_and_keys():
    # (0.25^2 * 2 + 0.4^2 * 2) / 4 entries.
    got = attention_mse(STUDENT_ATT, TEACHER_ATT, torch.tensor([[1, 1]]))
    assert got.item() == pytest.approx(0.445 / 4, rel=1e-6)
    got = attention_mse(STUDENT_ATT, TEACHER_ATT, torch.tensor([[1, 0]]))
    assert got.item() == pytest.approx(0.25**2, rel=1e-6)


# -------------------------------------------------------------------------- capture
def test_capture_records_what_hugging_face_reports_as_hidden_states_and_attentions():
    torch.manual_seed(0)
    encoder = HFEncoder(config=dict(TINY_ENCODER, **NO_DROPOUT)).eval()
    encoder.model.set_attn_implementation("eager")
    ids = torch.randint(5, 150, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.no_grad(), capture(encoder, {0, 1, 2}, {1, 2}) as seen:
        encoder(ids, mask)
        reference = encoder.model(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True
        )
    for i in (0, 1, 2):
        torch.testing.assert_close(seen.hidden[i], reference.hidden_states[i])
    for i in (1, 2):
        torch.testing.assert_close(seen.attention[i], reference.attentions[i - 1])
    assert torch.equal(seen.mask, mask)


# -------------------------------------------------------------------- the student
def _teacher(path, tasks, seed=0, **config):
    torch.manual_seed(seed)
    model = MultiTaskModule(HFEncoder(config=dict(TINY_ENCODER, **config)), tasks)
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return model.eval(), str(path)


def _student(teacher, tasks, **kw):
    torch.manual_seed(1)
    encoder = HFEncoder(
        config=dict(TINY_ENCODER, hidden_size=16, num_hidden_layers=1, **NO_DROPOUT)
    )
    kw.setdefault("weighting", EqualWeighting())
    student = DistillationModule(encoder, tasks, teacher=teacher, **kw)
    student.configure_model()
    return student


def _batch(name):
    torch.manual_seed(3)
    ids = torch.randint(5, 150, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    return {name: {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}}


def test_matches_are_computed_from_the_right_layers_with_a_learned_projection(tmp_path):
    _, path = _teacher(tmp_path / "t.ckpt", [toy_task("a")], **NO_DROPOUT)
    matches = [
        LayerMatch(student=1, teacher=2, loss="hidden_mse", weight=0.5),
        LayerMatch(student=1, teacher=1, loss="attention_kl", weight=2.0),
    ]
    student = _student(path, [toy_task("a")], intermediate=matches, alpha=0.5)
    assert list(student.projections) == ["hidden_mse_1_2"]  # 16 -> 32 wide
    subs = _batch("a")
    student.train()
    student.task_losses(student(subs), subs)
    got = student._match_losses

    # Reference: both models' states as Hugging Face reports them, the formulas written out.
    b = subs["a"]
    s_out = student.encoder.model(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        output_hidden_states=True,
        output_attentions=True,
    )
    with torch.no_grad():  # the teacher as the student holds it: eager attention set
        t_out = student.teacher.encoder.model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            output_hidden_states=True,
            output_attentions=True,
        )
    m = b["attention_mask"].bool()
    projected = student.projections["hidden_mse_1_2"](s_out.hidden_states[1])
    mse = ((projected - t_out.hidden_states[2]) ** 2)[m].mean()
    torch.testing.assert_close(got["hidden_mse_1_2"], mse)
    kls = []
    for i in range(3):
        n = int(m[i].sum())
        p = t_out.attentions[0][i, :, :n, :n]
        q = s_out.attentions[0][i, :, :n, :n]
        kls.append((p * (p.log() - q.log())).sum(-1).flatten())
    torch.testing.assert_close(got["attention_kl_1_1"], torch.cat(kls).mean())

    total = sum(m.weight * got[m.name] for m in matches)
    total.backward()
    assert student.projections["hidden_mse_1_2"].weight.grad.abs().sum() > 0
    assert student.encoder.layers[0].attention.self.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.teacher.encoder.parameters())


def test_a_fit_with_matches_pulls_the_student_towards_the_teacher_and_checkpoints(tmp_path):
    L.seed_everything(0)
    tasks = [toy_task("topic", n=96)]
    _, path = _teacher(tmp_path / "t.ckpt", [toy_task("topic", n=96)], **NO_DROPOUT)
    dm = toy_datamodule(tasks, batch_size=16, steps_per_epoch=30)
    match = LayerMatch(student=1, teacher=2, loss="hidden_cosine")
    student = _student(
        path,
        dm.tasks,
        intermediate=[match],
        lr_scheduler=None,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
    )
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            seen.append(float(trainer.callback_metrics["train/distill/hidden_cosine_1_2"]))

    trainer = quiet_trainer(tmp_path, max_steps=30, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(student, dm)
    assert len(seen) == 30
    assert sum(seen[-5:]) / 5 < 0.5 * sum(seen[:5]) / 5
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    ckpt = torch.load(tmp_path / "student.ckpt", weights_only=True)  # plain values only
    assert ckpt["hyper_parameters"]["intermediate"][0]["loss"] == "hidden_cosine"
    assert any(k.startswith("projections.hidden_cosine_1_2") for k in ckpt["state_dict"])


def test_one_teacher_per_task_gives_each_task_its_own_teachers_outputs(tmp_path):
    teacher_a, path_a = _teacher(tmp_path / "a.ckpt", [toy_task("a")], seed=0)
    teacher_b, path_b = _teacher(tmp_path / "b.ckpt", [toy_task("b")], seed=5)
    student = _student({"a": path_a, "b": path_b}, [toy_task("a"), toy_task("b")])
    subs = {**_batch("a"), **_batch("b")}
    got = student.teacher_outputs(subs)
    with torch.no_grad():
        torch.testing.assert_close(got["a"], teacher_a({"a": subs["a"]})["a"]["logits"])
        torch.testing.assert_close(got["b"], teacher_b({"b": subs["b"]})["b"]["logits"])
    assert not torch.allclose(got["a"], got["b"])
    assert set(student.teachers) == {"a", "b"}
    with pytest.raises(ConfigError, match="one teacher per task: see .teachers"):
        student.teacher  # noqa: B018


def test_temperature_anneals_linearly_to_its_final_value(tmp_path):
    _, path = _teacher(tmp_path / "t.ckpt", [toy_task("a")])
    dm = toy_datamodule([toy_task("a")], batch_size=8, steps_per_epoch=5)
    student = _student(path, dm.tasks, temperature=4.0, final_temperature=1.0)
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, *args):
            seen.append(module.current_temperature())

    trainer = quiet_trainer(tmp_path, max_steps=5, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(student, dm)
    assert seen == pytest.approx([4.0, 3.25, 2.5, 1.75, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"teacher": {"a": "x.ckpt"}}, r"no teacher for \['b'\]"),
        ({"teacher": {"a": "x", "b": "x", "c": "x"}}, r"unknown task\(s\) \['c'\]"),
        (
            {
                "teacher": {"a": "x.ckpt", "b": "y.ckpt"},
                "intermediate": [LayerMatch(student=1, teacher=1)],
            },
            "intermediate layer matches need one teacher",
        ),
        ({"teacher": "x", "final_temperature": 0.0}, "final_temperature must be > 0"),
    ],
    ids=["missing-task", "unknown-task", "matches-with-many-teachers", "temperature"],
)
def test_bad_settings_fail_when_the_module_is_built(kwargs, message):
    encoder = HFEncoder(config=dict(TINY_ENCODER))
    with pytest.raises(ConfigError, match=message):
        DistillationModule(encoder, [toy_task("a"), toy_task("b")], **kwargs)


def test_a_layer_the_model_lacks_is_named(tmp_path):
    _, path = _teacher(tmp_path / "t.ckpt", [toy_task("a")])
    with pytest.raises(ConfigError, match=r"the teacher has layers 0..2 for hidden states, got 5"):
        _student(path, [toy_task("a")], intermediate=[LayerMatch(student=1, teacher=5)])
    with pytest.raises(ConfigError, match=r"the student has layers 1..1 for attention maps"):
        _student(path, [toy_task("a")], intermediate=[LayerMatch(0, 1, loss="attention_mse")])
