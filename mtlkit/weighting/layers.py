"""Choosing "the last shared layer" on which per-task gradients are compared."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from mtlkit.errors import ConfigError

Named = Sequence[tuple[str, nn.Parameter]]


def select_shared_layer(named: Named, pattern: str | None, who: str) -> list[tuple]:
    """Parameters of the shared layer: those matching ``pattern`` (substring or regex), or by
    default the last 2-D shared parameter that is neither an embedding nor BERT's unused pooler
    (for BERT: ``model.encoder.layer.<last>.output.dense.weight``).
    """
    if pattern is None:
        ok = [(n, p) for n, p in named if p.ndim >= 2 and "pooler" not in n and "embed" not in n]
        if not ok:
            raise ConfigError(f"{who} found no shared 2-D parameter; set shared_layer")
        return ok[-1:]
    try:
        regex = re.compile(pattern)
    except re.error:
        regex = None
    chosen = [(n, p) for n, p in named if pattern in n or (regex is not None and regex.search(n))]
    if not chosen:
        raise ConfigError(
            f"{who} shared_layer {pattern!r} matches no shared parameter; "
            f"e.g. {[n for n, _ in named][-3:]}"
        )
    return chosen
