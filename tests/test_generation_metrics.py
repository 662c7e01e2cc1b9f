"""Generation metrics against published and hand-computed values."""

from __future__ import annotations

import math

import pytest

from mtlkit.metrics.generation import ChrF, CorpusBLEU, ExactMatch, RougeF, generation_metrics

# sacreBLEU's README example (two reference streams): "BLEU = 48.53 82.4/50.0/45.5/37.5
# (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)" and "chrF2 = 59.73".
SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFS = [
    ["The dog bit the man.", "The dog had bit the man."],
    ["It was not unexpected.", "No one was surprised."],
    ["The man bit him first.", "The man had bitten the dog."],
]


def test_bleu_and_chrf_match_sacrebleu_readme():
    bleu, chrf = CorpusBLEU(), ChrF()
    bleu.update(SYS, REFS)
    chrf.update(SYS, REFS)
    assert float(bleu.compute()) == pytest.approx(0.4853, abs=5e-5)
    assert float(chrf.compute()) == pytest.approx(0.5973, abs=5e-5)


def test_bleu_brevity_penalty_and_precisions_by_hand():
    # All n-grams match, c = 5 < r = 6: BLEU = BP = exp(1 - 6/5) (Papineni et al. 2002, eq. 1).
    bleu = CorpusBLEU()
    bleu.update(["a b c d e"], ["a b c d e f"])
    assert float(bleu.compute()) == pytest.approx(math.exp(1 - 6 / 5), abs=1e-5)
    # c = r: BP = 1; clipped precisions 4/6, 3/5, 2/4, 1/3; geometric mean.
    bleu = CorpusBLEU()
    bleu.update(["a b c d x y"], ["a b c d e f"])
    expected = (4 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert float(bleu.compute()) == pytest.approx(expected, abs=1e-5)


def test_bleu_13a_splits_punctuation():
    # 13a tokenization separates the comma and the full stop: the hypothesis equals the reference.
    bleu = CorpusBLEU()
    bleu.update(["Hello, big wide world."], ["Hello , big wide world ."])
    assert float(bleu.compute()) == pytest.approx(1.0)
    raw = CorpusBLEU(tokenize="none")
    raw.update(["Hello, big wide world."], ["Hello , big wide world ."])
    assert float(raw.compute()) < 0.5


def test_rouge_f_by_hand():
    rouge = RougeF()
    # pred 6 words, ref 5 words, 5 unigrams in common: P = 5/6, R = 1, F = 10/11; bigrams:
    # 3 in common of 5 and 4: F = 2 * 3/5 * 3/4 / (3/5 + 3/4) = 2/3; LCS 5: F = 10/11.
    rouge.update(["The cat sat on the mat!"], ["the cat on the mat"])
    # second example: no word in common: all zero; the scores are means over examples
    rouge.update(["dog"], ["cat"])
    out = {k: float(v) for k, v in rouge.compute().items()}
    assert out == pytest.approx({"rouge1": 10 / 11 / 2, "rouge2": 2 / 3 / 2, "rougeL": 10 / 11 / 2})


def test_exact_match_normalises_whitespace_only():
    em = ExactMatch()
    em.update(["a  b ", "A b", "c"], ["a b", "a b", ["x", "c"]])
    assert float(em.compute()) == pytest.approx(2 / 3)


def test_collection_names():
    metrics = generation_metrics()
    metrics.update(["the cat"], ["the cat"])
    out = metrics.compute()
    assert sorted(out) == ["bleu", "chrf", "exact_match", "rouge1", "rouge2", "rougeL"]
    assert float(out["exact_match"]) == 1.0
    assert float(out["rougeL"]) == 1.0
