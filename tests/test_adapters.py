"""Per-task LoRA adapters and soft prompts (peft): gradients, freezing, saving, configs."""

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import TINY_ENCODER, quiet_trainer, toy_datamodule, toy_task
from peft import PeftConfig
from safetensors.torch import load_file

from mtlkit.cli import cli_main
from mtlkit.data import InMemory
from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.model.adapters import LoRAEncoder
from mtlkit.model.prompt_tuning import PromptTuningEncoder
from mtlkit.tasks import TokenClassification
from mtlkit.training import MultiTaskModule
from mtlkit.weighting import EqualWeighting

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("topic", "mood")  # names that are not substrings of peft's "lora_" prefix


def _lora(**kw):
    return LoRAEncoder(config=dict(TINY_ENCODER), r=4, alpha=8.0, **kw)


def _prompt(**kw):
    return PromptTuningEncoder(config=dict(TINY_ENCODER), num_virtual_tokens=3, **kw)


ENCODERS = {"lora": _lora, "prompt": _prompt}


def _module(kind, seed=0, **kw):
    torch.manual_seed(seed)
    tasks = [toy_task(TASKS[0]), toy_task(TASKS[1], seed=1)]
    return _with_tasks(ENCODERS[kind](), tasks, **kw)


def _with_tasks(encoder, tasks, **kw):
    # A weighting per model: the default instance is shared, and .eval() would reach it.
    kw.setdefault("weighting", EqualWeighting())
    kw.setdefault("optimizer", _adamw)
    return MultiTaskModule(encoder, tasks, lr_scheduler=None, **kw)


@functools.cache
def _mixed_batch():
    dm = toy_datamodule([toy_task(TASKS[0]), toy_task(TASKS[1], seed=1)], batch_mode="mixed")
    dm.setup("fit")
    for batch in dm.train_dataloader():
        if len(batch["tasks"]) == 2:
            return batch["tasks"]
    raise AssertionError("no batch with both tasks")


def _adapter(model, task):
    """A task's adapter parameters: ``...lora_A.<task>.weight`` or ``prompts.<task>...``."""
    return {n: p for n, p in model.encoder.named_parameters() if f".{task}." in n}


def _base(encoder):
    return {k: v.clone() for k, v in encoder.model.state_dict().items() if "lora_" not in k}


def _perturb_lora_b(model):
    # lora_B starts at zero, which would leave lora_A without gradient: give both a signal.
    with torch.no_grad():
        for name, p in model.encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)


@pytest.mark.parametrize("kind", ["lora", "prompt"])
def test_each_task_loss_reaches_only_its_own_adapter(kind):
    model = _module(kind).eval()  # no dropout: both passes see the same function
    _perturb_lora_b(model)
    subs = _mixed_batch()

    def grads(loss_tasks):
        model.zero_grad(set_to_none=True)
        losses = model.task_losses(model(subs), subs)  # both tasks run before the backward
        sum(losses[t] for t in loss_tasks).backward()
        return {t: {n: p.grad for n, p in _adapter(model, t).items()} for t in TASKS}

    joint = grads(TASKS)
    for task in TASKS:
        alone = grads([task])
        other = next(t for t in TASKS if t != task)
        assert all(g is None or not g.any() for g in alone[other].values())
        assert any(g is not None and g.abs().sum() > 0 for g in alone[task].values())
        for name, g in alone[task].items():  # the joint step gives each adapter its own share
            assert joint[task][name] is not None, name
            torch.testing.assert_close(joint[task][name], g)


@pytest.mark.parametrize("kind", ["lora", "prompt"])
def test_optimizer_holds_every_adapter_and_no_pretrained_weight(kind):
    model = _module(kind)
    model(_mixed_batch())  # switching adapters must not freeze the inactive ones
    opt = model.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for task in TASKS:
        params = _adapter(model, task)
        assert params and all(id(p) in in_opt and p.requires_grad for p in params.values())
    base = [p for n, p in model.encoder.model.named_parameters() if "lora_" not in n]
    assert base and not any(id(p) in in_opt or p.requires_grad for p in base)
    assert {id(p) for p in model.heads.parameters()} <= in_opt


@pytest.mark.parametrize("kind", ["lora", "prompt"])
def test_training_moves_every_adapter_and_no_pretrained_weight(kind, tmp_path):
    L.seed_everything(0)
    dm = toy_datamodule(
        [toy_task(TASKS[0]), toy_task(TASKS[1], seed=1)], batch_mode="mixed", steps_per_epoch=4
    )
    model = _with_tasks(ENCODERS[kind](), dm.tasks)
    model.configure_model()
    base = _base(model.encoder)
    before = {t: {n: p.clone() for n, p in _adapter(model, t).items()} for t in TASKS}
    quiet_trainer(tmp_path, max_steps=4, limit_val_batches=0).fit(model, dm)
    after = _base(model.encoder)
    assert after.keys() == base.keys()
    assert all(torch.equal(after[k], base[k]) for k in base)  # bit-identical
    for task in TASKS:
        moved = [n for n, p in _adapter(model, task).items() if not torch.equal(p, before[task][n])]
        assert moved, f"{task}'s adapter did not train"


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-2)


def test_lora_state_dict_keeps_hugging_face_keys_for_the_frozen_weights():
    torch.manual_seed(0)
    plain = HFEncoder(config=dict(TINY_ENCODER)).eval()
    lora = _lora()
    lora.prepare_tasks(list(TASKS))
    keys = set(lora.model.state_dict())
    assert "encoder.layer.0.attention.self.query.weight" in keys
    assert "encoder.layer.0.attention.self.query.lora_A.topic.weight" in keys
    assert not any("base_layer" in k for k in keys)
    # init_from's loader writes Hugging Face keys into encoder.model: they reach peft's layers.
    result = lora.model.load_state_dict(plain.model.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all("lora_" in k for k in result.missing_keys)
    ids, mask = torch.randint(5, 150, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    lora.eval()
    torch.testing.assert_close(lora(ids, mask, task="topic"), plain(ids, mask))  # lora_B = 0
    # The other way round: a LoRA run's base weights load into a plain encoder.
    other = HFEncoder(config=dict(TINY_ENCODER))
    result = other.model.load_state_dict(lora.model.state_dict(), strict=False)
    assert result.missing_keys == [] and all("lora_" in k for k in result.unexpected_keys)


@pytest.mark.parametrize("kind", ["lora", "prompt"])
def test_init_from_loads_the_pretrained_weights_under_the_adapters(kind, tmp_path):
    torch.manual_seed(3)  # a fully fine-tuned multi-task model
    source = _with_tasks(HFEncoder(config=dict(TINY_ENCODER)), [toy_task(t) for t in TASKS])
    ckpt = {"state_dict": source.state_dict()}
    source.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "source.ckpt")
    model = _module(kind, seed=4, init_from=str(tmp_path / "source.ckpt"))
    model.configure_model()  # building the model reads init_from
    assert _base(model.encoder).keys() == _base(source.encoder).keys()
    for key, value in _base(source.encoder).items():
        assert torch.equal(model.encoder.model.state_dict()[key], value), key
    new = [k for k in model.init_report.new if k.startswith("encoder.")]
    assert new and all(".topic." in k or ".mood." in k for k in new)  # only the adapters


@pytest.mark.parametrize("kind", ["lora", "prompt"])
def test_checkpoint_round_trip(kind, tmp_path):
    dm = toy_datamodule([toy_task(TASKS[0]), toy_task(TASKS[1], seed=1)], batch_mode="mixed")
    model = _with_tasks(ENCODERS[kind](), dm.tasks)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert any(f".{TASKS[1]}." in k for k in ckpt["state_dict"])
    fresh = _module(kind, seed=1)
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"])  # strict: every adapter and base weight
    subs = _mixed_batch()
    model.eval(), fresh.eval()
    for task, out in model(subs).items():
        torch.testing.assert_close(fresh(subs)[task]["logits"], out["logits"])


@pytest.mark.parametrize("kind", ["lora", "prompt"])
def test_save_and_load_adapters_in_peft_format(kind, tmp_path):
    trained = _module(kind, seed=0)
    _perturb_lora_b(trained)
    with torch.no_grad():
        for p in _adapter(trained, TASKS[1]).values():
            p.add_(0.5)
    trained.encoder.save_adapters(tmp_path)
    for task in TASKS:
        config = PeftConfig.from_pretrained(str(tmp_path / task))
        assert config.peft_type.value == ("LORA" if kind == "lora" else "PROMPT_TUNING")
        assert load_file(tmp_path / task / "adapter_model.safetensors")
    ids, mask = torch.randint(5, 150, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    trained.eval()
    expected = {t: trained.encoder(ids, mask, task=t) for t in TASKS}

    fresh = _module(kind, seed=0).eval()  # the same pretrained weights, other adapters
    with torch.no_grad():
        for task in TASKS:
            for p in _adapter(fresh, task).values():
                p.normal_(0.0, 0.3)
    assert fresh.encoder.load_adapters(tmp_path, tasks=[TASKS[0]]) == [TASKS[0]]
    torch.testing.assert_close(fresh.encoder(ids, mask, task=TASKS[0]), expected[TASKS[0]])
    assert not torch.allclose(fresh.encoder(ids, mask, task=TASKS[1]), expected[TASKS[1]])
    fresh.encoder.load_adapters(tmp_path)
    torch.testing.assert_close(fresh.encoder(ids, mask, task=TASKS[1]), expected[TASKS[1]])
    assert all(p.requires_grad for t in TASKS for p in _adapter(fresh, t).values())

    torch.manual_seed(0)  # adapters_from: loaded when the adapters are created
    encoder = ENCODERS[kind](adapters_from=str(tmp_path))
    encoder.prepare_tasks(list(TASKS))
    encoder.eval()
    torch.testing.assert_close(encoder(ids, mask, task=TASKS[1]), expected[TASKS[1]])
    with pytest.raises(ConfigError, match="no adapter for task"):
        encoder.load_adapters(tmp_path, tasks=["nope"])


def test_prompt_states_align_with_the_input():
    encoder = _prompt()
    encoder.prepare_tasks(list(TASKS))
    encoder.eval()
    ids = torch.randint(5, 150, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], 1).long()
    short = encoder(ids, torch.ones(1, 6, dtype=torch.long), task="topic")
    long = encoder(padded, mask, task="topic")
    assert short.shape == (1, 6, 32) and long.shape == (1, 10, 32)
    torch.testing.assert_close(long[:, :6], short)  # the prompt is not masked, the padding is
    assert not torch.allclose(short, encoder(ids, torch.ones(1, 6, dtype=torch.long)))
    types = torch.ones(1, 6, dtype=torch.long)  # sentence pairs: token types are kept
    assert not torch.allclose(encoder(ids, torch.ones_like(ids), types, task="topic"), short)
    with pytest.raises(ConfigError, match="virtual tokens exceed"):
        encoder(
            torch.ones(1, 127, dtype=torch.long), torch.ones(1, 127, dtype=torch.long), task="topic"
        )


def test_prompt_tuning_with_a_token_level_task(tmp_path):
    L.seed_everything(0)
    words = [["john", "is", "in", "paris"], ["london", "is", "a", "city"]] * 4
    tags = [[1, 0, 0, 1], [1, 0, 0, 0]] * 4
    source = InMemory({"train": {"tokens": words, "tags": tags}})
    task = TokenClassification(name="ner", source=source, label_names=["O", "B-X"])
    dm = toy_datamodule([task], steps_per_epoch=2)
    model = _with_tasks(_prompt(), dm.tasks)
    quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1, num_sanity_val_steps=0).fit(model, dm)
    subs = next(iter(dm.train_dataloader()))["tasks"]
    out = model(subs)["ner"]
    labels = subs["ner"]["labels"]
    assert out["logits"].shape == (*labels.shape, 2)  # one output per real token
    loss = model.task_losses({"ner": out}, subs)["ner"]
    loss.backward()
    assert (
        torch.isfinite(loss) and _adapter(model, "ner")["prompts.ner.embedding.weight"].grad.any()
    )


def test_bad_arguments():
    with pytest.raises(ConfigError, match="cannot name a peft adapter"):
        _lora().prepare_tasks(["news.topic"])
    with pytest.raises(ConfigError, match="LoRA needs r >= 1"):
        _lora(dropout=1.5)
    with pytest.raises(ConfigError, match="cannot add LoRA adapters"):
        LoRAEncoder(config=dict(TINY_ENCODER), target_modules=["nope"]).prepare_tasks(["topic"])
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        PromptTuningEncoder(config=dict(TINY_ENCODER), num_virtual_tokens=0)
    with pytest.raises(ConfigError, match="no adapter for task 'mood'"):
        encoder = _lora()
        encoder.prepare_tasks(["topic"])
        encoder(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), task="mood")


@pytest.mark.parametrize(
    "regime, cls", [("lora", LoRAEncoder), ("prompt_tuning", PromptTuningEncoder)]
)
def test_regime_config_stacks_on_the_tiny_config_and_fits(regime, cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/tiny/tiny.yaml"),
        "--config",
        str(ROOT / f"configs/transfer/regimes/{regime}.yaml"),
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
    ]
    cli = cli_main(args)
    assert type(cli.model.encoder) is cls and cli.trainer.global_step == 2
    assert sorted(cli.model.encoder.adapters.names) == ["sentiment", "trec"]
