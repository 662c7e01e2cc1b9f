"""AdaLoRA per task: each task's rank budget is allocated from its own steps, as peft's own
single-adapter AdaLoRA does for a model trained on that task alone (the reference)."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from helpers import quiet_trainer, toy_datamodule, toy_task
from peft import AdaLoraConfig, get_peft_model
from transformers import AutoConfig, AutoModel

from mtlkit.errors import ConfigError
from mtlkit.model.adalora import AdaLoRAEncoder
from mtlkit.testing import TINY_ENCODER
from mtlkit.training import MultiTaskModule
from mtlkit.weighting import EqualWeighting

SCHEDULE = dict(total_step=12, init_r=4, target_r=2, tinit=2, tfinal=2, delta_t=1)
TASKS = ("topic", "mood")


def _reference(encoder: AdaLoRAEncoder, task: str):
    """peft's own AdaLoRA with one trainable adapter, holding the same weights as ``task``'s."""
    cfg = dict(TINY_ENCODER)
    model = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    model.pooler = None
    s = SCHEDULE
    config = AdaLoraConfig(
        total_step=s["total_step"], init_r=s["init_r"], target_r=s["target_r"], tinit=s["tinit"],
        tfinal=s["tfinal"], deltaT=s["delta_t"], lora_alpha=8.0, lora_dropout=0.0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft = get_peft_model(model, config, adapter_name=task)
    ours = encoder.model.state_dict()
    with torch.no_grad():
        for name, p in peft.base_model.model.named_parameters():
            p.copy_(ours[name.replace(".base_layer.", ".")])
    return peft


def test_each_tasks_budget_is_allocated_from_its_own_steps():
    torch.manual_seed(0)
    encoder = AdaLoRAEncoder(config=dict(TINY_ENCODER), orth_reg_weight=0.0, **SCHEDULE)
    encoder.prepare_tasks(list(TASKS))
    encoder.eval()
    reference = _reference(encoder, "topic").eval()
    ids, mask = torch.randint(5, 150, (3, 8)), torch.ones(3, 8, dtype=torch.long)
    target = torch.randn(3, 8, 32)
    ours_opt = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.5)
    ref_opt = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.5)
    for step in range(SCHEDULE["total_step"]):
        task = TASKS[step % 2]  # one task per step, as homogeneous batches
        ours_opt.zero_grad(set_to_none=True)
        ((encoder(ids, mask, task=task) - target) ** 2).mean().backward()
        ours_opt.step()
        encoder.after_optimizer_step(step)
        if task == "topic":  # the reference trains on topic's steps only
            ref_opt.zero_grad(set_to_none=True)
            out = reference(input_ids=ids, attention_mask=mask).last_hidden_state
            ((out - target) ** 2).mean().backward()
            ref_opt.step()
            reference.base_model.update_and_allocate(step)
    ref_state = reference.base_model.model.state_dict()
    for name, value in encoder.model.state_dict().items():
        if ".topic" in name and "lora_" in name:
            torch.testing.assert_close(value, ref_state[name])
    expected = reference.peft_config["topic"].rank_pattern
    assert expected and encoder.rank_pattern("topic") == expected
    matrices = len(expected)
    for task in TASKS:  # the final budget: target_r triplets per matrix on average
        pattern = encoder.rank_pattern(task)
        assert sum(sum(kept) for kept in pattern.values()) == SCHEDULE["target_r"] * matrices
        for name, p in encoder.model.named_parameters():
            if name in pattern:
                kept = torch.tensor(pattern[name])
                assert not p[~kept].any() and p[kept].all(), name
    assert encoder.rank_pattern("mood") != encoder.rank_pattern("topic")


def test_the_budget_update_runs_after_each_step_of_a_multi_task_fit(tmp_path):
    L.seed_everything(0)
    tasks = [toy_task(TASKS[0]), toy_task(TASKS[1], seed=1)]
    dm = toy_datamodule(tasks, steps_per_epoch=SCHEDULE["total_step"])
    encoder = AdaLoRAEncoder(config=dict(TINY_ENCODER), **SCHEDULE)
    model = MultiTaskModule(encoder, dm.tasks, weighting=EqualWeighting(), lr_scheduler=None)
    seen = []
    original = encoder.after_optimizer_step
    encoder.after_optimizer_step = lambda step: (seen.append(step), original(step))
    trainer = quiet_trainer(tmp_path, max_steps=SCHEDULE["total_step"], limit_val_batches=0)
    trainer.fit(model, dm)
    assert seen == list(range(SCHEDULE["total_step"]))
    assert encoder.finalised == set(TASKS)
    for task in TASKS:
        pattern = encoder.rank_pattern(task)
        assert sum(sum(kept) for kept in pattern.values()) == SCHEDULE["target_r"] * len(pattern)
    # The allocation state is checkpointed: a resumed run allocates where it stopped.
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    fresh = AdaLoRAEncoder(config=dict(TINY_ENCODER), **SCHEDULE)
    resumed = MultiTaskModule(fresh, dm.tasks, weighting=EqualWeighting(), lr_scheduler=None)
    resumed.on_load_checkpoint(ckpt)
    resumed.load_state_dict(ckpt["state_dict"])
    assert fresh.finalised == set(TASKS)
    assert all(fresh.rank_pattern(t) == encoder.rank_pattern(t) for t in TASKS)


def test_a_step_with_non_finite_gradients_is_left_out_of_the_importance():
    torch.manual_seed(0)
    encoder = AdaLoRAEncoder(config=dict(TINY_ENCODER), **SCHEDULE)
    encoder.prepare_tasks(list(TASKS))
    for name, p in encoder.model.named_parameters():
        if "lora_" in name and name.endswith(".topic"):
            p.grad = torch.ones_like(p)
        if "lora_" in name and name.endswith(".mood"):
            p.grad = torch.full_like(p, float("inf"))  # an fp16 overflow the scaler skipped
    encoder.after_optimizer_step(3)
    assert encoder.allocators["topic"].exp_avg_ipt
    assert not encoder.allocators["mood"].exp_avg_ipt


def test_orthogonal_regularization_is_the_papers():
    torch.manual_seed(0)
    encoder = AdaLoRAEncoder(config=dict(TINY_ENCODER), orth_reg_weight=0.3, **SCHEDULE)
    encoder.prepare_tasks(["topic"])
    terms = []
    for name, p in encoder.model.named_parameters():  # R(P, Q) = ||P^T P - I||_F + ||Q Q^T - I||_F
        if "lora_A.topic" in name:
            terms.append(torch.linalg.norm(p @ p.T - torch.eye(p.shape[0])))
        if "lora_B.topic" in name:
            terms.append(torch.linalg.norm(p.T @ p - torch.eye(p.shape[1])))
    assert len(terms) == 2 * 2 * TINY_ENCODER["num_hidden_layers"]  # A and B of query, value
    torch.testing.assert_close(encoder.regularization(), 0.3 * torch.stack(terms).mean())


def test_bad_arguments():
    from mtlkit.model.ia3 import IA3Encoder

    for cls, kw in ((AdaLoRAEncoder, {"total_step": 10}), (IA3Encoder, {})):
        with pytest.raises(ConfigError, match="gradient_checkpointing"):
            cls(config=dict(TINY_ENCODER), gradient_checkpointing=True, **kw)

    with pytest.raises(ConfigError, match="total_step > tinit"):
        AdaLoRAEncoder(config=dict(TINY_ENCODER), total_step=4, tinit=2, tfinal=2)
    with pytest.raises(ConfigError, match="target_r <= init_r"):
        AdaLoRAEncoder(config=dict(TINY_ENCODER), total_step=40, init_r=2, target_r=4)
    with pytest.raises(ConfigError, match="cannot add AdaLoRAEncoder adapters"):
        encoder = AdaLoRAEncoder(config=dict(TINY_ENCODER), total_step=10, target_modules=["x"])
        encoder.prepare_tasks(["topic"])
