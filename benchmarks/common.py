"""What every benchmark shares: the result files (commit, machine, config), the Δm% measure and
the shipped configs they start from."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def delta_m(multi: Mapping[str, float], single: Mapping[str, float]) -> float | None:
    """Δm% (Maninis et al. 2019, "Attentive Single-Tasking of Multiple Tasks", as LibMTL and
    Nash-MTL report it): ``100 * mean over tasks of (multi - single) / single`` for
    higher-is-better metrics, over the tasks of ``multi``. A task whose single-task score is 0
    (tiny smoke runs) has no relative change and is left out; ``None`` when no task is left.
    """
    changes = [(multi[t] - single[t]) / single[t] for t in multi if single[t]]
    return 100 * statistics.fmean(changes) if changes else None


def commit() -> str:
    """The current git commit (with ``-dirty`` when the tree has changes)."""
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD"]) != 0
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    """CPU/GPU and library versions."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, payload: dict[str, Any], markdown: str) -> Path:
    """Writes ``results/<name>.json`` and ``results/<name>.md``; returns the JSON path.

    ``MTLKIT_RESULTS_DIR`` (read at call time) redirects them, e.g. to a test's temporary folder.
    """
    folder = Path(os.environ.get("MTLKIT_RESULTS_DIR") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"commit": commit(), "machine": machine(), **payload}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (folder / f"{name}.md").write_text(markdown)
    return path
