"""Checks of the data module's settings against the data, the tokenizer and the encoder, run
while the data is prepared (before the first training step)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from mtlkit.data.sampling import SamplingStrategy
from mtlkit.errors import ConfigError, DataWarning
from mtlkit.tasks.base import Task


def check_counts(**values: tuple[int | None, int]) -> None:
    """Each named count is unset or an integer of at least its minimum.

    Args:
        **values: Name to ``(value, minimum)``.
    """
    for name, (value, least) in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            unset = " (or unset, for one pass over the data)" if name == "steps_per_epoch" else ""
            raise ConfigError(f"{name} must be an integer >= {least}{unset}, got {value!r}")


def check_max_length(task: Task, tokenizer: PreTrainedTokenizerBase) -> None:
    """``max_length`` leaves room for text after the special tokens (the encoder's own limit is
    checked by the model: :meth:`mtlkit.model.HFEncoder.check_max_length`)."""
    pair = task.text_pair_column is not None
    special = tokenizer.num_special_tokens_to_add(pair=pair)
    if task.max_length <= special:
        raise ConfigError(
            f"task {task.name!r}: max_length {task.max_length} leaves no room for text: "
            f"the tokenizer adds {special} special tokens to each "
            f"{'pair' if pair else 'text'}; use at least {special + 1}"
        )


def warn_repeated_rows(
    names: Sequence[str],
    sizes: Sequence[int],
    sampling: SamplingStrategy,
    batch_mode: str,
    batch_size: int,
    world_size: int = 1,
) -> None:
    """Warns when one step draws more rows of a task than its train split has.

    Args:
        names: Task names.
        sizes: Train examples per task.
        sampling: The task sampling (mixed batches split a step by its probabilities).
        batch_mode: ``homogeneous`` or ``mixed``.
        batch_size: Examples per step and process.
        world_size: Number of processes.
    """
    per_step = batch_size * world_size
    processes = f" x {world_size} processes" if world_size > 1 else ""
    probs = sampling.probabilities(sizes, 0.0)
    for name, size, p in zip(names, sizes, probs, strict=True):
        drawn = per_step if batch_mode == "homogeneous" else round(p * per_step)
        if drawn > size:
            warnings.warn(
                f"task {name!r}: a step draws {drawn} examples (batch_size {batch_size}"
                f"{processes}) but its train split has only {size}: every step repeats rows; "
                "lower batch_size or add data",
                DataWarning,
                stacklevel=3,
            )
