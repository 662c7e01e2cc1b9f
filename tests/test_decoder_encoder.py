"""Decoder-only backbones (GPT-2, Llama, Qwen2) as the shared encoder: the encoder's structure
(layers, embeddings, positions), padding on either side, pooling ``last``, the LM head kept by
``CausalLMEncoder``, and the GPT-2-style tokenizer without a pad token."""

import pytest
import torch
from decoder_helpers import BPE_TOKENIZER, CONFIGS, FAMILIES, TOKENIZER, decoder, ids_and_mask
from helpers import toy_task
from torch import nn

from mtlkit.data import MultiTaskDataModule
from mtlkit.data.datamodule import with_pad_token
from mtlkit.errors import ConfigError
from mtlkit.finetuning import FreezeLayers
from mtlkit.model import CausalLMEncoder, HFEncoder, MultiTaskModel
from mtlkit.model.pooling import pool
from mtlkit.model.soft_sharing import SoftSharedEncoder
from mtlkit.testing import TINY_ENCODER, build_tiny_bpe_tokenizer
from mtlkit.training import MultiTaskModule
from mtlkit.training.param_groups import encoder_param_groups

# The Hugging Face module names of each family (from its modeling file, not from mtlkit).
LAYER_LIST = {"gpt2": "h", "llama": "layers", "qwen2": "layers"}
EMBEDDINGS = {"gpt2": {"wte.weight", "wpe.weight"}, "llama": {"embed_tokens.weight"}}
EMBEDDINGS["qwen2"] = EMBEDDINGS["llama"]
FINAL_NORM = {"gpt2": {"ln_f.weight", "ln_f.bias"}, "llama": {"norm.weight"}}
FINAL_NORM["qwen2"] = FINAL_NORM["llama"]


def _names(encoder: HFEncoder, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in encoder.model.named_parameters() if id(p) in ids}


# ------------------------------------------------------------------ encoder structure
@pytest.mark.parametrize("family", FAMILIES)
def test_layers_embeddings_and_layer_groups(family):
    enc = decoder(family)
    assert enc.is_causal
    parent, attr = enc.layer_list_parent()
    assert parent is enc.model and attr == LAYER_LIST[family]
    assert len(enc.layers) == 2 and enc.layers is getattr(enc.model, attr)
    assert _names(enc, enc.embeddings.parameters()) == EMBEDDINGS[family]
    groups = enc.layer_groups()
    assert _names(enc, groups[0]) == EMBEDDINGS[family]
    for i in (0, 1):
        assert all(n.startswith(f"{attr}.{i}.") for n in _names(enc, groups[i + 1]))
    assert _names(enc, groups[-1]) == FINAL_NORM[family]
    assert sum(len(g) for g in groups) == len(list(enc.parameters()))


def test_max_positions_reads_each_familys_own_field():
    gpt2 = HFEncoder(config={**CONFIGS["gpt2"], "n_positions": 48})
    assert gpt2.max_positions == 48 and gpt2.model.wpe.num_embeddings == 48
    llama = HFEncoder(config={**CONFIGS["llama"], "max_position_embeddings": 40})
    assert llama.max_positions == 40
    with pytest.raises(ConfigError, match="max_length 64 is more than the encoder's 48"):
        gpt2.check_max_length("t", 64)


def test_causal_attention_is_detected_for_decoders_only():
    assert not HFEncoder(config=dict(TINY_ENCODER)).is_causal
    assert all(decoder(f).is_causal for f in FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_token_type_ids_are_not_passed_to_a_decoder(family):
    enc = decoder(family).eval()
    ids, mask = ids_and_mask([5, 3], 5, "right")
    types = torch.ones_like(ids)
    torch.testing.assert_close(enc(ids, mask, types), enc(ids, mask), rtol=0, atol=0)
    assert "token_type_ids" not in enc.model_inputs(ids, mask, types)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_on_either_side_leaves_real_token_states_unchanged(family):
    enc = decoder(family).eval()
    lengths = [6, 3, 1]
    alone = [enc(*ids_and_mask([n], n, "right", seed=i)) for i, n in enumerate(lengths)]
    for side in ("right", "left"):
        for i, n in enumerate(lengths):
            ids, mask = ids_and_mask([n], 9, side, seed=i)
            out = enc(ids, mask)[0, mask[0].bool()]
            torch.testing.assert_close(out, alone[i][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_layers_and_layer_lr_decay(family):
    enc = decoder(family)
    module = MultiTaskModule(enc, [toy_task("t")], pooling="last")
    FreezeLayers(n=1).freeze_before_training(module)
    frozen = {n for n, p in enc.model.named_parameters() if not p.requires_grad}
    attr = LAYER_LIST[family]
    expected = EMBEDDINGS[family] | {
        n for n, _ in enc.model.named_parameters() if f"{attr}.0." in n
    }
    assert frozen == expected
    enc.requires_grad_(True)
    groups = {g["name"]: g for g in encoder_param_groups(enc, 0.5)}
    # Layer i of N gets d ** (N - i), the embeddings d ** (N + 1), the final norm 1.
    assert groups["encoder.embeddings"]["lr_scale"] == 0.125
    assert _names(enc, groups["encoder.embeddings"]["params"]) == EMBEDDINGS[family]
    assert groups["encoder.layer_0"]["lr_scale"] == 0.25
    assert groups["encoder.layer_1"]["lr_scale"] == 0.5
    assert groups["encoder.top"]["lr_scale"] == 1.0
    assert _names(enc, groups["encoder.top"]["params"]) == FINAL_NORM[family]


# --------------------------------------------------------------------------- pooling
def test_last_pooling_picks_the_last_real_token_on_either_side():
    hidden = torch.arange(3 * 5 * 2, dtype=torch.float).reshape(3, 5, 2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    expected = torch.stack([hidden[0, 2], hidden[1, 4], hidden[2, 4]])
    assert torch.equal(pool(hidden, mask, "last"), expected)
    assert torch.equal(pool(hidden, mask, "last"), torch.tensor([[4.0, 5.0], [18, 19], [28, 29]]))


@pytest.mark.parametrize("family", FAMILIES)
def test_pooled_vector_does_not_change_when_padding_is_appended(family):
    """Causal attention: a token never sees the ones after it, so padding after the text (any
    id, masked) cannot change the last real token's state, nor before it (masked, positions
    counted from the first real token)."""
    model = MultiTaskModel(decoder(family), "last", heads={"t": nn.Linear(32, 3)}).eval()
    ids, mask = ids_and_mask([4, 7], 7, "right")
    base = model({"t": {"input_ids": ids, "attention_mask": mask}})["t"]["features"]
    for extra, side in ((3, "right"), (5, "left")):
        longer, longer_mask = ids_and_mask([4, 7], 7 + extra, side)
        longer[longer_mask == 0] = 11  # another padding id
        out = model({"t": {"input_ids": longer, "attention_mask": longer_mask}})["t"]
        torch.testing.assert_close(out["features"], base, atol=1e-5, rtol=1e-5)
    # A real token appended does change it: the check above is not vacuous.
    more = torch.cat([ids[:1, :4], torch.tensor([[12]])], 1)
    out = model({"t": {"input_ids": more, "attention_mask": torch.ones_like(more)}})["t"]
    assert not torch.allclose(out["features"], base[:1], atol=1e-3)


def test_pooling_choices_are_checked():
    with pytest.raises(ConfigError, match="'cls', 'mean' or 'last', got 'max'"):
        MultiTaskModel(decoder("gpt2"), "max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="first token.*sees only itself"):
        MultiTaskModule(decoder("llama"), [toy_task("t")], pooling="cls")
    MultiTaskModule(HFEncoder(config=dict(TINY_ENCODER)), [toy_task("t")], pooling="last")


# ------------------------------------------------------------------ CausalLMEncoder
@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_encoder_keeps_the_lm_head(family):
    enc = decoder(family, cls=CausalLMEncoder).eval()
    plain = decoder(family).eval()  # same seed: the same base weights as an HFEncoder
    assert enc.model.state_dict().keys() == plain.model.state_dict().keys()
    lm = enc.causal_lm
    assert lm.base_model is enc.model and lm.get_output_embeddings() is enc.lm_head
    assert {id(p) for p in lm.parameters()} == {id(p) for p in enc.parameters()}
    assert enc.lm_head_tied == (family == "gpt2")  # GPT-2 ties wte and the LM head
    ids, mask = ids_and_mask([6, 4], 6, "right")
    hf = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()  # padding positions differ (mtlkit counts positions over real tokens)
    torch.testing.assert_close(enc.lm_logits(enc(ids, mask))[real], hf[real], atol=1e-5, rtol=1e-5)
    # The LM loss on target tokens only (prompt labels -100), as a generation task trains.
    labels = ids.clone()
    labels[:, :3] = -100
    labels[mask == 0] = -100
    loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
    logits, targets = hf[:, :-1], labels[:, 1:]  # token t predicts token t + 1
    keep = targets != -100
    expected = nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    out = lm.generate(input_ids=ids[:1, :3], max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 5) and torch.equal(out[0, :3], ids[0, :3])


def test_causal_lm_encoder_refuses_an_encoder():
    with pytest.raises(ConfigError, match="needs a decoder-only model"):
        CausalLMEncoder(config={**TINY_ENCODER, "is_decoder": False})


# --------------------------------------------------------------------------- tokenizer
def test_tiny_bpe_tokenizer_is_gpt2_style_and_shipped():
    tok = build_tiny_bpe_tokenizer()
    assert tok.pad_token is None and tok.eos_token == "<|endoftext|>"
    pieces = tok.convert_ids_to_tokens(tok("good movie xz")["input_ids"])
    assert pieces == ["Ġgood", "Ġmovie", "Ġ", "x", "z"]  # whole tiny words, bytes otherwise
    dm = MultiTaskDataModule([toy_task("t")], tokenizer=BPE_TOKENIZER, cache_dir=None)
    dm.setup("fit")
    assert dm.tokenizer.get_vocab() == TOKENIZER.get_vocab()
    texts = ["good movie xz", "what is the city of paris, 42?", "johnny hates spam"]
    assert dm.tokenizer(texts)["input_ids"] == tok(texts)["input_ids"]  # same merges


def test_data_module_pads_with_eos_when_the_tokenizer_has_no_pad_token():
    dm = MultiTaskDataModule([toy_task("t")], tokenizer=BPE_TOKENIZER, cache_dir=None, batch_size=8)
    dm.setup("fit")
    eos = TOKENIZER.convert_tokens_to_ids("<|endoftext|>")
    assert dm.tokenizer.pad_token_id == eos
    sub = next(iter(dm.train_dataloader()))["tasks"]["t"]
    pads = sub["attention_mask"] == 0
    assert pads.any() and (sub["input_ids"][pads] == eos).all()
    # Right padding: every row's mask is ones, then zeros.
    assert torch.equal(sub["attention_mask"], sub["attention_mask"].sort(1, descending=True)[0])


def test_tokenizer_without_pad_or_eos_token_is_one_clear_error():
    tok = build_tiny_bpe_tokenizer()
    tok.eos_token = None
    with pytest.raises(ConfigError, match="'mine' has no pad token and no eos token"):
        with_pad_token(tok, "mine")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_soft_shared_copies_of_a_decoder_ignore_padding_side(family):
    enc = decoder(family, cls=SoftSharedEncoder, top_layers=1).eval()
    enc.prepare_tasks(["a", "b"])
    with torch.no_grad():  # the task's copy differs from the shared model
        for p in enc.towers["b"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    right, right_mask = ids_and_mask([5, 2], 7, "right")
    left, left_mask = ids_and_mask([5, 2], 7, "left")
    for task in (None, "a", "b"):
        r, l_ = enc(right, right_mask, task=task), enc(left, left_mask, task=task)
        torch.testing.assert_close(r[right_mask.bool()], l_[left_mask.bool()], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(enc(right, right_mask, task="b"), enc(right, right_mask, task="a"))
