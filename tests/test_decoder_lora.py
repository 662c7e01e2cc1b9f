"""Per-task LoRA (peft) on decoder-only backbones: the family's attention projections are
adapted, each task's loss reaches only its own adapter, the pretrained weights stay
bit-identical through training, and adapters survive a save/load round trip."""

import warnings

import lightning as L
import pytest
import torch
from decoder_helpers import BPE_TOKENIZER, FAMILIES, decoder
from helpers import quiet_trainer, toy_task
from peft.tuners.lora import LoraLayer

from mtlkit.data import MultiTaskDataModule
from mtlkit.model.adapters import LoRAEncoder
from mtlkit.training import MultiTaskModule
from mtlkit.weighting import EqualWeighting

TASKS = ("topic", "mood")
# LoRA's usual targets per family: GPT-2's fused query/key/value projection, Llama's and
# Qwen2's query and value projections (Hu et al. 2021 adapt W_q and W_v).
TARGETS = {"gpt2": {"c_attn"}, "llama": {"q_proj", "v_proj"}, "qwen2": {"q_proj", "v_proj"}}


def _lora(family, seed=0):
    return decoder(family, seed=seed, cls=LoRAEncoder, r=4, alpha=8.0, dropout=0.0)


def _datamodule(**kw):
    tasks = [toy_task(TASKS[0]), toy_task(TASKS[1], seed=1)]
    args = dict(tokenizer=BPE_TOKENIZER, batch_size=4, cache_dir=None, steps_per_epoch=3)
    return MultiTaskDataModule(tasks, batch_mode="mixed", **{**args, **kw})


def _module(family, dm, seed=0):
    return MultiTaskModule(
        _lora(family, seed),
        dm.tasks,
        pooling="last",
        weighting=EqualWeighting(),
        lr_scheduler=None,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
    )


def _adapter(module, task):
    return {n: p for n, p in module.encoder.named_parameters() if f".{task}." in n}


def _base(encoder):
    return {k: v.clone() for k, v in encoder.model.state_dict().items() if "lora_" not in k}


def _mixed_batch(dm):
    dm.setup("fit")
    for batch in dm.train_dataloader():
        if len(batch["tasks"]) == 2:
            return batch["tasks"]
    raise AssertionError("no batch with both tasks")


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_the_familys_attention_projections(family):
    enc = _lora(family)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc.prepare_tasks(list(TASKS))
    # GPT-2's Conv1D stores its weight transposed: the adapter must know it (and peft not warn).
    assert enc.adapters.peft_model.peft_config["topic"].fan_in_fan_out == (family == "gpt2")
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]
    adapted = {
        n.rsplit(".", 1)[-1] for n, m in enc.model.named_modules() if isinstance(m, LoraLayer)
    }
    assert adapted == TARGETS[family]
    lora = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)  # everything else frozen


@pytest.mark.parametrize("family", FAMILIES)
def test_each_task_loss_reaches_only_its_own_adapter(family):
    dm = _datamodule()
    module = _module(family, dm)
    module.configure_model()
    module.eval()
    with torch.no_grad():  # lora_B starts at 0, which would leave lora_A without gradient
        for name, p in module.encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    subs = _mixed_batch(dm)
    for task in TASKS:
        module.zero_grad(set_to_none=True)
        losses = module.task_losses(module(subs), subs)  # both tasks run before the backward
        losses[task].backward()
        other = next(t for t in TASKS if t != task)
        own = _adapter(module, task)
        assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own.values())
        assert all(p.grad is None or not p.grad.any() for p in _adapter(module, other).values())
        base = [p for n, p in module.encoder.named_parameters() if "lora_" not in n]
        assert all(p.grad is None for p in base)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_keeps_base_weights_bit_identical_and_round_trips(family, tmp_path):
    L.seed_everything(0)
    dm = _datamodule()
    module = _module(family, dm)
    module.configure_model()
    base = _base(module.encoder)
    before = {t: {n: p.clone() for n, p in _adapter(module, t).items()} for t in TASKS}
    quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(module, dm)
    after = _base(module.encoder)
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
    for task in TASKS:
        moved = [
            n for n, p in _adapter(module, task).items() if not torch.equal(p, before[task][n])
        ]
        assert moved, f"{task}'s adapter did not train"

    # peft-format save/load: a fresh encoder with the same base weights predicts the same.
    module.encoder.save_adapters(tmp_path / "adapters")
    fresh = _lora(family)  # same seed: the same random base weights
    fresh.prepare_tasks(list(TASKS))
    assert fresh.load_adapters(tmp_path / "adapters") == list(TASKS)
    subs = _mixed_batch(dm)
    module.encoder.eval(), fresh.eval()
    for task in TASKS:
        sub = subs[task]
        args = (sub["input_ids"], sub["attention_mask"])
        expected = module.encoder(*args, task=task)
        torch.testing.assert_close(fresh(*args, task=task), expected)
        untrained = _lora(family)
        untrained.prepare_tasks(list(TASKS))
        assert not torch.allclose(untrained.eval()(*args, task=task), expected, atol=1e-4)
