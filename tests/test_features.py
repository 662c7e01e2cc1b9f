"""Feature-based transfer: a frozen encoder's outputs computed once, cached, and trained on."""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch
from helpers import TOKENIZER, quiet_trainer, tiny_model, toy_task
from lightning.pytorch.callbacks import ModelCheckpoint

from mtlkit.data import InMemory
from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.model.pooling import pool
from mtlkit.tasks import SequenceClassification, TokenClassification
from mtlkit.testing import TINY_ENCODER
from mtlkit.transfer import FeatureDataModule

POSITIVE, NEGATIVE = (
    ["good", "great", "love", "happy", "win"],
    ["bad", "awful", "hate", "sad", "lose"],
)
NEUTRAL = ["movie", "film", "city", "team", "day", "night", "game", "news"]


def _encoder(seed: int = 0) -> HFEncoder:
    torch.manual_seed(seed)
    return HFEncoder(config=dict(TINY_ENCODER))


def _sentiment(n: int, seed: int) -> dict[str, list]:
    """Two sentiment words and up to three neutral ones: the label is linear in mean features."""
    rng, texts = random.Random(seed), []
    for i in range(n):
        words = rng.sample(POSITIVE if i % 2 else NEGATIVE, 2) + rng.sample(
            NEUTRAL, rng.randint(0, 3)
        )
        rng.shuffle(words)
        texts.append(" ".join(words))
    return {"text": texts, "label": [i % 2 for i in range(n)]}


def _tagging(n: int = 12) -> TokenClassification:
    rng = random.Random(0)
    words = [[rng.choice(POSITIVE + NEUTRAL) for _ in range(rng.randint(1, 7))] for _ in range(n)]
    tags = [[int(w in POSITIVE) for w in row] for row in words]
    return TokenClassification(
        "tags", InMemory({"train": {"tokens": words, "tags": tags}}), num_labels=2
    )


def _data(tasks, encoder, **kw) -> FeatureDataModule:
    args = dict(
        tokenizer=TOKENIZER, batch_size=4, steps_per_epoch=5, cache_dir=None, feature_batch_size=5
    )
    args.update(kw)
    return FeatureDataModule(tasks=tasks, encoder=encoder, **args)


class _Calls:
    """Counts forward passes of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        module.register_forward_hook(lambda *_: setattr(self, "count", self.count + 1))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_features_equal_a_direct_encoder_forward(pooling):
    encoder = _encoder()
    data = _data([toy_task("seq", n=14), _tagging()], encoder, pooling=pooling)
    data.setup("fit")
    encoder.eval()
    for name in ("seq", "tags"):
        split = data.splits[name]["train"]
        for i in range(len(split)):
            ids = torch.tensor([split.dataset[i]["input_ids"]])
            with torch.no_grad():
                hidden = encoder(ids, torch.ones_like(ids))
            row = split[[i]]["features"]
            if name == "seq":
                assert torch.allclose(
                    row[0], pool(hidden, torch.ones_like(ids), pooling)[0], atol=1e-5
                )
            else:  # one state per token, as many as input_ids
                assert torch.allclose(row[0], hidden[0], atol=1e-5)
    batch = next(iter(data.train_dataloader()))
    for name, sub in batch["tasks"].items():
        assert "features" in sub and sub["features"].shape[0] == sub["input_ids"].shape[0]
        if name == "tags":  # padded to the sub-batch width; zero where the mask is
            assert sub["features"].shape[:2] == sub["labels"].shape == sub["attention_mask"].shape
            assert torch.all(sub["features"][sub["attention_mask"] == 0] == 0)


def test_cache_hit_miss_and_invalidation(tmp_path):
    def run(encoder, seq_texts=14, pooling="mean") -> tuple[int, FeatureDataModule]:
        calls = _Calls(encoder)
        data = _data(
            [toy_task("seq", n=seq_texts), _tagging()],
            encoder,
            cache_dir=str(tmp_path),
            pooling=pooling,
        )
        data.setup("fit")
        return calls.count, data

    first, data = run(_encoder())
    assert first > 0
    again, cached = run(_encoder())  # same config and weights, same data: read from disk
    assert again == 0
    for name in ("seq", "tags"):
        assert torch.equal(
            cached.splits[name]["train"].features, data.splits[name]["train"].features
        )
    changed = _encoder()
    with torch.no_grad():
        changed.model.encoder.layer[1].output.dense.bias.add_(1e-3)  # one small weight change
    assert run(changed)[0] == first
    assert 0 < run(_encoder(), seq_texts=15)[0] < first  # other texts: only that task again
    assert 0 < run(_encoder(), pooling="cls")[0] < first  # sequence task only: tokens unpooled
    assert run(_encoder())[0] == 0


def _sentiment_data(encoder, **kw) -> tuple[SequenceClassification, FeatureDataModule]:
    source = InMemory({"train": _sentiment(400, 0), "validation": _sentiment(200, 1)})
    task = SequenceClassification("sentiment", source, num_labels=2)
    return task, _data([task], encoder, batch_size=32, steps_per_epoch=None, **kw)


def test_heads_learn_on_cached_features_without_running_the_encoder(tmp_path):
    task, data = _sentiment_data(_encoder())
    model = tiny_model([task], optimizer=lambda p: torch.optim.AdamW(p, lr=3e-2), lr_scheduler=None)
    assert not torch.equal(
        model.encoder.model.embeddings.word_embeddings.weight,
        data.encoder.model.embeddings.word_embeddings.weight,
    )
    model_calls, data_calls = _Calls(model.encoder), _Calls(data.encoder)
    trainer = quiet_trainer(tmp_path, max_epochs=12, num_sanity_val_steps=0)
    trainer.fit(model, data)
    metrics = trainer.validate(model, data, verbose=False)[0]
    assert metrics["val/sentiment/accuracy"] > 0.9  # chance: 0.5
    assert model_calls.count == 0 and data_calls.count > 0  # features only, computed once
    # The model's encoder is the data module's, frozen: the checkpoint is a working text model.
    assert not any(p.requires_grad for p in model.encoder.parameters())
    for p, q in zip(
        model.encoder.state_dict().values(), data.encoder.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q)


class _Plans(L.Callback):
    def __init__(self) -> None:
        self.plans: dict[int, tuple] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sub = batch["tasks"]["sentiment"]
        self.plans[trainer.global_step] = (
            batch["epoch"],
            batch["step"],
            sub["features"].sum().item(),
        )


def test_resume_replays_the_same_plans(tmp_path):
    def fit(ckpt_path=None) -> _Plans:
        task, data = _sentiment_data(_encoder(), cache_dir=str(tmp_path / "cache"))
        data.steps_per_epoch = 4
        model = tiny_model([task], lr_scheduler=None)
        plans = _Plans()
        every = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
        trainer = quiet_trainer(
            tmp_path,
            max_steps=7,
            limit_val_batches=0,
            enable_checkpointing=True,
            callbacks=[plans, every],
        )
        trainer.fit(model, data, ckpt_path=ckpt_path)
        return plans

    unbroken = fit()
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    assert checkpoint.exists()
    resumed = fit(str(checkpoint))
    assert sorted(resumed.plans) == [3, 4, 5, 6]
    assert {s: unbroken.plans[s] for s in resumed.plans} == resumed.plans


def test_model_and_data_must_agree():
    task, data = _sentiment_data(_encoder())
    with pytest.raises(ConfigError, match="pooling"):
        data.bind_model(tiny_model([task], pooling="cls"))
    other = dict(TINY_ENCODER, hidden_size=16)
    from mtlkit.training import MultiTaskModule

    with pytest.raises(ConfigError, match="different architectures"):
        data.bind_model(MultiTaskModule(HFEncoder(config=other), [task]))
    with pytest.raises(ConfigError, match="pooling"):
        _data([task], _encoder(), pooling="max")
