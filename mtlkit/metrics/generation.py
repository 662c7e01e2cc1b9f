"""Text-generation metrics over ``(predicted texts, reference texts)``, one reference per example.

Thin adapters of torchmetrics' text metrics so that one ``MetricCollection`` takes the same
``update(preds, target)`` with ``target`` a list of reference strings, and reports one number per
name (``bleu``, ``rouge1``, ``rouge2``, ``rougeL``, ``chrf``, ``exact_match``), all in ``[0, 1]``
(sacreBLEU prints BLEU and chrF times 100). Their states are sums and lists, so DDP processes
are combined exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import CHRFScore, ROUGEScore, SacreBLEUScore

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def _as_lists(target: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    return [[t] if isinstance(t, str) else list(t) for t in target]


class CorpusBLEU(SacreBLEUScore):
    """Corpus BLEU (Papineni et al. 2002, "BLEU: a Method for Automatic Evaluation of Machine
    Translation") with sacreBLEU's default ``13a`` tokenization (Post 2018, "A Call for Clarity
    in Reporting BLEU Scores"): clipped n-gram precisions up to 4-grams summed over the corpus,
    their geometric mean times the brevity penalty ``exp(1 - r / c)`` when ``c < r``.

    Args:
        tokenize: sacreBLEU tokenizer (``13a``, ``intl``, ``zh``, ``char``, ``none``, ...).
        lowercase: Compare lowercased text.
    """

    def __init__(self, tokenize: str = "13a", lowercase: bool = False) -> None:
        super().__init__(n_gram=4, smooth=False, tokenize=tokenize, lowercase=lowercase)

    def update(self, preds: Sequence[str], target: Sequence[str] | Sequence[Sequence[str]]) -> None:
        super().update(list(preds), _as_lists(target))


class RougeF(ROUGEScore):
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (Lin 2004, "ROUGE: A Package for Automatic
    Evaluation of Summaries"), averaged over examples, as Google's ``rouge-score`` computes them:
    lowercased, every run of characters other than ``a-z0-9`` is a word break, no stemming (the
    Porter stemmer would need ``nltk``). Text without any ``a-z0-9`` character (e.g. Chinese)
    has no words under this normalization; use ``chrf`` for such languages.
    """

    def __init__(self) -> None:
        super().__init__(use_stemmer=False, rouge_keys=ROUGE_KEYS, accumulate="best")

    def update(self, preds: Sequence[str], target: Sequence[str] | Sequence[Sequence[str]]) -> None:
        super().update(list(preds), _as_lists(target))

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        scores = super().compute()
        return {key: scores[f"{key}_fmeasure"] for key in ROUGE_KEYS}


class ChrF(CHRFScore):
    """chrF (Popović 2015, "chrF: character n-gram F-score for automatic MT evaluation"):
    character 1..6-gram F-beta with beta 2, corpus-level statistics, as sacreBLEU's default
    ``chrF``."""

    def __init__(self) -> None:
        super().__init__(n_char_order=6, n_word_order=0, beta=2.0)

    def update(self, preds: Sequence[str], target: Sequence[str] | Sequence[Sequence[str]]) -> None:
        super().update(list(preds), _as_lists(target))


class ExactMatch(Metric):
    """Share of predictions equal to (one of) their reference(s) after stripping the ends and
    collapsing runs of whitespace to one space (case-sensitive)."""

    full_state_update = False
    hits: Tensor
    total: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("hits", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[str] | Sequence[Sequence[str]]) -> None:
        refs = _as_lists(target)
        if len(refs) != len(preds):
            raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
        hits = sum(_norm(p) in {_norm(r) for r in rs} for p, rs in zip(preds, refs, strict=True))
        self.hits += float(hits)
        self.total += float(len(refs))

    def compute(self) -> Tensor:
        return self.hits / self.total.clamp(min=1.0)


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def generation_metrics(bleu_tokenize: str = "13a") -> MetricCollection:
    """``bleu``, ``rouge1``, ``rouge2``, ``rougeL``, ``chrf`` and ``exact_match``."""
    return MetricCollection(
        {
            "bleu": CorpusBLEU(tokenize=bleu_tokenize),
            "rouge": RougeF(),
            "chrf": ChrF(),
            "exact_match": ExactMatch(),
        }
    )
