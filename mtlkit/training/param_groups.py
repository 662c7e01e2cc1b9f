"""The encoder's optimizer parameter groups, with layer-wise learning-rate decay."""

from __future__ import annotations

from typing import Any

from mtlkit.model.encoder import HFEncoder


def encoder_param_groups(encoder: HFEncoder, layer_lr_decay: float | None) -> list[dict[str, Any]]:
    """Trainable encoder parameters as optimizer groups.

    Without decay: one group ``encoder``. With decay ``d`` (discriminative learning rates, as in
    ULMFiT and ELECTRA): ``encoder.embeddings`` at ``d ** (N + 1)``, ``encoder.layer_i`` at
    ``d ** (N - i)`` and ``encoder.top`` (anything above the layers) at 1, as ``lr_scale`` factors
    of the optimizer's base rate, which the model applies once the optimizer is built.
    """
    if layer_lr_decay is None:
        params = [p for p in encoder.parameters() if p.requires_grad]
        return [{"params": params, "name": "encoder"}]
    by_depth = encoder.layer_groups()  # embeddings, layer 0..N-1, rest (top)
    n = len(by_depth) - 2
    groups = []
    for depth, params in enumerate(by_depth):
        exponent = n + 1 - depth if depth <= n else 0
        name = "embeddings" if depth == 0 else f"layer_{depth - 1}" if depth <= n else "top"
        groups.append(
            {
                "params": [p for p in params if p.requires_grad],
                "name": f"encoder.{name}",
                "lr_scale": layer_lr_decay**exponent,
            }
        )
    return groups
