"""Seq2SeqBackbone: a T5/BART encoder shared by all tasks, its decoder the generation head."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import quiet_trainer, toy_datamodule, toy_task
from test_generation import TOKENS, gen_task
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from mtlkit.errors import ConfigError
from mtlkit.model import MultiTaskModel
from mtlkit.model.seq2seq import Seq2SeqBackbone
from mtlkit.testing import build_tiny_tokenizer
from mtlkit.training import MultiTaskModule

# Tiny configs of transformers' own test sizes, on the tiny BERT tokenizer's 155 ids
# ([PAD] = 0 pads and starts T5's decoder, [SEP] = 3 ends).
T5 = {
    "model_type": "t5",
    "vocab_size": 155,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 37,
    "num_layers": 2,
    "num_heads": 4,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 3,
}
BART = {
    "model_type": "bart",
    "vocab_size": 155,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 3,
    "decoder_start_token_id": 3,
    "forced_eos_token_id": None,
}
REFERENCE = {
    "t5": (T5Config, T5ForConditionalGeneration),
    "bart": (BartConfig, BartForConditionalGeneration),
}


@pytest.mark.parametrize("config", [T5, BART], ids=["t5", "bart"])
@pytest.mark.parametrize(
    "settings",
    [{"num_beams": 1, "max_new_tokens": 7}, {"num_beams": 3, "max_new_tokens": 6}],
    ids=["greedy", "beam"],
)
def test_generation_equals_the_seq2seq_models_own_generate(config, settings):
    torch.manual_seed(0)
    backbone = Seq2SeqBackbone(config=dict(config))
    head = backbone.decoder_head(TOKENS)
    with torch.no_grad():
        for p in backbone.seq2seq.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model = MultiTaskModel(backbone, heads={"gen": head}, levels={"gen": "text"}).eval()
    tokenizer = build_tiny_tokenizer()
    texts = ["good movie now", "who is john in paris", "sad"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    ours = model.generate("gen", batch, **settings)
    # a separate transformers model with the same weights
    config_cls, model_cls = REFERENCE[config["model_type"]]
    ref_model = model_cls(config_cls(**{k: v for k, v in config.items() if k != "model_type"}))
    ref_model.load_state_dict(backbone.seq2seq.state_dict())
    ref = ref_model.eval().generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **settings
    )
    assert torch.equal(ours, ref[:, 1:])
    assert len(set(map(tuple, ours.tolist()))) > 1


def test_heads_own_the_decoder_and_the_encoder_is_shared():
    backbone = Seq2SeqBackbone(config=dict(BART))
    head = backbone.decoder_head(TOKENS)
    enc = {id(p) for p in backbone.parameters()}
    dec = {id(p) for p in head.parameters()}
    # only the tied token embedding is in both
    assert enc & dec == {id(backbone.seq2seq.get_input_embeddings().weight)}
    assert "final_logits_bias" in head.state_dict()
    with pytest.raises(ConfigError, match="one decoder"):
        backbone.decoder_head(TOKENS)


@pytest.mark.parametrize(
    ("config", "mode"), [(T5, "mixed"), (BART, "homogeneous")], ids=["t5", "bart"]
)
def test_fit_generation_and_classification_on_a_seq2seq_backbone(tmp_path, config, mode):
    gen, cls = gen_task(), toy_task("cls")
    module = MultiTaskModule(Seq2SeqBackbone(config=dict(config)), [gen, cls], lr_scheduler=None)
    data = toy_datamodule([gen, cls], batch_mode=mode)
    data.setup("fit")  # the tokenizer's special ids, then the heads
    module.configure_model()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = quiet_trainer(tmp_path, accelerator="cpu", max_steps=5, limit_val_batches=2)
    trainer.fit(module, data)
    logged = trainer.callback_metrics
    for name in ("bleu", "rouge1", "rouge2", "rougeL", "chrf", "exact_match"):
        assert 0.0 <= float(logged[f"val/gen/{name}"]) <= 1.0
    assert math.isfinite(float(logged["val/cls/accuracy"]))
    after = module.state_dict()
    # encoder, decoder and classification head all trained
    prefixes = ("encoder.model.block.", "encoder.model.layers.", "heads.gen.decoder.", "heads.cls.")
    for prefix in prefixes:
        keys = [k for k in after if k.startswith(prefix)]
        if prefix.startswith("encoder.model.") and not keys:
            continue  # T5 names its blocks "block", BART "layers"
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), prefix


@pytest.mark.parametrize("config", [T5, BART], ids=["t5", "bart"])
def test_export_round_trip(tmp_path, config):
    from mtlkit.export import export_model
    from mtlkit.inference import ExportedModel

    gen = gen_task(num_beams=2, max_new_tokens=6)
    cls = toy_task("cls")
    module = MultiTaskModule(Seq2SeqBackbone(config=dict(config)), [gen, cls], lr_scheduler=None)
    trainer = quiet_trainer(tmp_path, accelerator="cpu", max_steps=2, limit_val_batches=0)
    trainer.fit(module, toy_datamodule([gen, cls], batch_mode="mixed"))
    tokenizer = trainer.datamodule.tokenizer
    texts = ["good movie now", "who is john in paris", "sad day"]
    module.eval()
    torch.manual_seed(0)
    with torch.no_grad():  # the tiny models learn to end at once (empty texts): perturb them
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = gen.decode(module.model.generate("gen", batch, **gen.generation))
        probabilities = module.model.shared_forward(batch, ["cls"])["cls"].softmax(-1)
    assert any(expected)
    folder = export_model(module, tokenizer, tmp_path / "exported")
    exported = ExportedModel.from_folder(folder)
    predicted = exported.predict(texts)
    assert [p["text"] for p in predicted["gen"]] == expected
    got = torch.tensor([list(p["probabilities"].values()) for p in predicted["cls"]])
    torch.testing.assert_close(got, probabilities, rtol=1e-5, atol=1e-6)


def test_init_from_a_backbone_checkpoint(tmp_path):
    gen, cls = gen_task(), toy_task("cls")
    module = MultiTaskModule(Seq2SeqBackbone(config=dict(T5)), [gen, cls], lr_scheduler=None)
    trainer = quiet_trainer(
        tmp_path, accelerator="cpu", max_steps=2, limit_val_batches=0, enable_checkpointing=True
    )
    trainer.fit(module, toy_datamodule([gen, cls]))
    ckpt = str(next(tmp_path.rglob("*.ckpt")))
    target = gen_task()
    target.tokens = dict(gen.tokens)
    new = MultiTaskModule(
        Seq2SeqBackbone(config=dict(T5)),
        [target, toy_task("cls")],
        init_from=ckpt,
        init_heads=["gen"],
    )
    new.configure_model()  # building the model reads init_from
    trained, loaded = module.state_dict(), new.state_dict()
    for key in [k for k in trained if k.startswith(("encoder.", "heads.gen."))]:
        assert torch.equal(trained[key], loaded[key]), key
    assert "heads.cls" in new.init_report.new
