"""Model-based transfer: initialise a model's encoder (and chosen heads) from a trained model.

The weight copy itself is a step of building the model (:mod:`mtlkit.model.weights`); this is
the training module's entry point, which also reports what was loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch.utilities import rank_zero_info

from mtlkit.model.weights import InitReport, load_weights

if TYPE_CHECKING:
    from mtlkit.training.module import MultiTaskModule

__all__ = ["InitReport", "initialise_from", "load_weights"]


def initialise_from(
    module: MultiTaskModule, path: str, heads: list[str] | dict[str, str] | None = None
) -> InitReport:
    """``init_from``: :func:`load_weights` from ``path`` into the module's model.

    Args:
        module: The training module; its heads must be built (``configure_model``).
        path: A mtlkit checkpoint (``.ckpt``) or an exported folder (``mtlkit export``).
        heads: Heads to load as well (see :func:`load_weights`).

    Returns:
        The report, also stored as ``module.init_report`` and printed once (rank zero).
    """
    labels = {name: task.label_state() for name, task in module.tasks.items()}
    report = module.model.load_weights_from(path, heads, labels)
    module.init_report = report
    rank_zero_info(str(report))
    return report
