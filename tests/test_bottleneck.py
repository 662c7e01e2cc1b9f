"""Bottleneck adapters and AdapterFusion: where the adapters sit and what they compute.

The references are computed by hand from the frozen BERT block's own weights with
``torch.nn.functional`` (Houlsby et al. 2019, figure 2: adapter after each sublayer's output
projection, before its residual connection and layer norm; Pfeiffer et al. 2021, section 3.2
for the fusion attention), not by running the encoder under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlkit.errors import ConfigError
from mtlkit.model import HFEncoder
from mtlkit.model.adapter_fusion import AdapterFusionEncoder
from mtlkit.model.bottleneck import BottleneckAdapterEncoder
from mtlkit.testing import TINY_ENCODER

D = TINY_ENCODER["hidden_size"]


def _encoder(placement="houlsby", **kw) -> BottleneckAdapterEncoder:
    torch.manual_seed(0)
    encoder = BottleneckAdapterEncoder(config=dict(TINY_ENCODER), placement=placement, **kw)
    encoder.prepare_tasks(["topic", "mood"])
    return encoder.eval()


def _inputs():
    torch.manual_seed(1)
    return torch.randint(5, 150, (2, 7)), torch.ones(2, 7, dtype=torch.long)


def _record(encoder, names):
    """Runs ``encoder`` and returns the outputs of the named submodules of its HF model."""
    seen, hooks = {}, []
    for name in names:
        module = encoder.model.get_submodule(name)

        def hook(mod, args, out, name=name):
            seen[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        hooks.append(module.register_forward_hook(hook))
    return seen, hooks


SUBLAYERS = {
    "layer0": "encoder.layer.0",
    "self1": "encoder.layer.1.attention.self",
    "attn1": "encoder.layer.1.attention.output",
    "inter1": "encoder.layer.1.intermediate",
    "ffn1": "encoder.layer.1.output",
}


def _outputs(encoder, task):
    seen, hooks = _record(encoder, SUBLAYERS.values())
    ids, mask = _inputs()
    final = encoder(ids, mask, task=task)
    for h in hooks:
        h.remove()
    return {k: seen[v] for k, v in SUBLAYERS.items()} | {"final": final.detach()}


@pytest.mark.parametrize(
    "site, changed",
    [
        ("1_attention", {"attn1", "inter1", "ffn1", "final"}),  # after attention, in layer 1
        ("1_ffn", {"ffn1", "final"}),  # after the feed-forward of layer 1: nothing before it
    ],
)
def test_a_perturbed_adapter_changes_only_what_follows_its_sublayer(site, changed):
    encoder = _encoder()
    before = _outputs(encoder, "topic")
    with torch.no_grad():
        encoder.bottlenecks["topic"][site].up.weight.normal_(0.0, 0.5)
    after = _outputs(encoder, "topic")
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same != (name in changed), name
    # The other task's adapters are untouched: it still computes the frozen model.
    plain = HFEncoder(config=dict(TINY_ENCODER)).eval()
    plain.model.load_state_dict(encoder.model.state_dict())
    ids, mask = _inputs()
    assert torch.equal(encoder(ids, mask, task="mood"), plain(ids, mask))


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_the_ffn_adapter_matches_the_hand_computed_block(placement):
    encoder = _encoder(placement, reduction_factor=4, activation="gelu")
    adapter = encoder.bottlenecks["topic"]["1_ffn"]
    with torch.no_grad():
        for p in encoder.bottlenecks["topic"].parameters():
            p.normal_(0.0, 0.3)
    seen, hooks = _record(encoder, ["encoder.layer.1.attention", "encoder.layer.1.intermediate"])
    ids, mask = _inputs()
    with torch.no_grad():
        out = encoder(ids, mask, task="topic")
    for h in hooks:
        h.remove()
    block = encoder.model.encoder.layer[1].output
    x, inner = seen["encoder.layer.1.attention"], seen["encoder.layer.1.intermediate"]
    h = F.linear(inner, block.dense.weight, block.dense.bias)
    a = F.linear(F.gelu(F.linear(h, adapter.down.weight, adapter.down.bias)), adapter.up.weight)
    expected = F.layer_norm(
        h + a + adapter.up.bias + x, (D,), block.LayerNorm.weight, block.LayerNorm.bias, 1e-12
    )
    torch.testing.assert_close(out, expected)
    assert adapter.down.weight.shape == (D // 4, D)


@pytest.mark.parametrize(
    "placement, per_layer, factor", [("houlsby", 2, 16), ("pfeiffer", 1, 16), ("houlsby", 2, 5)]
)
def test_parameter_count_is_the_papers(placement, per_layer, factor):
    encoder = _encoder(placement, reduction_factor=factor)
    m = D // factor
    per_adapter = 2 * D * m + D + m  # Houlsby et al. 2019, section 3.6
    layers = TINY_ENCODER["num_hidden_layers"]
    assert encoder.adapter_parameter_count("topic") == layers * per_layer * per_adapter
    assert sorted(encoder.bottlenecks["topic"]) == sorted(encoder.sites)
    assert len(encoder.sites) == layers * per_layer


def test_fusion_of_one_source_is_that_source_adapter(tmp_path):
    """With one source the softmax weight is 1 and V starts at the identity: the fused model is
    exactly the source adapter's model."""
    source = _encoder("pfeiffer", reduction_factor=4)
    with torch.no_grad():
        for p in source.bottlenecks.parameters():
            p.normal_(0.0, 0.3)
    source.save_adapters(tmp_path)
    fusion = AdapterFusionEncoder(str(tmp_path), ["mood"], config=dict(TINY_ENCODER))
    fusion.model.load_state_dict(source.model.state_dict())
    fusion.prepare_tasks(["target"])
    fusion.eval()
    ids, mask = _inputs()
    torch.testing.assert_close(fusion(ids, mask, task="target"), source(ids, mask, task="mood"))


def test_fusion_reads_its_sources_from_a_checkpoint_of_the_source_run(tmp_path):
    from helpers import toy_task

    from mtlkit.training import MultiTaskModule

    source = _encoder("pfeiffer", reduction_factor=4, activation="gelu")
    with torch.no_grad():
        for p in source.bottlenecks.parameters():
            p.normal_(0.0, 0.3)
    run = MultiTaskModule(source, [toy_task("topic"), toy_task("mood")], lr_scheduler=None)
    torch.save({"state_dict": run.state_dict()}, tmp_path / "sources.ckpt")
    fusion = AdapterFusionEncoder(
        str(tmp_path / "sources.ckpt"), ["mood"], config=dict(TINY_ENCODER)
    )
    assert (fusion.placement, fusion.activation, fusion.bottleneck_size) == ("pfeiffer", "gelu", 8)
    fusion.model.load_state_dict(source.model.state_dict())
    fusion.prepare_tasks(["target"])
    fusion.eval()
    ids, mask = _inputs()
    torch.testing.assert_close(fusion(ids, mask, task="target"), source(ids, mask, task="mood"))
    with pytest.raises(ConfigError, match="no adapters of source task 'news'; it has"):
        AdapterFusionEncoder(str(tmp_path / "sources.ckpt"), ["news"], config=dict(TINY_ENCODER))
    plain = MultiTaskModule(HFEncoder(config=dict(TINY_ENCODER)), [toy_task("topic")])
    torch.save({"state_dict": plain.state_dict()}, tmp_path / "plain.ckpt")
    with pytest.raises(ConfigError, match="not a checkpoint of a BottleneckAdapterEncoder run"):
        AdapterFusionEncoder(str(tmp_path / "plain.ckpt"), ["topic"], config=dict(TINY_ENCODER))
    with pytest.raises(ConfigError, match="differ from this encoder's in"):
        _encoder("houlsby").set_extra_state(source.get_extra_state())


def test_fusion_attention_matches_the_papers_formula(tmp_path):
    source = _encoder("pfeiffer", reduction_factor=4)
    with torch.no_grad():
        for p in source.bottlenecks.parameters():
            p.normal_(0.0, 0.3)
    source.save_adapters(tmp_path)
    fusion = AdapterFusionEncoder(str(tmp_path), ["topic", "mood"], config=dict(TINY_ENCODER))
    fusion.prepare_tasks(["target"])
    layer = fusion.bottlenecks["target"]["0_ffn"]
    torch.manual_seed(3)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    h = torch.randn(2, 5, D)
    z = []
    for name in ("topic", "mood"):  # each source adapter by hand: h + up(relu(down(h)))
        a = source.bottlenecks[name]["0_ffn"]
        z.append(
            h + F.linear(F.relu(F.linear(h, a.down.weight, a.down.bias)), a.up.weight, a.up.bias)
        )
    q = F.linear(h, layer.query.weight, layer.query.bias)
    scores = torch.stack(
        [(q * F.linear(zn, layer.key.weight, layer.key.bias)).sum(-1) for zn in z], -1
    )
    s = torch.softmax(scores, -1)
    values = [F.linear(zn, layer.value.weight, layer.value.bias) for zn in z]
    expected = s[..., :1] * values[0] + s[..., 1:] * values[1]
    out, weights = layer.attention(h)
    torch.testing.assert_close(weights, s)
    torch.testing.assert_close(out, expected)
    # Only the fusion layers train; the sources and the pretrained model stay frozen.
    trainable = {n for n, p in fusion.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("bottlenecks.target.") for n in trainable)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="placement"):
        BottleneckAdapterEncoder(config=dict(TINY_ENCODER), placement="middle")
    with pytest.raises(ConfigError, match="reduction_factor"):
        BottleneckAdapterEncoder(config=dict(TINY_ENCODER), reduction_factor=0)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        BottleneckAdapterEncoder(config=dict(TINY_ENCODER), gradient_checkpointing=True)
    with pytest.raises(ConfigError, match="no sublayer"):
        BottleneckAdapterEncoder(
            config=dict(TINY_ENCODER), sublayers={"attention": "x", "ffn": "y"}
        )
    encoder = _encoder()
    with pytest.raises(ConfigError, match="cannot name adapters"):
        encoder.prepare_tasks(["news.topic"])
    with pytest.raises(ConfigError, match="no adapter for task 'news'"):
        encoder(*_inputs(), task="news")
    with pytest.raises(ConfigError, match="has no saved adapter"):
        encoder.load_adapters(tmp_path, ["topic"])
    _encoder("pfeiffer").save_adapters(tmp_path)
    with pytest.raises(ConfigError, match="does not fit: placement"):
        encoder.load_adapters(tmp_path, ["topic"])
    with pytest.raises(ConfigError, match="no saved adapter for source task 'news'"):
        AdapterFusionEncoder(str(tmp_path), ["news"], config=dict(TINY_ENCODER))
