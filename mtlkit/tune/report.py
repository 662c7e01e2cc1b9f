"""The end of a search: a table of the trials and the two plots (matplotlib, no plotly)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

__all__ = ["plots", "table"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if text.startswith("{"):  # a dict choice (stored as JSON): its class_path says it
        with contextlib.suppress(ValueError, AttributeError):
            text = json.loads(text).get("class_path", text)
    return text if len(text) <= 60 else text[:57] + "..."


def table(study: Any, objective: str) -> str:
    """A markdown table: one row per trial (number, state, objective, steps reported, params)."""
    keys = sorted({k for t in study.trials for k in t.params})
    header = ["trial", "state", objective, "reports", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in study.trials:
        value = "-" if t.value is None else _cell(float(t.value))
        cells = [str(t.number), t.state.name.lower(), value, str(len(t.intermediate_values))]
        cells += [_cell(t.params[k]) if k in t.params else "-" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(study: Any, out: Path) -> dict[str, str]:
    """Writes ``optimization_history.png`` and ``param_importances.png`` where they can be drawn.

    Returns:
        Per plot, the file written or why it was not (parameter importances need two complete
        trials that differ).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    notes: dict[str, str] = {}
    for name, draw in (
        ("optimization_history", optuna_plots.plot_optimization_history),
        ("param_importances", optuna_plots.plot_param_importances),
    ):
        path = out / f"{name}.png"
        try:
            axes = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            notes[name] = f"not drawn ({err})"
            continue
        axes.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(axes.figure)
        notes[name] = str(path)
    return notes
