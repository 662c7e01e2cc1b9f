"""A short multi-task fit on each tiny decoder-only backbone (classification, regression and
token classification, both batch modes), and its export: ``ExportedModel`` predicts what the
trained module does, with the tokenizer padding on the right or on the left."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from decoder_helpers import BPE_TOKENIZER, CONFIGS, FAMILIES, decoder
from helpers import quiet_trainer, toy_task, toy_texts

from mtlkit.cli import cli_main
from mtlkit.data import InMemory, MultiTaskDataModule
from mtlkit.export import export_model
from mtlkit.inference import ExportedModel
from mtlkit.model import CausalLMEncoder
from mtlkit.tasks import Regression, SequenceClassification, TokenClassification
from mtlkit.training import MultiTaskModule

ROOT = Path(__file__).resolve().parents[1]
TAGS = ["O", "B-X", "I-X"]
INPUTS = ["good movie now", "bad", "what is the city of paris 42", "xyzzy love game win night"]


def _tasks(n: int = 24) -> list:
    texts, labels = toy_texts(n)
    labels = [["bad", "good"][y] for y in labels]
    words = [t.split() for t in texts]
    return [
        SequenceClassification("topic", InMemory({"train": {"text": texts, "label": labels}})),
        Regression(
            "score",
            InMemory({"train": {"text": texts, "label": [float(len(w)) for w in words]}}),
        ),
        TokenClassification(
            "tags",
            InMemory(
                {"train": {"tokens": words, "tags": [[TAGS[len(x) % 3] for x in w] for w in words]}}
            ),
            label_names=TAGS,
        ),
    ]


def _fit(family: str, batch_mode: str, tmp_path) -> tuple[MultiTaskModule, MultiTaskDataModule]:
    L.seed_everything(0)
    args = dict(tokenizer=BPE_TOKENIZER, batch_size=6, cache_dir=None, steps_per_epoch=3)
    dm = MultiTaskDataModule(_tasks(), batch_mode=batch_mode, **args)
    model = MultiTaskModule(decoder(family), dm.tasks, pooling="last", lr_scheduler=None)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert trainer.global_step == 3
    metrics = trainer.callback_metrics
    for name in ("topic", "score", "tags"):
        assert math.isfinite(float(metrics[f"val/{name}/loss"])), name
    return model.eval(), dm


@pytest.mark.parametrize("batch_mode", ["homogeneous", "mixed"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fit_moves_the_backbone_and_every_head(family, batch_mode, tmp_path):
    L.seed_everything(0)
    before = {n: p.clone() for n, p in decoder(family).named_parameters()}
    model, _ = _fit(family, batch_mode, tmp_path)
    moved = [n for n, p in model.encoder.named_parameters() if not torch.equal(p, before[n])]
    assert any(".0." in n for n in moved) and any(".1." in n for n in moved)  # both layers


def _module_logits(model: MultiTaskModule, tokenizer, name: str) -> tuple[dict, torch.Tensor]:
    """The module's logits for INPUTS, tokenized and padded by the task itself (right)."""
    words = [t.split() for t in INPUTS]
    raw = {
        "topic": {"text": INPUTS, "label": [0] * len(INPUTS)},
        "score": {"text": INPUTS, "label": [0.0] * len(INPUTS)},
        "tags": {"tokens": words, "tags": [[0] * len(w) for w in words]},
    }[name]
    task = model.tasks[name]
    sub = task.collate(task.tokenize(raw, tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        return sub, model({name: sub})[name]["logits"]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip_on_either_padding_side(family, tmp_path):
    model, dm = _fit(family, "homogeneous", tmp_path)
    tokenizer = dm.tokenizer
    exported = ExportedModel.from_folder(export_model(model, tokenizer, tmp_path / "exported"))
    assert exported.tokenizer.pad_token == tokenizer.eos_token  # set by the data module
    assert exported.pooling == "last" and exported.encoder.is_causal
    for side in ("right", "left"):  # Llama and Qwen tokenizers often pad on the left
        exported.tokenizer.padding_side = side
        padded = exported.tokenizer(INPUTS, padding=True)["attention_mask"]
        assert [row[0 if side == "left" else -1] for row in padded].count(0) == 3
        logits = exported.logits(INPUTS, batch_size=3)  # chunks of unequal lengths
        for name in ("topic", "score"):
            _, expected = _module_logits(model, tokenizer, name)
            got = torch.stack(logits[name]).reshape(expected.shape)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        sub, expected = _module_logits(model, tokenizer, "tags")
        for i, row in enumerate(logits["tags"]):
            real = sub["attention_mask"][i].bool()
            torch.testing.assert_close(row, expected[i][real], atol=1e-5, rtol=1e-4)
        out = exported.predict(INPUTS, batch_size=3)
        names = model.tasks["topic"].label_names
        _, topic = _module_logits(model, tokenizer, "topic")
        assert [p["label"] for p in out["topic"]] == [names[i] for i in topic.argmax(-1).tolist()]
        assert [p["words"] for p in out["tags"]] == [t.split() for t in INPUTS]


def test_shipped_decoder_config_matches_the_tiny_builders(tmp_path, monkeypatch):
    """configs/tiny/decoder_only.yaml (fitted by tests/test_configs.py) builds the tiny Qwen2
    of :func:`tiny_decoder_configs` on the shipped BPE tokenizer, read at the last token."""
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", str(ROOT / "configs/tiny/decoder_only.yaml")], run=False)
    encoder = cli.model.encoder
    assert encoder.is_causal and cli.model.pooling == "last"
    expected = dict(CONFIGS["qwen2"])
    model_type = expected.pop("model_type")
    config = encoder.model.config
    assert config.model_type == model_type
    assert {k: getattr(config, k) for k in expected} == expected
    assert cli.datamodule.tokenizer_path == BPE_TOKENIZER


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # tied and untied LM head
def test_causal_lm_encoder_fits_resumes_initialises_and_exports(family, tmp_path):
    L.seed_everything(0)
    args = dict(tokenizer=BPE_TOKENIZER, batch_size=6, cache_dir=None, steps_per_epoch=2)
    dm = MultiTaskDataModule(_tasks()[:2], batch_mode="mixed", **args)

    def module(**kw):
        enc = decoder(family, cls=CausalLMEncoder)
        return MultiTaskModule(enc, dm.tasks, pooling="last", lr_scheduler=None, **kw)

    model = module()
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert "encoder.lm_head.weight" in ckpt["state_dict"]
    fresh = module()
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"])  # strict: base model, LM head and heads
    assert fresh.encoder.causal_lm.get_output_embeddings() is fresh.encoder.lm_head
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # init_from reads the base model (encoder.model.*) into any encoder of the family.
    plain = MultiTaskModule(
        decoder(family, seed=5), dm.tasks, pooling="last", init_from=str(tmp_path / "last.ckpt")
    )
    plain.configure_model()  # reads init_from
    for key, value in model.encoder.model.state_dict().items():
        assert torch.equal(plain.encoder.model.state_dict()[key], value), key
    # The export holds the base model: ExportedModel reproduces the trained module.
    model.eval()
    exported = ExportedModel.from_folder(export_model(model, dm.tokenizer, tmp_path / "x"))
    _, expected = _module_logits(model, dm.tokenizer, "topic")
    got = torch.stack(exported.logits(INPUTS, tasks=["topic"], batch_size=3)["topic"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_last_token_learns_a_label_set_by_the_first_word(family, tmp_path):
    """The toy label is the first word ("good"/"bad"); the head reads the last real token, so
    the fit beats chance only if causal attention carries the first word to the end."""
    L.seed_everything(0)
    tasks = [toy_task("a", n=120), toy_task("b", n=120, seed=1)]
    args = dict(tokenizer=BPE_TOKENIZER, cache_dir=None, steps_per_epoch=40, batch_size=16)
    dm = MultiTaskDataModule(tasks, **args)
    adamw = lambda p: torch.optim.AdamW(p, lr=3e-3)  # noqa: E731
    model = MultiTaskModule(decoder(family), dm.tasks, pooling="last", optimizer=adamw)
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    assert metrics["val/a/accuracy"] > 0.75 and metrics["val/b/accuracy"] > 0.75
