"""Tiny, fully local models and tokenizers for tests, notebooks and smoke runs (no downloads)."""

from mtlkit.testing.tiny import (
    TINY_ENCODER,
    TINY_WORDS,
    build_tiny_tokenizer,
    save_tiny_encoder,
    tiny_bert_config,
)
from mtlkit.testing.tiny_decoder import (
    build_tiny_bpe_tokenizer,
    save_tiny_bpe_tokenizer,
    tiny_decoder_configs,
)

__all__ = [
    "TINY_ENCODER",
    "TINY_WORDS",
    "build_tiny_bpe_tokenizer",
    "build_tiny_tokenizer",
    "save_tiny_bpe_tokenizer",
    "save_tiny_encoder",
    "tiny_bert_config",
    "tiny_decoder_configs",
]
