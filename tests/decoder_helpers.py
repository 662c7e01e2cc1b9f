"""Tiny random decoder-only backbones (GPT-2, Llama, Qwen2) and their GPT-2-style tokenizer,
shared by the decoder-only tests: one grid over the families."""

from __future__ import annotations

import torch

from mtlkit.model import HFEncoder
from mtlkit.testing import build_tiny_bpe_tokenizer, tiny_decoder_configs

BPE_TOKENIZER = "pkg:mtlkit/testing/tiny_bpe_tokenizer"
TOKENIZER = build_tiny_bpe_tokenizer()
CONFIGS = tiny_decoder_configs(len(TOKENIZER))
FAMILIES = list(CONFIGS)  # gpt2, llama, qwen2


def decoder(family: str, seed: int = 0, cls: type = HFEncoder, **kw) -> HFEncoder:
    torch.manual_seed(seed)
    return cls(config=dict(CONFIGS[family]), **kw)


def ids_and_mask(lengths: list[int], width: int, side: str, seed: int = 0):
    """Random real token ids (no special token) padded to ``width`` on ``side`` with an
    arbitrary id (the mask, not the id, marks padding)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width), 7, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        real = torch.randint(1, len(TOKENIZER), (n,), generator=gen)
        span = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, span], mask[row, span] = real, 1
    return ids, mask
