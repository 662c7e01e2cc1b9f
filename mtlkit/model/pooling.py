"""Sentence-level pooling of token states."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Pooling = Literal["cls", "mean"]


def pool(hidden: Tensor, attention_mask: Tensor, how: Pooling) -> Tensor:
    """``cls``: the first token's state; ``mean``: the mask-weighted average of token states."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
