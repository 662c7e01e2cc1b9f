"""What every benchmark result records: the commit, the machine and the config."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


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
