"""Generation on a decoder-only backbone (``Seq2SeqGeneration(decoder_only=True)`` on a
``CausalLMEncoder``): rows are prompt + target with the loss on target tokens only (checked
against a hand-computed cross-entropy and transformers' own ``labels=`` loss), decoding is the
causal LM's ``generate`` (greedy and beam, checked against transformers on each unpadded
prompt), and a tiny fit next to a classification task in both batch modes."""

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from decoder_helpers import BPE_TOKENIZER, FAMILIES, decoder
from helpers import quiet_trainer, toy_texts

from mtlkit.cli import cli_main
from mtlkit.data import InMemory, MultiTaskDataModule
from mtlkit.data.datamodule import with_pad_token
from mtlkit.errors import ConfigError
from mtlkit.export import export_model
from mtlkit.inference import ExportedModel
from mtlkit.model import CausalLMEncoder, HFEncoder, MultiTaskModel
from mtlkit.model.adapters import CausalLMLoRAEncoder
from mtlkit.model.prompt_lm import PromptLMHead, left_align
from mtlkit.tasks import Seq2SeqGeneration, SequenceClassification
from mtlkit.testing import build_tiny_bpe_tokenizer
from mtlkit.training import MultiTaskModule

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = with_pad_token(build_tiny_bpe_tokenizer(), "tiny")
EOS = TOKENIZER.eos_token_id
PROMPTS = ["good movie", "what is the city of paris", "bad"]
TARGETS = ["great film", "paris", "awful game now"]


def _task(**kw) -> Seq2SeqGeneration:
    data = InMemory({"train": {"text": PROMPTS, "target": TARGETS}})
    args = {"max_length": 32, "max_target_length": 16} | kw
    task = Seq2SeqGeneration("gen", data, decoder_only=True, **args)
    task.bind_tokenizer(TOKENIZER)
    return task


def _model(family: str, task: Seq2SeqGeneration) -> MultiTaskModel:
    encoder = decoder(family, cls=CausalLMEncoder)
    model = MultiTaskModel(encoder, "last")
    model.add_task("gen", "text", task.build_head_on(encoder, 0.0))
    return model.eval()


def _batch(task: Seq2SeqGeneration) -> dict:
    rows = task.tokenize({"text": PROMPTS, "target": TARGETS}, TOKENIZER)
    return task.collate(rows, TOKENIZER.pad_token_id)


def _ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def test_row_layout_by_hand():
    batch = _batch(_task())
    good, movie, great, film = (_ids(" " + w)[0] for w in ("good", "movie", "great", "film"))
    width = batch["input_ids"].shape[1]
    # prompt [good, movie] + target [great, film, eos] without its last token
    assert batch["input_ids"][0].tolist() == [good, movie, great, film] + [EOS] * (width - 4)
    assert batch["labels"][0].tolist() == [-100, great, film, EOS] + [-100] * (width - 4)
    assert batch["attention_mask"][0].tolist() == [1] * 4 + [0] * (width - 4)
    # the prompts, left-padded
    prompt_width = batch["prompt_ids"].shape[1]
    assert batch["prompt_ids"][0].tolist() == [EOS] * (prompt_width - 2) + [good, movie]
    assert batch["prompt_mask"][2].tolist() == [0] * (prompt_width - 1) + [1]
    assert batch["target_text"] == TARGETS


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_is_the_cross_entropy_of_target_tokens_only(family):
    """The task's loss equals a hand-computed mean of -log p(target token | prefix) over the
    target tokens of the unpadded rows, and transformers' own ``labels=`` loss."""
    task = _task()
    model = _model(family, task)
    batch = _batch(task)
    with torch.no_grad():
        logits = model({"gen": batch})["gen"]["logits"]
        loss = task.loss(logits, batch["labels"])
        lm = model.encoder.causal_lm
        nll, count, hf_sum = 0.0, 0, 0.0
        for prompt, target in zip(PROMPTS, TARGETS, strict=True):
            p, y = _ids(" " + prompt), [*_ids(" " + target), EOS]
            full = torch.tensor([p + y])
            row_logits = lm(input_ids=full).logits[0]  # no padding, plain positions
            logp = row_logits.log_softmax(-1)
            for k, token in enumerate(y):  # target token k is predicted at position len(p)+k-1
                nll -= float(logp[len(p) + k - 1, token])
            count += len(y)
            labels = torch.tensor([[-100] * len(p) + y])  # transformers shifts them itself
            hf_sum += float(lm(input_ids=full, labels=labels).loss) * len(y)
    assert task.loss_count(batch["labels"]) == count == 2 + 1 + 3 + 3  # targets with eos
    assert float(loss) == pytest.approx(nll / count, rel=1e-5)
    assert float(loss) == pytest.approx(hf_sum / count, rel=1e-5)


def test_the_loss_reads_no_padding_label():
    """Every non-ignored label is a target token or the end token: none falls on padding or
    on a prompt token (whatever the pad id, labels are computed from the real tokens)."""
    task = _task()
    batch = _batch(task)
    real = batch["attention_mask"].bool()
    assert not (batch["labels"] != -100)[~real].any()
    logits = torch.zeros(*batch["labels"].shape, len(TOKENIZER))
    # A uniform prediction: the loss is log(vocab) whatever the number of ignored positions.
    assert float(task.loss(logits, batch["labels"])) == pytest.approx(math.log(len(TOKENIZER)))


def test_left_align():
    ids = torch.tensor([[5, 6, 0, 0], [0, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    out, out_mask = left_align(ids, mask, pad=1)
    assert out.tolist() == [[1, 5, 6], [7, 8, 9]]
    assert out_mask.tolist() == [[0, 1, 1], [1, 1, 1]]


def _strip(ids: list[int]) -> list[int]:
    """Generated ids up to and including the first end token (the rest is padding)."""
    return ids[: ids.index(EOS) + 1] if EOS in ids else ids


@pytest.mark.parametrize("settings", [{"num_beams": 1}, {"num_beams": 3, "length_penalty": 1.0}])
@pytest.mark.parametrize("family", FAMILIES)
def test_generation_equals_transformers_generate(family, settings):
    """The task's evaluation path (left-padded prompts of a batch) generates what transformers'
    ``generate`` gives on the same causal LM for each prompt alone (no padding)."""
    task = _task(max_new_tokens=6, **settings)
    model = _model(family, task)
    batch = _batch(task)
    with torch.no_grad():
        out = model({"gen": batch})["gen"]
        generate = model.generator("gen", out["features"], batch)
        texts, targets = task.eval_metric_inputs(out["logits"], batch, generate)
        got = generate(**task.generation)
        # Inference passes the source as input_ids, padded on the right by the tokenizer.
        right = TOKENIZER([" " + p for p in PROMPTS], add_special_tokens=False, padding=True)
        inputs = {k: torch.tensor(v) for k, v in right.items()}
        assert inputs["attention_mask"][:, -1].tolist() != [1, 1, 1]
        from_inputs = model.generate("gen", inputs, **task.generation)
    assert torch.equal(from_inputs, got)
    assert targets == TARGETS
    lm = model.encoder.causal_lm
    for row, prompt in enumerate(PROMPTS):
        ids = torch.tensor([_ids(" " + prompt)])
        with torch.no_grad():
            ref = lm.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                eos_token_id=EOS,
                pad_token_id=EOS,
                max_new_tokens=6,
                do_sample=False,
                **settings,
            )[0, ids.shape[1] :]
        assert _strip(got[row].tolist()) == _strip(ref.tolist()), (family, prompt)
        assert texts[row] == TOKENIZER.decode(ref, skip_special_tokens=True)


def test_mismatched_settings_fail_with_one_clear_error():
    task = _task()
    with pytest.raises(ConfigError, match="needs a decoder-only .* got HFEncoder"):
        task.build_head_on(decoder("gpt2"), 0.0)  # HFEncoder: no LM head, a warm-started decoder
    plain = Seq2SeqGeneration("gen", task.source, max_length=32, max_target_length=16)
    plain.bind_tokenizer(TOKENIZER)
    with pytest.raises(ConfigError, match="CausalLMEncoder is a .* set decoder_only: true"):
        plain.build_head_on(decoder("gpt2", cls=CausalLMEncoder), 0.0)
    long = _task(max_length=100, max_new_tokens=40)
    with pytest.raises(ConfigError, match="allow 140 positions .* the encoder has 128"):
        long.build_head_on(decoder("llama", cls=CausalLMEncoder), 0.0)
    with pytest.raises(ConfigError, match="needs mtlkit.model.CausalLMEncoder"):
        PromptLMHead(decoder("qwen2", cls=HFEncoder), {"eos_token_id": 0, "pad_token_id": 0})


def _fit_tasks(n: int = 24) -> list:
    texts, labels = toy_texts(n)
    # The reply is the prompt's first word and "now": learnable by a tiny model.
    replies = [f"{t.split()[0]} now" for t in texts]
    return [
        Seq2SeqGeneration(
            "reply",
            InMemory({"train": {"text": texts, "target": replies}}),
            decoder_only=True,
            max_length=24,
            max_target_length=6,
        ),
        SequenceClassification(
            "topic", InMemory({"train": {"text": texts, "label": labels}}), num_labels=2
        ),
    ]


@pytest.mark.parametrize("batch_mode", ["homogeneous", "mixed"])
@pytest.mark.parametrize("family", ["gpt2", "qwen2"])  # tied and untied LM head
def test_fit_next_to_a_classification_task(family, batch_mode, tmp_path):
    L.seed_everything(0)
    args = dict(tokenizer=BPE_TOKENIZER, batch_size=6, cache_dir=None, steps_per_epoch=3)
    dm = MultiTaskDataModule(_fit_tasks(), batch_mode=batch_mode, **args)
    encoder = decoder(family, cls=CausalLMEncoder)
    before = {n: p.clone() for n, p in encoder.named_parameters()}
    model = MultiTaskModule(encoder, dm.tasks, pooling="last", lr_scheduler=None)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert trainer.global_step == 3
    metrics = trainer.callback_metrics
    for key in ("rougeL", "rouge1", "bleu", "chrf", "exact_match", "loss"):
        assert math.isfinite(float(metrics[f"val/reply/{key}"])), key
    assert math.isfinite(float(metrics["val/topic/accuracy"]))
    moved = {n for n, p in model.encoder.named_parameters() if not torch.equal(p, before[n])}
    assert "lm_head.weight" in moved or model.encoder.lm_head_tied  # the LM head trains
    assert any(".1." in n for n in moved)
    assert model.heads["reply"].encoder is model.encoder
    assert not list(model.heads["reply"].parameters())  # the LM head is the encoder's


def test_fit_learns_the_reply(tmp_path):
    """A short fit learns to answer with the prompt's first word and "now" (the encoder runs
    once per mixed batch for both tasks): generated replies match the targets exactly."""
    L.seed_everything(0)
    tasks = _fit_tasks(96)
    args = dict(tokenizer=BPE_TOKENIZER, batch_size=16, cache_dir=None, steps_per_epoch=40)
    dm = MultiTaskDataModule(tasks, batch_mode="mixed", **args)
    adamw = lambda p: torch.optim.AdamW(p, lr=5e-3)  # noqa: E731
    model = MultiTaskModule(
        decoder("gpt2", cls=CausalLMEncoder), dm.tasks, pooling="last", optimizer=adamw
    )
    trainer = quiet_trainer(tmp_path, max_epochs=4)
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    assert metrics["val/reply/exact_match"] > 0.9, metrics["val/reply/exact_match"]
    assert metrics["val/topic/accuracy"] > 0.9


def test_shipped_config_trains_the_decoder_only_generation_task(tmp_path, monkeypatch):
    """configs/tiny/decoder_generation.yaml (also fitted by tests/test_configs.py) puts the
    generation task on the CausalLMEncoder's own LM head and logs its generation metrics."""
    monkeypatch.chdir(tmp_path)
    config = str(ROOT / "configs/tiny/decoder_generation.yaml")
    cli = cli_main(["fit", "--config", config, "--trainer.max_steps=3"])
    assert isinstance(cli.model.encoder, CausalLMEncoder)
    assert isinstance(cli.model.heads["reverse"], PromptLMHead)
    metrics = cli.trainer.callback_metrics
    assert {"val/reverse/rougeL", "val/reverse/bleu", "val/trec/accuracy"} <= set(metrics)


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # tied and untied LM head
def test_export_round_trip_generates_the_same_text(family, tmp_path):
    """The export holds the whole causal LM (LM head included): ExportedModel generates what the
    trained module does, next to the classification task's logits, and init_from reads it."""
    L.seed_everything(0)
    args = dict(tokenizer=BPE_TOKENIZER, batch_size=6, cache_dir=None, steps_per_epoch=3)
    dm = MultiTaskDataModule(_fit_tasks(), batch_mode="mixed", **args)
    encoder = decoder(family, cls=CausalLMEncoder)
    model = MultiTaskModule(encoder, dm.tasks, pooling="last", lr_scheduler=None)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(model, dm)
    model.eval()
    folder = export_model(model, dm.tokenizer, tmp_path / "exported")
    meta = json.loads((folder / "mtlkit.json").read_text())
    assert meta["encoder_type"] == "causal_lm"
    exported = ExportedModel.from_folder(folder)
    assert isinstance(exported.model.heads["reply"], PromptLMHead)
    task = model.tasks["reply"]
    rows = task.tokenize({"text": PROMPTS, "target": TARGETS}, dm.tokenizer)
    batch = task.collate(rows, dm.tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.model({"reply": batch})["reply"]
        generate = model.model.generator("reply", out["features"], batch)
        expected = task.eval_metric_inputs(out["logits"], batch, generate)[0]
    got = exported.predict(PROMPTS, tasks=["reply"], batch_size=2)["reply"]
    assert [p["text"] for p in got] == expected
    assert any(expected)  # not all empty
    lm_head = exported.model.encoder.lm_head.weight
    assert torch.equal(lm_head, model.encoder.lm_head.weight)
    # The classification head reads the same (exported) transformer.
    topic = model.tasks["topic"]
    sub = topic.collate(topic.tokenize({"text": PROMPTS, "label": [0] * 3}, dm.tokenizer), 0)
    with torch.no_grad():
        logits = model.model({"topic": sub})["topic"]["logits"]
    got_logits = torch.stack(exported.logits(PROMPTS, tasks=["topic"])["topic"])
    torch.testing.assert_close(got_logits, logits, atol=1e-5, rtol=1e-4)
    # init_from reads the export's transformer (base-model keys, as from any export).
    other = MultiTaskModule(
        decoder(family, seed=5, cls=CausalLMEncoder),
        dm.tasks,
        pooling="last",
        init_from=str(folder),
    )
    other.configure_model()
    assert other.init_report.encoder_tensors == len(model.encoder.model.state_dict())
    for key, value in model.encoder.model.state_dict().items():
        assert torch.equal(other.encoder.model.state_dict()[key], value), key


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_per_task_lora_trains_and_generates_with_the_tasks_adapter(family, tmp_path):
    """CausalLMLoRAEncoder: both tasks train their own adapter only (pretrained weights and the
    LM head bit-identical), and generation runs the generation task's adapter even when
    another task's ran last."""
    L.seed_everything(0)
    args = dict(tokenizer=BPE_TOKENIZER, batch_size=6, cache_dir=None, steps_per_epoch=3)
    dm = MultiTaskDataModule(_fit_tasks(), batch_mode="mixed", **args)
    encoder = decoder(family, cls=CausalLMLoRAEncoder, r=4, alpha=8.0, dropout=0.0)
    adamw = lambda p: torch.optim.AdamW(p, lr=1e-2)  # noqa: E731
    model = MultiTaskModule(encoder, dm.tasks, pooling="last", optimizer=adamw)
    dm.setup("fit")  # the generation task's token ids, then its head and the adapters
    model.configure_model()
    base = {k: v.clone() for k, v in encoder.state_dict().items() if "lora_" not in k}
    lora = {k: v.clone() for k, v in encoder.state_dict().items() if "lora_" in k}
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, dm)
    assert math.isfinite(float(trainer.callback_metrics["val/reply/rougeL"]))
    after = encoder.state_dict()
    assert "lm_head.weight" in base or encoder.lm_head_tied
    assert all(torch.equal(after[k], v) for k, v in base.items())
    for task in ("reply", "topic"):
        assert any(not torch.equal(after[k], v) for k, v in lora.items() if f".{task}." in k)
    model.eval()
    batch = _batch(_task())
    with torch.no_grad():
        generated = model.model.generate("reply", batch, num_beams=1, max_new_tokens=5)
        encoder.adapters.activate("reply")
        prompts, mask = left_align(batch["prompt_ids"], batch["prompt_mask"], EOS)
        reply = encoder.causal_lm.generate(
            input_ids=prompts,
            attention_mask=mask,
            max_new_tokens=5,
            pad_token_id=EOS,
            eos_token_id=EOS,
        )[:, prompts.shape[1] :]
        reply_logits = encoder.causal_lm(input_ids=prompts, attention_mask=mask).logits
        encoder.adapters.activate("topic")  # another task's adapter last
        topic_logits = encoder.causal_lm(input_ids=prompts, attention_mask=mask).logits
        again = model.model.generate("reply", batch, num_beams=1, max_new_tokens=5)
    assert not torch.allclose(reply_logits, topic_logits)  # the adapters differ
    assert torch.equal(generated, reply) and torch.equal(again, reply)
    with pytest.raises(ConfigError, match="cannot export CausalLMLoRAEncoder with a decoder-only"):
        export_model(model, dm.tokenizer, tmp_path / "exported")


def test_one_encoder_pass_serves_both_tasks_of_a_mixed_batch():
    """Training a mixed batch runs the shared transformer once over the generation task's
    prompt + target rows and the classification rows together."""
    args = dict(tokenizer=BPE_TOKENIZER, batch_size=6, cache_dir=None, steps_per_epoch=3)
    dm = MultiTaskDataModule(_fit_tasks(), batch_mode="mixed", **args)
    dm.setup("fit")
    model = MultiTaskModule(decoder("qwen2", cls=CausalLMEncoder), dm.tasks, pooling="last")
    model.configure_model()
    subs = next(b["tasks"] for b in dm.train_dataloader() if len(b["tasks"]) == 2)
    calls = []
    model.encoder.model.register_forward_hook(lambda m, i, o: calls.append(1))
    losses = model.task_losses(model(subs), subs)
    assert len(calls) == 1 and set(losses) == {"reply", "topic"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_checkpoint_resumes_the_decoder_only_generation_task(tmp_path):
    args = dict(tokenizer=BPE_TOKENIZER, batch_size=6, cache_dir=None, steps_per_epoch=3)

    def fit(max_steps, **kw):
        dm = MultiTaskDataModule(_fit_tasks(), batch_mode="mixed", **args)
        model = MultiTaskModule(
            decoder("llama", cls=CausalLMEncoder), dm.tasks, pooling="last", lr_scheduler=None
        )
        trainer = quiet_trainer(tmp_path, max_steps=max_steps, num_sanity_val_steps=0)
        trainer.fit(model, dm, **kw)
        return trainer, model

    L.seed_everything(0)
    trainer, first = fit(2)
    trainer.save_checkpoint(tmp_path / "step2.ckpt")
    trainer, resumed = fit(3, ckpt_path=str(tmp_path / "step2.ckpt"))
    assert trainer.global_step == 3
    assert math.isfinite(float(trainer.callback_metrics["val/reply/rougeL"]))
    assert resumed.model.heads["reply"].encoder is resumed.encoder
    assert resumed.tasks["reply"].tokens == first.tasks["reply"].tokens
    # Strict load of the whole state: the transformer, the LM head, the classification head.
    ckpt = torch.load(tmp_path / "step2.ckpt", weights_only=True)
    assert "encoder.lm_head.weight" in ckpt["state_dict"]
    assert not [k for k in ckpt["state_dict"] if k.startswith("heads.reply")]
