"""Soft parameter sharing: per-task encoder copies tied by an L2 penalty (Duong et al., 2015)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import quiet_trainer, toy_datamodule, toy_task, toy_texts

from mtlkit.cli import cli_main
from mtlkit.data import InMemory
from mtlkit.errors import ConfigError
from mtlkit.model.soft_sharing import SoftSharedEncoder
from mtlkit.tasks import SequenceClassification
from mtlkit.testing import TINY_ENCODER
from mtlkit.training import MultiTaskModule

ROOT = Path(__file__).resolve().parents[1]


def _model(top_layers: int | None, strength: float = 0.0, names=("a", "b"), seed=0, **kw):
    torch.manual_seed(seed)
    encoder = SoftSharedEncoder(config=dict(TINY_ENCODER), top_layers=top_layers, strength=strength)
    tasks = [toy_task(n, n=24, seed=i) for i, n in enumerate(names)]
    return MultiTaskModule(encoder, tasks, lr_scheduler=None, **kw), tasks


def _distance(encoder: SoftSharedEncoder, a: str, b: str) -> float:
    pairs = zip(encoder.task_parameters(a), encoder.task_parameters(b), strict=True)
    return sum(float((p - q).detach().pow(2).sum()) for p, q in pairs) ** 0.5


def _sub_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 150, (4, 9), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.tensor([0, 1, 0, 1]),
    }


@pytest.mark.parametrize("top_layers", [None, 1])
def test_copies_start_equal_and_share_the_bottom(top_layers):
    model, _ = _model(top_layers)
    enc = model.encoder
    assert list(enc.towers) == ["a", "b"] and enc.towers["a"] is enc.model
    own_a, own_b = enc.task_parameters("a"), enc.task_parameters("b")
    assert own_a and len(own_a) == len(own_b)
    for p, q in zip(own_a, own_b, strict=True):
        assert p is not q and torch.equal(p, q)
    tower_b = enc.towers["b"]
    if top_layers is None:  # whole copies: nothing in common
        assert not {id(p) for p in enc.model.parameters()} & {id(p) for p in tower_b.parameters()}
    else:  # embeddings and layer 0 are the very same modules, layer 1 is a copy
        assert tower_b.embeddings is enc.model.embeddings
        assert tower_b.encoder.layer[0] is enc.model.encoder.layer[0]
        assert tower_b.encoder.layer[1] is not enc.model.encoder.layer[1]
        assert {id(p) for p in own_b} == {id(p) for p in tower_b.encoder.layer[1].parameters()}
    enc.prepare_tasks(["a", "b"])  # idempotent (configure_model runs more than once)
    assert list(enc.towers) == ["a", "b"] and enc.towers["b"] is tower_b
    model.eval()
    sub = _sub_batch()
    out = model({"a": sub})["a"]["logits"], model({"b": sub})["b"]["features"]
    assert out[1].shape == (4, 32)
    same = enc(sub["input_ids"], sub["attention_mask"], task="a")
    assert torch.allclose(same, enc(sub["input_ids"], sub["attention_mask"], task="b"))


@pytest.mark.parametrize("decay", [None, 0.8])
def test_optimizer_sees_every_parameter_once(decay):
    model, _ = _model(1, layer_lr_decay=decay)
    optimizer = model.configure_optimizers()
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert len(ids) < len(model.state_dict())  # shared modules appear under several names
    if decay is not None:  # task b's copy of layer 1 learns at layer 1's rate
        groups = {g["name"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
        copy_b = model.encoder.towers["b"].encoder.layer[1]
        assert {id(p) for p in copy_b.parameters()} <= groups["encoder.layer_1"]


def test_penalty_and_its_gradient_match_the_formula():
    model, _ = _model(1, strength=0.5, names=("a", "b", "c"))
    enc = model.encoder
    with torch.no_grad():  # hand-made copies: 1, 3 and 2 everywhere (mean 2)
        for name, value in {"a": 1.0, "b": 3.0, "c": 2.0}.items():
            for p in enc.task_parameters(name):
                p.fill_(value)
    n = sum(p.numel() for p in enc.task_parameters("a"))
    penalty = enc.regularization()
    # 0.5 * n * ((1-2)^2 + (3-2)^2 + 0) = n; Duong's pairwise form with lambda = 0.5 / 3:
    # (0.5 / 3) * n * ((1-3)^2 + (1-2)^2 + (3-2)^2) = n as well.
    assert penalty.item() == pytest.approx(n)
    penalty.backward()
    for name, grad in {"a": -1.0, "b": 1.0, "c": 0.0}.items():  # 2 * 0.5 * (theta - 2)
        for p in enc.task_parameters(name):
            assert torch.allclose(p.grad, torch.full_like(p, grad))
    shared = enc.model.encoder.layer[0].attention.self.query.weight
    assert shared.grad is None  # the penalty only touches per-task parameters


def test_task_loss_reaches_only_its_own_copy():
    model, _ = _model(1)
    model.eval()
    sub = _sub_batch()
    loss = model.task_losses(model({"a": sub}), {"a": sub})["a"]
    loss.backward()
    enc = model.encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.task_parameters("a"))
    assert all(p.grad is None for p in enc.task_parameters("b"))
    assert enc.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0  # shared
    before = model({"a": sub})["a"]["logits"].detach()
    with torch.no_grad():  # another task's copy does not change this task's outputs
        for p in enc.task_parameters("b"):
            p.add_(1.0)
    assert torch.equal(model({"a": sub})["a"]["logits"], before)
    assert not torch.allclose(model({"b": sub})["b"]["logits"], model({"a": sub})["a"]["logits"])


def _opposed_tasks() -> list[SequenceClassification]:
    """Two tasks with opposite labels for the same texts: their copies pull apart every step."""
    texts, labels = toy_texts(24)
    return [
        SequenceClassification(name, InMemory({"train": {"text": texts, "label": y}}), num_labels=2)
        for name, y in (("a", labels), ("b", [1 - v for v in labels]))
    ]


def _fit(tmp_path, strength: float, steps: int = 12) -> tuple[MultiTaskModule, L.Trainer]:
    torch.manual_seed(0)
    encoder = SoftSharedEncoder(config=dict(TINY_ENCODER), top_layers=1, strength=strength)
    tasks = _opposed_tasks()
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    model = MultiTaskModule(encoder, tasks, optimizer=sgd, lr_scheduler=None)
    model.heads.requires_grad_(False)  # fixed heads: only the encoder copies can fit the labels
    data = toy_datamodule(tasks, batch_mode="mixed", batch_size=8, steps_per_epoch=steps)
    trainer = quiet_trainer(tmp_path, max_steps=steps, limit_val_batches=0)
    trainer.fit(model, data)
    return model, trainer


def test_copies_diverge_and_strength_holds_them_together(tmp_path):
    free, trainer = _fit(tmp_path / "free", strength=0.0)
    assert trainer.global_step == 12
    apart = _distance(free.encoder, "a", "b")
    assert apart > 0.2
    # With SGD (step 0.1) on strength 4 the difference shrinks by 1 - 2 * 0.1 * 4 = 0.2 per step
    # instead of adding up step after step.
    tied, trainer = _fit(tmp_path / "tied", strength=4.0)
    assert "train/regularization" in trainer.callback_metrics
    assert _distance(tied.encoder, "a", "b") < 0.3 * apart


def test_checkpoint_round_trip(tmp_path):
    trained, trainer = _fit(tmp_path, strength=0.0, steps=4)
    trainer.save_checkpoint(tmp_path / "soft.ckpt")
    checkpoint = torch.load(tmp_path / "soft.ckpt", weights_only=True)
    restored, _ = _model(1, seed=1)  # other random weights, copies equal again
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    assert _distance(restored.encoder, "a", "b") == pytest.approx(
        _distance(trained.encoder, "a", "b")
    )
    for (k, p), q in zip(trained.named_parameters(), restored.parameters(), strict=True):
        assert torch.equal(p, q), k
    trained.eval(), restored.eval()
    sub = _sub_batch()
    for name in ("a", "b"):
        expected = trained({name: sub})[name]["logits"]
        assert torch.equal(restored({name: sub})[name]["logits"], expected)


def test_init_from_reaches_every_copy(tmp_path):
    source, tasks = _model(None, seed=3)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(source, toy_datamodule(tasks))
    trainer.save_checkpoint(tmp_path / "source.ckpt")
    # init_from loads the source encoder into the base model once the copies exist.
    model, _ = _model(None, init_from=str(tmp_path / "source.ckpt"))
    model.configure_model()
    assert _distance(model.encoder, "a", "b") == 0
    pairs = zip(
        model.encoder.task_parameters("b"), source.encoder.task_parameters("a"), strict=True
    )
    assert all(torch.equal(p, q) for p, q in pairs)
    with torch.no_grad():
        for p in model.encoder.task_parameters("b"):
            p.add_(1.0)
    heads_only = {k: v for k, v in model.state_dict().items() if k.startswith("heads.")}
    model.load_state_dict(heads_only, strict=False)  # no encoder keys: the copies stay apart
    assert _distance(model.encoder, "a", "b") > 0


def test_bad_arguments():
    with pytest.raises(ConfigError, match="top_layers"):
        SoftSharedEncoder(config=dict(TINY_ENCODER), top_layers=3)
    with pytest.raises(ConfigError, match="strength"):
        SoftSharedEncoder(config=dict(TINY_ENCODER), strength=-1.0)
    model, _ = _model(1)
    with pytest.raises(ConfigError, match="no encoder copy"):
        model.encoder(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3), task="zzz")


def test_override_config_fits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    override = ROOT / "configs/transfer/regimes/soft_sharing.yaml"
    fast = ["--trainer.max_steps=3", "--trainer.limit_val_batches=1"]
    cli = cli_main(
        ["fit", "--config", str(ROOT / "configs/tiny/tiny.yaml"), "--config", str(override), *fast]
    )
    encoder = cli.model.encoder
    assert isinstance(encoder, SoftSharedEncoder) and encoder.top_layers == 1
    assert list(encoder.towers) == ["trec", "sentiment"]
    assert cli.trainer.global_step == 3
    assert "train/regularization" in cli.trainer.callback_metrics
