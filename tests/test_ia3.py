"""(IA)^3: each task's vectors rescale the keys, the values and the feed-forward's inner
activations (Liu et al. 2022, section 3.3: l_k * K, l_v * V, (l_ff * gamma(W_1 x)) W_2), checked
against the frozen linear layers applied by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtlkit.model.ia3 import IA3Encoder
from mtlkit.testing import TINY_ENCODER


def test_the_vectors_rescale_keys_values_and_the_feed_forward():
    torch.manual_seed(0)
    encoder = IA3Encoder(config=dict(TINY_ENCODER))
    encoder.prepare_tasks(["topic", "mood"])
    encoder.eval()
    with torch.no_grad():
        for p in encoder.task_parameters("topic"):
            p.uniform_(0.5, 1.5)
    layer = encoder.model.encoder.layer[1]
    seen = {}

    def keep(name):
        def hook(mod, args, out):
            seen[name] = (args[0], out)

        return hook

    modules = {"key": layer.attention.self.key, "value": layer.attention.self.value}
    modules |= {"ffn": layer.output.dense, "attn_out": layer.attention.output.dense}
    hooks = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    ids, mask = torch.randint(5, 150, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        encoder(ids, mask, task="topic")
    for h in hooks:
        h.remove()
    vectors = {n: p for n, p in encoder.model.named_parameters() if n.endswith("ia3_l.topic")}
    prefix = "encoder.layer.1."
    for name, module in (("key", "attention.self.key"), ("value", "attention.self.value")):
        x, out = seen[name]
        base = modules[name].get_base_layer()
        scale = vectors[f"{prefix}{module}.ia3_l.topic"].view(-1)
        torch.testing.assert_close(out, F.linear(x, base.weight, base.bias) * scale)
    x, out = seen["ffn"]
    base = layer.output.dense.get_base_layer()
    l_ff = vectors[f"{prefix}output.dense.ia3_l.topic"].view(-1)
    torch.testing.assert_close(out, F.linear(x * l_ff, base.weight, base.bias))
    # The attention's output projection is not the paper's: left alone.
    x, out = seen["attn_out"]
    torch.testing.assert_close(
        out, F.linear(x, modules["attn_out"].weight, modules["attn_out"].bias)
    )
    assert len(vectors) == 3 * TINY_ENCODER["num_hidden_layers"]
