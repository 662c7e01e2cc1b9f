"""Seq2SeqGeneration: loss, data checks, warm-started decoder, generation, fit in both modes."""

from __future__ import annotations

import math
import random
from functools import partial

import pytest
import torch
from helpers import WORDS, quiet_trainer, tiny_model, toy_datamodule, toy_task
from transformers import BertConfig, BertLMHeadModel, BertModel, EncoderDecoderModel

from mtlkit.data import InMemory
from mtlkit.errors import DataError
from mtlkit.model import HFEncoder, MultiTaskModel
from mtlkit.model.decoders import WarmStartDecoder, shift_right
from mtlkit.tasks import Seq2SeqGeneration
from mtlkit.testing import TINY_ENCODER, build_tiny_tokenizer

TOKENS = {"decoder_start_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}


def reverse_data(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Sources of 2-6 words; the target is the first three words reversed."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        src.append(" ".join(words))
        tgt.append(" ".join(reversed(words[:3])))
    return src, tgt


def gen_task(name: str = "gen", **kw) -> Seq2SeqGeneration:
    s, t = reverse_data(40)
    vs, vt = reverse_data(12, seed=1)
    source = InMemory({"train": {"text": s, "target": t}, "validation": {"text": vs, "target": vt}})
    return Seq2SeqGeneration(name, source, max_target_length=8, **kw)


def test_loss_ignores_padding_by_hand():
    task = Seq2SeqGeneration("g", InMemory({"train": {"text": ["a"], "target": ["b"]}}))
    logits = torch.zeros(1, 3, 3)
    logits[0, 0, 1] = math.log(2.0)  # p = [1/4, 1/2, 1/4]: -log p(1) = log 2
    logits[0, 2] = torch.tensor([50.0, -50.0, 0.0])  # a padded position: must not count
    labels = torch.tensor([[1, 2, -100]])  # position 1 is uniform: -log p(2) = log 3
    assert float(task.loss(logits, labels)) == pytest.approx(math.log(6.0) / 2, abs=1e-6)
    assert task.loss_count(labels) == 2
    # label smoothing 0.1: (1 - 0.1) * nll + 0.1 * mean_k(-log p_k) per token
    smoothed = Seq2SeqGeneration(
        "g", InMemory({"train": {"text": ["a"], "target": ["b"]}}), label_smoothing=0.1
    )
    first = 0.9 * math.log(2) + 0.1 * (2 * math.log(4) + math.log(2)) / 3
    second = math.log(3)
    assert float(smoothed.loss(logits, labels)) == pytest.approx((first + second) / 2, abs=1e-6)


def test_empty_target_names_task_split_column_row():
    source = InMemory({"train": {"text": ["a b", "c d", "e"], "target": ["x", "  ", "y"]}})
    task = Seq2SeqGeneration("headline", source)
    with pytest.raises(
        DataError, match=r"task 'headline': split 'train' column 'target': empty text in row 1"
    ):
        task.load()


def test_targets_drop_cls_and_end_with_sep(tiny_tokenizer):
    task = gen_task()
    task.bind_tokenizer(tiny_tokenizer)
    out = task.tokenize({"text": ["good movie"], "target": ["bad film"]}, tiny_tokenizer)
    vocab = tiny_tokenizer.get_vocab()
    assert out["labels"] == [[vocab["bad"], vocab["film"], vocab["[SEP]"]]]
    assert task.tokens == {
        "decoder_start_token_id": vocab["[CLS]"],
        "eos_token_id": vocab["[SEP]"],
        "pad_token_id": vocab["[PAD]"],
    }
    assert shift_right(torch.tensor([[7, 8, -100]]), 2, 0).tolist() == [[2, 7, 8]]


def test_warm_start_copies_encoder_weights_and_adds_cross_attention():
    torch.manual_seed(0)
    encoder = HFEncoder(config=dict(TINY_ENCODER))
    head = WarmStartDecoder(encoder, TOKENS)
    enc_state = encoder.model.state_dict()
    dec_state = head.decoder.base_model.state_dict()
    copied = [k for k in dec_state if "crossattention" not in k]
    assert copied and all(torch.equal(dec_state[k], enc_state[k]) for k in copied)
    assert all(dec_state[k].data_ptr() != enc_state[k].data_ptr() for k in copied)  # copies
    cross = [k for k in dec_state if "crossattention" in k]
    assert len(cross) == 2 * 10  # q, k, v, output dense (weight+bias) and LayerNorm, 2 layers
    assert all(k not in enc_state for k in cross)
    # the output projection reads the (copied) word embeddings
    assert head.decoder.get_output_embeddings().weight is head.decoder.get_input_embeddings().weight


def test_tied_decoder_shares_encoder_weights():
    encoder = HFEncoder(config=dict(TINY_ENCODER))
    head = WarmStartDecoder(encoder, TOKENS, tie_encoder=True)
    enc = {id(p) for p in encoder.parameters()}
    own = [n for n, p in head.named_parameters() if id(p) not in enc]
    assert own and all("crossattention" in n or n.startswith("decoder.cls.") for n in own)
    layer = head.decoder.base_model.encoder.layer[1]
    assert layer.attention is encoder.model.encoder.layer[1].attention
    assert (
        head.decoder.get_output_embeddings().weight
        is encoder.model.embeddings.word_embeddings.weight
    )
    # a training step moves the shared weight once (one optimizer group holds it)
    task = gen_task(decoder=partial(WarmStartDecoder, tie_encoder=True))
    task.tokens = dict(TOKENS)
    module = tiny_model([task], lr_scheduler=None)
    groups = module.configure_optimizers().param_groups
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))


def _reference(encoder: HFEncoder, head: WarmStartDecoder) -> EncoderDecoderModel:
    """A separate transformers EncoderDecoderModel with copies of the same weights."""
    ref_encoder = BertModel(BertConfig(**encoder.model.config.to_dict()), add_pooling_layer=False)
    ref_encoder.load_state_dict(encoder.model.state_dict())
    ref_decoder = BertLMHeadModel(BertConfig(**head.decoder.config.to_dict()))
    ref_decoder.load_state_dict(head.decoder.state_dict())
    return EncoderDecoderModel(encoder=ref_encoder, decoder=ref_decoder).eval()


@pytest.mark.parametrize(
    "settings",
    [
        {"num_beams": 1, "max_new_tokens": 7},
        {"num_beams": 3, "max_new_tokens": 6, "length_penalty": 0.5, "no_repeat_ngram_size": 2},
    ],
    ids=["greedy", "beam"],
)
def test_generation_equals_transformers_generate(settings):
    torch.manual_seed(1)
    tokenizer = build_tiny_tokenizer()
    encoder = HFEncoder(config=dict(TINY_ENCODER))
    head = WarmStartDecoder(encoder, TOKENS)
    with torch.no_grad():  # a trained-looking decoder: cross-attention matters for the output
        for p in head.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model = MultiTaskModel(encoder, heads={"gen": head}, levels={"gen": "text"}).eval()
    batch = dict(
        tokenizer(["good movie now", "who is john in paris"], padding=True, return_tensors="pt")
    )
    ours = model.generate("gen", batch, do_sample=False, **settings)
    ref = _reference(encoder, head).generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        do_sample=False,
        **TOKENS,
        **settings,
    )
    assert ref[:, 0].tolist() == [2, 2]
    assert torch.equal(ours, ref[:, 1:])
    assert len(set(map(tuple, ours.tolist()))) == 2  # the two inputs decode differently


@pytest.mark.parametrize("mode", ["homogeneous", "mixed"])
def test_fit_generation_with_classification(tmp_path, mode):
    gen, cls = gen_task(), toy_task("cls")
    module = tiny_model([gen, cls])
    trainer = quiet_trainer(
        tmp_path,
        accelerator="cpu",
        max_steps=5,
        limit_val_batches=2,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, toy_datamodule([gen, cls], batch_mode=mode))
    logged = trainer.callback_metrics
    for name in ("bleu", "rouge1", "rouge2", "rougeL", "chrf", "exact_match", "loss"):
        value = float(logged[f"val/gen/{name}"])
        assert math.isfinite(value) and (name == "loss" or 0.0 <= value <= 1.0)
    assert "val/cls/accuracy" in logged
    assert float(logged["val/mean"]) == pytest.approx(
        (float(logged["val/gen/rougeL"]) + float(logged["val/cls/accuracy"])) / 2
    )
    # predictions are texts
    preds = module.predict_step(next(iter(trainer.datamodule.val_dataloader()[0])), 0)
    assert all(isinstance(t, str) for t in preds["gen"])


@pytest.mark.parametrize("tie", [False, True], ids=["copied", "tied"])
def test_export_round_trip_generates_the_same_text(tmp_path, tie):
    from mtlkit.cli import predict_exported
    from mtlkit.export import export_model
    from mtlkit.inference import ExportedModel

    decoder = partial(WarmStartDecoder, tie_encoder=tie)
    gen = gen_task(decoder=decoder, num_beams=2, max_new_tokens=6, no_repeat_ngram_size=2)
    cls = toy_task("cls")
    module = tiny_model([gen, cls])
    trainer = quiet_trainer(tmp_path, accelerator="cpu", max_steps=3, limit_val_batches=0)
    trainer.fit(module, toy_datamodule([gen, cls]))
    tokenizer = trainer.datamodule.tokenizer
    texts = ["good movie now", "who is john in paris", "sad day"]
    module.eval()
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        ids = module.model.generate("gen", batch, **gen.generation)
    before = gen.decode(ids)
    assert any(before)  # some text was generated

    folder = export_model(module, tokenizer, tmp_path / "exported")
    assert (folder / "decoders" / "gen" / "config.json").exists()
    exported = ExportedModel.from_folder(folder)
    predictions = exported.predict(texts)
    assert [p["text"] for p in predictions["gen"]] == before
    assert set(predictions["cls"][0]) == {"label", "probabilities"}

    lines = tmp_path / "in.txt"
    lines.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out.jsonl"
    predict_exported(str(folder), str(lines), str(out), tasks=["gen"])
    import json

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["predictions"]["gen"]["text"] for r in rows] == before


def test_pair_source_is_encoded_as_a_text_pair(tiny_tokenizer):
    source = InMemory({"train": {"text": ["good movie"], "context": ["bad film"], "target": ["x"]}})
    task = Seq2SeqGeneration("g", source, text_pair_column="context")
    task.bind_tokenizer(tiny_tokenizer)
    out = task.tokenize(
        {"text": ["good"], "context": ["bad film"], "target": ["x"]}, tiny_tokenizer
    )
    vocab = tiny_tokenizer.get_vocab()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    assert out["input_ids"] == [[cls, vocab["good"], sep, vocab["bad"], vocab["film"], sep]]
    assert out["token_type_ids"] == [[0, 0, 0, 1, 1, 1]]
    assert task.required_columns() == ["text", "context", "target"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"primary_metric": "bleu4"}, "primary_metric must be one of"),
        ({"num_beams": 0}, "num_beams must be an integer >= 1"),
        ({"max_target_length": 1}, "max_target_length must be an integer >= 2"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
    ],
)
def test_bad_settings_are_one_config_error(kwargs, message):
    from mtlkit.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"task 'g': {message}"):
        Seq2SeqGeneration("g", InMemory({"train": {"text": ["a"], "target": ["b"]}}), **kwargs)


def test_every_weighting_method_trains_with_a_generation_task(tmp_path):
    from mtlkit.testing.methods import weighting_methods

    # the shipped configs name the quickstart's tasks
    overrides = {"static": {"weights": {"gen": 0.5}}, "uncertainty": {"regression_tasks": []}}
    for name, method in weighting_methods().items():
        gen, cls = gen_task(), toy_task("cls")
        weighting = method.build(**overrides.get(name, {}))
        module = tiny_model([gen, cls], weighting=weighting, lr_scheduler=None)
        trainer = quiet_trainer(
            tmp_path / name, accelerator="cpu", max_steps=2, limit_val_batches=0
        )
        trainer.fit(module, toy_datamodule([gen, cls], batch_mode="mixed"))
        assert trainer.global_step == 2, name
        assert math.isfinite(float(trainer.callback_metrics["train/gen/loss"])), name
        assert math.isfinite(float(trainer.callback_metrics["train/gen/weight"])), name


def test_mtlkit_export_of_a_generation_checkpoint(tmp_path, monkeypatch):
    from pathlib import Path

    from mtlkit.cli import cli_main, export_checkpoint
    from mtlkit.inference import ExportedModel

    config = str(Path(__file__).resolve().parents[1] / "configs/tiny/generation.yaml")
    monkeypatch.chdir(tmp_path)
    args = ["--trainer.max_steps=3", "--trainer.enable_checkpointing=true"]
    args += ["--trainer.default_root_dir=run", "--trainer.limit_val_batches=0"]
    cli = cli_main(["fit", "--config", config, *args])
    ckpt = next(Path("run").rglob("*.ckpt"))
    folder = export_checkpoint([config], str(ckpt), "exported")
    texts = ["good game night", "who is happy"]
    module = cli.model.eval()
    tokenizer = cli.datamodule.tokenizer
    with torch.no_grad():
        ids = module.model.generate(
            "reverse",
            dict(tokenizer(texts, padding=True, return_tensors="pt")),
            **module.tasks["reverse"].generation,
        )
    expected = module.tasks["reverse"].decode(ids)
    predicted = ExportedModel.from_folder(folder).predict(texts, tasks=["reverse"])
    assert [p["text"] for p in predicted["reverse"]] == expected


def test_any_decoder_from_a_config_or_a_folder(tmp_path):
    encoder = HFEncoder(config=dict(TINY_ENCODER))
    small = {"model_type": "bert", "vocab_size": 155, "hidden_size": 16, "num_hidden_layers": 1}
    small |= {"num_attention_heads": 2, "intermediate_size": 20}
    head = WarmStartDecoder(encoder, TOKENS, config=small)
    # another width: transformers' projection of the encoder states is part of the head
    assert head.enc_to_dec_proj.in_features == 32 and head.enc_to_dec_proj.out_features == 16
    assert "enc_to_dec_proj.weight" in head.state_dict()
    model = MultiTaskModel(encoder, heads={"gen": head}, levels={"gen": "text"}).eval()
    batch = dict(build_tiny_tokenizer()(["good movie"], return_tensors="pt"))
    logits = model({"gen": {**batch, "labels": torch.tensor([[7, 8, 3]])}})["gen"]["logits"]
    assert logits.shape == (1, 3, 155)
    assert model.generate("gen", batch, max_new_tokens=4).shape[1] <= 4
    # a causal LM folder without cross-attention gets it added
    lm = BertLMHeadModel(BertConfig(**{k: v for k, v in small.items() if k != "model_type"}))
    lm.config.is_decoder = True
    lm.save_pretrained(tmp_path / "lm")
    loaded = WarmStartDecoder(encoder, TOKENS, name_or_path=str(tmp_path / "lm"))
    assert loaded.decoder.config.add_cross_attention
    same = loaded.decoder.bert.embeddings.word_embeddings.weight
    assert torch.equal(same, lm.bert.embeddings.word_embeddings.weight)


def test_checkpoint_token_ids_must_match_the_tokenizer(tiny_tokenizer):
    task = gen_task()
    task.load_label_state(
        {"tokens": {"decoder_start_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}}
    )
    assert task.is_ready  # restored from a checkpoint, no tokenizer needed (export)
    bound = gen_task()
    bound.bind_tokenizer(tiny_tokenizer)
    bound.load_label_state(bound.label_state())  # same ids: fine
    with pytest.raises(DataError, match=r"task 'gen': the checkpoint's decoder token ids"):
        bound.load_label_state({"tokens": {**bound.tokens, "eos_token_id": 7}})


def test_targets_longer_than_the_decoder_positions_fail_before_training():
    from mtlkit.errors import ConfigError

    task = Seq2SeqGeneration(
        "g", InMemory({"train": {"text": ["a"], "target": ["b"]}}), max_target_length=128
    )
    task.tokens = dict(TOKENS)
    with pytest.raises(ConfigError, match=r"task 'g': .* allow 129 decoder positions .* has 128"):
        tiny_model([task])  # TINY_ENCODER: 128 positions


def test_init_from_carries_a_generation_head(tmp_path):
    gen, cls = gen_task(), toy_task("cls")
    module = tiny_model([gen, cls])
    trainer = quiet_trainer(
        tmp_path, accelerator="cpu", max_steps=2, limit_val_batches=0, enable_checkpointing=True
    )
    trainer.fit(module, toy_datamodule([gen, cls]))
    ckpt = str(next(tmp_path.rglob("*.ckpt")))
    target = gen_task()
    target.tokens = dict(gen.tokens)
    new = tiny_model([target, toy_task("cls")], init_from=ckpt, init_heads=["gen"])
    new.configure_model()  # building the model reads init_from
    trained, loaded = module.heads["gen"].state_dict(), new.heads["gen"].state_dict()
    assert set(trained) == set(loaded)
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)
    assert "heads.gen" in new.init_report.loaded and "heads.cls" in new.init_report.new


def test_export_of_a_decoder_of_another_width_and_init_from_the_export(tmp_path):
    from mtlkit.export import export_model
    from mtlkit.inference import ExportedModel

    small = {"model_type": "bert", "vocab_size": 155, "hidden_size": 16, "num_hidden_layers": 1}
    small |= {"num_attention_heads": 2, "intermediate_size": 20}
    gen = gen_task(decoder=partial(WarmStartDecoder, config=small), max_new_tokens=5)
    cls = toy_task("cls")
    module = tiny_model([gen, cls])
    trainer = quiet_trainer(tmp_path, accelerator="cpu", max_steps=1, limit_val_batches=0)
    trainer.fit(module, toy_datamodule([gen, cls]))
    module.eval()
    torch.manual_seed(0)
    with torch.no_grad():  # outputs that depend on every weight, the projection included
        for p in module.heads["gen"].parameters():
            p.add_(torch.randn_like(p) * 0.3)
    tokenizer = trainer.datamodule.tokenizer
    texts = ["good movie now", "who is john in paris", "sad day"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        expected = gen.decode(module.model.generate("gen", batch, **gen.generation))
    folder = export_model(module, tokenizer, tmp_path / "exported")
    predicted = ExportedModel.from_folder(folder).predict(texts, tasks=["gen"])
    assert [p["text"] for p in predicted["gen"]] == expected
    target = gen_task(decoder=partial(WarmStartDecoder, config=small))
    target.tokens = dict(gen.tokens)
    new = tiny_model([target], init_from=str(folder), init_heads=["gen"])
    new.configure_model()  # building the model reads init_from
    trained, loaded = module.heads["gen"].state_dict(), new.heads["gen"].state_dict()
    assert set(trained) == set(loaded) and "enc_to_dec_proj.weight" in loaded
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)


def test_a_tiny_bert2bert_learns_to_copy(tmp_path):
    """End to end (teacher forcing, target alignment, decoding, metrics): the target is the
    source's first four words. Measured after 300 steps: every metric 1.0, loss 0.095."""
    rng = random.Random(0)

    def rows(n: int) -> tuple[list[str], list[str]]:
        words = [[rng.choice(WORDS) for _ in range(rng.randint(4, 6))] for _ in range(n)]
        return [" ".join(w) for w in words], [" ".join(w[:4]) for w in words]

    (s, t), (vs, vt) = rows(400), rows(40)
    splits = {"train": {"text": s, "target": t}, "validation": {"text": vs, "target": vt}}
    task = Seq2SeqGeneration("copy", InMemory(splits), max_target_length=6)
    optimizer = partial(torch.optim.AdamW, lr=3e-3)
    module = tiny_model([task], lr_scheduler=None, optimizer=optimizer)
    trainer = quiet_trainer(
        tmp_path,
        accelerator="cpu",
        max_steps=300,
        limit_val_batches=10,
        val_check_interval=300,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, toy_datamodule([task], batch_size=16, steps_per_epoch=300))
    logged = trainer.callback_metrics
    assert float(logged["val/copy/exact_match"]) >= 0.9
    assert float(logged["val/copy/bleu"]) >= 0.9
    assert float(logged["val/copy/rougeL"]) >= 0.95


def test_cached_features_refuse_a_generation_task():
    from mtlkit.errors import ConfigError
    from mtlkit.transfer import FeatureDataModule

    encoder = HFEncoder(config=dict(TINY_ENCODER))
    data = FeatureDataModule(
        tasks=[gen_task()], encoder=encoder, tokenizer="pkg:mtlkit/testing/tiny_tokenizer"
    )
    with pytest.raises(ConfigError, match=r"task 'gen': cached features serve classification"):
        data.setup("fit")


def test_validate_then_fit_in_one_process(tmp_path, monkeypatch):
    # trainer.validate leaves metric states made in inference mode; corpus BLEU updates them in
    # place, so the next fit's validation needs states made in its own grad mode.
    from pathlib import Path

    from mtlkit.cli import cli_main

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs/tiny/generation.yaml"
    cli = cli_main(["--config", str(config), "--trainer.max_steps=3"], run=False)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3 and "val/reverse/bleu" in cli.trainer.callback_metrics
