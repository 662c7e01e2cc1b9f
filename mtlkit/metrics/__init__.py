"""Metrics that torchmetrics does not provide, and adapters of its text metrics."""

from mtlkit.metrics.entity import EntityF1, extract_entities, is_bio_scheme, parse_tag
from mtlkit.metrics.generation import (
    ChrF,
    CorpusBLEU,
    ExactMatch,
    RougeF,
    generation_metrics,
)

__all__ = [
    "ChrF",
    "CorpusBLEU",
    "EntityF1",
    "ExactMatch",
    "RougeF",
    "extract_entities",
    "generation_metrics",
    "is_bio_scheme",
    "parse_tag",
]
