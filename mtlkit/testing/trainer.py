"""A quiet Lightning ``Trainer`` for tests, notebooks and benchmarks: no logger, checkpoints,
progress bar or model summary (each overridable), in one place instead of copied per call site."""

from __future__ import annotations

from typing import Any

import lightning as L

#: The Trainer arguments that silence a run.
QUIET: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def quiet_trainer(**overrides: Any) -> L.Trainer:
    """``L.Trainer(**QUIET, **overrides)``: overrides win (``logger=TensorBoardLogger(...)``)."""
    return L.Trainer(**{**QUIET, **overrides})


def quiet_cli_args() -> list[str]:
    """:data:`QUIET` as ``mtlkit fit`` command-line overrides (``--trainer.logger=false``, ...)."""
    return [f"--trainer.{key}={str(value).lower()}" for key, value in QUIET.items()]
