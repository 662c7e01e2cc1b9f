"""A GPT-2-style byte-level BPE tokenizer and random decoder-only models (GPT-2, Llama, Qwen2)
small enough for unit tests, built locally (no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import PreTrainedTokenizerFast

from mtlkit.testing.tiny import TINY_WORDS

EOS = "<|endoftext|>"


def _bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The 256 byte symbols, then one merge chain per tiny word (``Ġ`` marks a leading space):
    ``Ġ g`` -> ``Ġg``, ``Ġg o`` -> ``Ġgo``, ... so every tiny word is one token and any other
    text falls back to byte pieces (byte-level BPE has no unknown token)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {EOS: 0} | {sym: i + 1 for i, sym in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        piece = "Ġ"
        for char in word:
            if piece + char not in vocab:
                merges.append((piece, char))
                vocab[piece + char] = len(vocab)
            piece += char
    return vocab, merges


def build_tiny_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style tokenizer: byte-level BPE, ``<|endoftext|>`` as its only special token
    (bos, eos and unk) and no pad token, as GPT-2's own."""
    vocab, merges = _bpe_vocab_and_merges()
    tok = Tokenizer(BPE(vocab, merges))
    # A space before every word, so a word splits the same at the start of a text and within
    # it, and pre-split words (token classification) tokenize as in running text.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_decoder_configs(vocab_size: int) -> dict[str, dict[str, Any]]:
    """``HFEncoder(config=...)`` dicts of a random GPT-2, Llama and Qwen2 of the tiny BERT's
    size (hidden 32, 2 layers, 4 heads, intermediate 37, 128 positions), by family."""
    special = {"bos_token_id": 0, "eos_token_id": 0}
    common = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 128,
        **special,
    }
    gpt2 = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 37, "n_positions": 128}
    return {
        "gpt2": {"model_type": "gpt2", "vocab_size": vocab_size, **gpt2, **special},
        "llama": {"model_type": "llama", **common},
        "qwen2": {"model_type": "qwen2", **common},
    }


def save_tiny_bpe_tokenizer(directory: str | Path) -> Path:
    """Writes :func:`build_tiny_bpe_tokenizer` as a Hugging Face tokenizer folder."""
    directory = Path(directory)
    build_tiny_bpe_tokenizer().save_pretrained(directory)
    return directory
