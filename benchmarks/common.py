"""What every benchmark shares: the result files and their provenance (commit, clean tree, config
hash, machine), the Δm% measure and the shipped configs they start from.

Provenance rules: a result is fit for the README (``"for_readme": true``) only when it was made
from a clean tree at a recorded commit; :func:`require_clean` refuses a dirty tree unless the
caller allows it, and :func:`write_result` marks what a dirty tree produced.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


#: A single-task score below this makes the task's relative change (Δm%) unstable (a near-zero
#: denominator): reports flag such a task and give the absolute difference beside it.
DELTA_M_FLOOR = 0.2


def delta_m(multi: Mapping[str, float], single: Mapping[str, float]) -> float | None:
    """Δm% (Maninis et al. 2019, "Attentive Single-Tasking of Multiple Tasks", as LibMTL and
    Nash-MTL report it): ``100 * mean over tasks of (multi - single) / single`` for
    higher-is-better metrics, over the tasks of ``multi``. A task whose single-task score is 0
    (tiny smoke runs) has no relative change and is left out; ``None`` when no task is left.
    """
    changes = [(multi[t] - single[t]) / single[t] for t in multi if single[t]]
    return 100 * statistics.fmean(changes) if changes else None


#: Where results are written, relative to the repository root (not part of a tree's state).
RESULTS_PATHSPEC = RESULTS.relative_to(ROOT).as_posix()


def git_state(cwd: Path = ROOT) -> dict[str, Any]:
    """``{"commit": full sha or "unknown", "dirty": bool}``: a tree is dirty when tracked files
    differ from HEAD or untracked files that git does not ignore exist; a dirty tree also gets
    ``"changes"``, a hash of its diff and status, so two different dirty states differ.
    ``benchmarks/results/`` does not count: benchmarks write their results there and read
    nothing from it, so one benchmark's fresh results do not stop the next one at that commit."""
    paths = ["--", ".", f":(exclude){RESULTS_PATHSPEC}"]
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=cwd, text=True).strip()
        status = subprocess.check_output(
            ["git", "status", "--porcelain", "--untracked-files=normal", *paths], cwd=cwd, text=True
        )
        if not status.strip():
            return {"commit": sha, "dirty": False}
        diff = subprocess.check_output(["git", "diff", "HEAD", "--binary", *paths], cwd=cwd)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": True}
    changes = hashlib.sha256(diff + status.encode()).hexdigest()[:16]
    return {"commit": sha, "dirty": True, "changes": changes}


def commit() -> str:
    """The current git commit (short, with ``-dirty`` when the tree has changes)."""
    state = git_state()
    if state["commit"] == "unknown":
        return "unknown"
    return state["commit"][:7] + ("-dirty" if state["dirty"] else "")


def require_clean(allow_dirty: bool, what: str = "the benchmark") -> bool:
    """Refuses (``SystemExit``) to run ``what`` from a dirty tree unless ``allow_dirty``; returns
    whether the results may go into the README (a clean tree)."""
    state = git_state()
    if state["dirty"] and not allow_dirty:
        raise SystemExit(
            f"{what}: the git tree has uncommitted changes, so its results could not be traced to "
            "a commit; commit them, or pass --allow-dirty (results then marked for_readme: false)"
        )
    return not state["dirty"]


def config_hash(text: str) -> str:
    """First 16 hex digits of the SHA-256 of a resolved config's text."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolved_config(args: list[str]) -> str:
    """The CLI's ``--print_config`` text for ``mtlkit`` arguments ``args`` (``fit --config ...``):
    the merged YAML after every override, with every default filled in."""
    import contextlib
    import io

    from mtlkit.cli import cli_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli_main([*args, "--print_config"])
    return out.getvalue()


def digest(spec: Mapping[str, Any]) -> str:
    """A cache key: the first 16 hex digits of the SHA-256 of ``spec`` as sorted JSON."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Writes ``payload`` as JSON to ``path`` through a temporary file and a rename, so a
    stopped process leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True))
    tmp.replace(path)


def train_in_workers(module: str, rows: list[str], workers: int, extra: list[str]) -> None:
    """Trains each of ``rows``, in this order, in a new process ``python -m <module>
    --rows=<row> <extra>``, at most ``workers`` at a time with one torch thread each (on a small
    CPU that beats one process with several threads); a row starts as soon as a process ends, so
    rows sorted longest first keep the processes busy to the end. A new process per row: one
    process training row after row got slower (equal-cost rows took 93-96 s late in a worker
    against 80-82 s in a new process, same results to the last digit, at 5027f80).
    ``SystemExit`` naming the rows whose process failed, after the others finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    waiting, running, failed = list(rows), [], []
    while waiting or running:
        while waiting and len(running) < workers:
            row = waiting.pop(0)
            command = [sys.executable, "-m", module, f"--rows={row}", *extra]
            running.append((row, subprocess.Popen(command, env=env, cwd=ROOT)))
        time.sleep(POLL_SECONDS)
        for row, process in list(running):
            if process.poll() is not None:
                running.remove((row, process))
                if process.returncode != 0:
                    failed.append(row)
    if failed:
        raise SystemExit(f"{module}: the processes of rows {failed} failed")


#: How often :func:`train_in_workers` looks for finished processes.
POLL_SECONDS = 0.5


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (e.g. a transfer benchmark's source checkpoint)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cpu_model() -> str | None:
    """The CPU's name, family and model (and AVX-512 when present) from ``/proc/cpuinfo``: two
    CPUs of one name can pick other kernels, so float results differ in the last bits."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or None
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    avx512 = ", avx512" if "avx512f" in fields.get("flags", "").split() else ""
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"{fields.get('model name', '?')} (family {family}, model {model}{avx512})"


def machine() -> dict[str, Any]:
    """CPU/GPU and library versions."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(
    name: str, payload: dict[str, Any], markdown: str, for_readme: bool = True
) -> Path:
    """Writes ``results/<name>.json`` and ``results/<name>.md``; returns the JSON path.

    The JSON records the commit, whether the tree was dirty, the machine and ``for_readme``:
    ``for_readme`` and a clean tree (a smoke run or a partial run passes ``for_readme=False``).
    ``MTLKIT_RESULTS_DIR`` (read at call time) redirects them, e.g. to a test's temporary folder.
    """
    folder = Path(os.environ.get("MTLKIT_RESULTS_DIR") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    state = git_state()
    provenance = {
        "commit": state["commit"],
        "dirty": state["dirty"],
        "changes": state.get("changes"),
        "for_readme": bool(for_readme and not state["dirty"]),
        "machine": machine(),
    }
    payload = {**payload, **provenance}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (folder / f"{name}.md").write_text(markdown)
    return path
