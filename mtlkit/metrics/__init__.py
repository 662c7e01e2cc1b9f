"""Metrics that torchmetrics does not provide."""

from mtlkit.metrics.entity import EntityF1, extract_entities, is_bio_scheme, parse_tag

__all__ = ["EntityF1", "extract_entities", "is_bio_scheme", "parse_tag"]
