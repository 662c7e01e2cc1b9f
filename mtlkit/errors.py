"""Error types raised before training starts, so bad input fails fast with one clear message."""

from __future__ import annotations


class MtlkitError(Exception):
    """Base class of mtlkit's own errors."""


class ConfigError(MtlkitError, ValueError):
    """A configuration value is invalid or inconsistent."""


class DataError(MtlkitError, ValueError):
    """The data does not match what a task declares (columns, labels, sizes)."""


class DataWarning(UserWarning):
    """The data is usable but probably not what was meant (leakage, repeated rows, ...)."""
