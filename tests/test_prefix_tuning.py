"""Prefix tuning: each task's prefix enters every attention layer's keys and values (Li & Liang
2021, section 4.2), the real tokens keep positions from 0, and padding stays masked. The layer-0
reference is computed by hand from BERT's attention weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.model.prefix_tuning import PrefixTuningEncoder
from mtlkit.testing import TINY_ENCODER

N, D, HEADS = 3, TINY_ENCODER["hidden_size"], TINY_ENCODER["num_attention_heads"]


def _encoder(**kw) -> PrefixTuningEncoder:
    torch.manual_seed(0)
    encoder = PrefixTuningEncoder(config=dict(TINY_ENCODER), num_virtual_tokens=N, **kw)
    encoder.prepare_tasks(["topic", "mood"])
    with torch.no_grad():
        for p in encoder.prompts.parameters():
            p.normal_(0.0, 1.0)
    return encoder.eval()


def _capture(module):
    seen = {}

    def hook(mod, args, kwargs, out):
        seen["in"] = args[0] if args else kwargs["hidden_states"]
        seen["out"] = out[0]

    return seen, module.register_forward_hook(hook, with_kwargs=True)


def test_layer_zero_attends_to_the_prefix_keys_and_values():
    encoder = _encoder()
    plain = HFEncoder(config=dict(TINY_ENCODER)).eval()
    plain.model.load_state_dict(encoder.model.state_dict())
    attention = encoder.model.encoder.layer[0].attention.self
    seen, hook = _capture(attention)
    ids, mask = torch.randint(5, 150, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        encoder(ids, mask, task="topic")
        # The real tokens' embeddings are the plain model's: positions start at 0.
        torch.testing.assert_close(seen["in"], plain.model.embeddings(input_ids=ids))
        cache = encoder.prefix("topic", 2)
        pk, pv = cache.layers[0].keys, cache.layers[0].values  # [batch, heads, N, head size]
    hook.remove()
    x, hd = seen["in"], D // HEADS

    def heads(t):
        return t.view(2, -1, HEADS, hd).transpose(1, 2)

    q = heads(F.linear(x, attention.query.weight, attention.query.bias))
    k = torch.cat([pk, heads(F.linear(x, attention.key.weight, attention.key.bias))], 2)
    v = torch.cat([pv, heads(F.linear(x, attention.value.weight, attention.value.bias))], 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)
    expected = (weights @ v).transpose(1, 2).reshape(2, 6, D)
    torch.testing.assert_close(seen["out"], expected)
    assert pk.shape == (2, HEADS, N, hd)


def test_padding_is_masked_and_each_task_has_its_prefix():
    encoder = _encoder()
    ids = torch.randint(5, 150, (1, 5))
    short = encoder(ids, torch.ones(1, 5, dtype=torch.long), task="topic")
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 5), torch.zeros(1, 3)], 1).long()
    torch.testing.assert_close(encoder(padded, mask, task="topic")[:, :5], short)
    other = encoder(ids, torch.ones(1, 5, dtype=torch.long), task="mood")
    base = encoder(ids, torch.ones(1, 5, dtype=torch.long))
    assert not torch.allclose(short, other) and not torch.allclose(short, base)


def test_a_reparametrised_prefix_and_bad_arguments():
    encoder = _encoder(projection=True, projection_hidden=16)
    # Li & Liang's MLP: embedding N x D, then D -> 16 -> 2 * layers * D.
    layers = TINY_ENCODER["num_hidden_layers"]
    per_task = N * D + (D * 16 + 16) + (16 * 2 * layers * D + 2 * layers * D)
    assert sum(p.numel() for p in encoder.task_parameters("topic")) == per_task
    with pytest.raises(ConfigError, match="num_virtual_tokens"):
        PrefixTuningEncoder(config=dict(TINY_ENCODER), num_virtual_tokens=0)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        PrefixTuningEncoder(config=dict(TINY_ENCODER), gradient_checkpointing=True)
