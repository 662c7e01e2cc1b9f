"""Build a WordPiece tokenizer and a random BERT small enough for unit tests."""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_WORDS = [
    "the",
    "a",
    "an",
    "is",
    "was",
    "what",
    "who",
    "where",
    "when",
    "how",
    "why",
    "good",
    "bad",
    "great",
    "awful",
    "movie",
    "film",
    "news",
    "sport",
    "politics",
    "money",
    "city",
    "john",
    "paris",
    "london",
    "play",
    "game",
    "win",
    "lose",
    "love",
    "hate",
    "spam",
    "free",
    "call",
    "now",
    "question",
    "answer",
    "yes",
    "no",
    "not",
    "very",
    "happy",
    "sad",
    "day",
    "night",
    "team",
    "market",
]


def tiny_vocab() -> list[str]:
    """Specials, whole words, single characters and their ``##`` continuations."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    subwords = [f"##{c}" for c in string.ascii_lowercase + string.digits]
    return list(dict.fromkeys(SPECIALS + TINY_WORDS + chars + subwords))  # unique, in order


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer built locally (no vocab file, no hub)."""
    vocab = {tok: i for i, tok in enumerate(tiny_vocab())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=50))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


#: The BERT size transformers' own tests use, as an ``HFEncoder(config=...)`` dict.
TINY_ENCODER = {
    "model_type": "bert",
    "vocab_size": 155,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 128,
}


def tiny_bert_config(vocab_size: int, **overrides: int) -> BertConfig:
    """A :class:`BertConfig` of :data:`TINY_ENCODER`'s size."""
    kwargs = {k: v for k, v in TINY_ENCODER.items() if k != "model_type"}
    kwargs.update(vocab_size=vocab_size, **overrides)
    return BertConfig(**kwargs)


def save_tiny_encoder(directory: str | Path, seed: int = 0) -> Path:
    """Writes a tiny random BERT and its tokenizer as a Hugging Face folder; returns the path."""
    import torch

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    BertModel(tiny_bert_config(len(tokenizer))).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
