"""Sentence-level pooling of token states."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from mtlkit.errors import ConfigError

Pooling = Literal["cls", "mean", "last"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


def check_pooling(how: str) -> None:
    """Raises ``ConfigError`` unless ``how`` names a pooling."""
    if how not in POOLINGS:
        names = ", ".join(repr(p) for p in POOLINGS[:-1]) + f" or {POOLINGS[-1]!r}"
        raise ConfigError(f"pooling must be {names}, got {how!r}")


def pool(hidden: Tensor, attention_mask: Tensor, how: Pooling) -> Tensor:
    """One vector per sequence from its token states ``[batch, length, hidden]``.

    Args:
        hidden: Token states.
        attention_mask: ``1`` on real tokens, ``0`` on padding (on either side).
        how: ``cls``: the first token's state (BERT's ``[CLS]``); ``mean``: the mask-weighted
            average of token states; ``last``: the state of the last real token, the one that
            has seen the whole input in a decoder-only (causal) model, whether the padding is
            on the right or on the left.
    """
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = torch.where(attention_mask.bool(), positions, -1).amax(dim=1).clamp_min(0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
