"""The multi-task module: shared encoding, heads, weighting, optimisation, checkpoints."""

import lightning as L
import pytest
import torch
from helpers import TINY_ENCODER, quiet_trainer, tiny_model, toy_datamodule, toy_task

from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.optim import LinearWarmupDecay
from mtlkit.weighting import EqualWeighting, StaticWeighting, StepContext, WeightedLoss, Weighting


def _batch(mode="mixed"):
    dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)], batch_mode=mode, batch_size=8)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        if len(batch["tasks"]) == 2 or mode == "homogeneous":
            return dm, batch
    raise AssertionError("no mixed batch")


def test_one_encoder_pass_equals_separate_passes():
    torch.manual_seed(0)
    dm, batch = _batch()
    model = tiny_model(dm.tasks).eval()
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    joint = model(batch["tasks"])
    assert len(calls) == 1
    for name, sub in batch["tasks"].items():
        alone = model({name: sub})[name]["logits"]
        torch.testing.assert_close(joint[name]["logits"], alone, atol=1e-5, rtol=1e-4)


def test_training_step_reaches_every_present_head():
    torch.manual_seed(0)
    dm, batch = _batch()
    model = tiny_model(dm.tasks)
    model.log = lambda *a, **k: None
    loss = model.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name in batch["tasks"]:
        assert model.heads[name][1].weight.grad.abs().sum() > 0


def test_static_weighting_matches_formula():
    w = StaticWeighting({"a": 0.25, "b": 2.0})
    w.setup(["a", "b", "c"])
    losses = {"a": torch.tensor(4.0), "b": torch.tensor(1.5), "c": torch.tensor(3.0)}
    out = w(losses, StepContext(step=0, task_names=["a", "b", "c"]))
    assert out.loss.item() == pytest.approx(0.25 * 4 + 2 * 1.5 + 1.0 * 3)
    assert {k: v.item() for k, v in out.weights.items()} == {"a": 0.25, "b": 2.0, "c": 1.0}
    state = w.state_dict()
    w2 = StaticWeighting({"a": 0.25, "b": 2.0})
    w2.setup(["a", "b", "c"])
    w2.load_state_dict(state)
    with pytest.raises(ConfigError, match="unknown tasks \\['z'\\]"):
        StaticWeighting({"z": 1.0}).setup(["a"])


def test_equal_weighting_is_plain_sum():
    out = EqualWeighting()(
        {"a": torch.tensor(1.0), "b": torch.tensor(2.5)}, StepContext(0, ["a", "b"])
    )
    assert out.loss.item() == pytest.approx(3.5)


class _NeedsAll(Weighting):
    needs_all_tasks = True

    def forward(self, losses, ctx):
        return WeightedLoss(sum(losses.values()), {t: torch.ones(()) for t in losses})


def test_method_needing_all_tasks_rejects_homogeneous_batches(tmp_path):
    dm = toy_datamodule([toy_task("a"), toy_task("b")], batch_mode="homogeneous")
    model = tiny_model(dm.tasks, weighting=_NeedsAll())
    trainer = quiet_trainer(tmp_path, max_steps=1)
    with pytest.raises(ConfigError, match="set data.batch_mode: mixed"):
        trainer.fit(model, dm)


def test_tokenizer_that_does_not_match_encoder(tmp_path):
    dm = toy_datamodule([toy_task("a")])
    enc = dict(TINY_ENCODER, vocab_size=50)
    from mtlkit.training import MultiTaskModule

    model = MultiTaskModule(HFEncoder(config=enc), dm.tasks)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    with pytest.raises(ConfigError, match="155 tokens but the encoder's embedding has 50"):
        trainer.fit(model, dm)


def test_head_learning_rate_group():
    model = tiny_model([toy_task("a")], head_lr=1e-2, lr_scheduler=None)
    model.trainer = None
    opt = model.configure_optimizers()
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["heads"]["lr"] == 1e-2 and groups["encoder"]["lr"] == 5e-5


def test_linear_warmup_decay_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = LinearWarmupDecay(opt, total_steps=10, warmup=4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[-1] == pytest.approx(1 - 5 / 6)


@pytest.mark.parametrize("mode", ["homogeneous", "mixed"])
def test_short_fit_beats_chance_and_checkpoint_restores_heads(mode, tmp_path):
    L.seed_everything(0)
    tasks = [toy_task("a", n=120), toy_task("b", n=120, seed=1)]
    dm = toy_datamodule(tasks, batch_mode=mode, batch_size=16, steps_per_epoch=40)
    model = tiny_model(dm.tasks, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    trainer = quiet_trainer(tmp_path, max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    assert metrics["val/a/accuracy"] > 0.75 and metrics["val/b/accuracy"] > 0.75
    assert "val/mean" in metrics and "train/a/weight" in metrics
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert ckpt["mtlkit_tasks"]["a"]["num_labels"] == 2
    fresh = tiny_model([toy_task("a", n=120), toy_task("b", n=120, seed=1)])
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"])
