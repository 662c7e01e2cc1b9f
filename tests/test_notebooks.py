"""The notebooks under ``notebooks/`` run top to bottom (small settings) and are committed clean.

Each notebook is executed through ``nbclient`` in a temporary working directory with
``MTLKIT_NOTEBOOK_SMALL=1`` (tiny random BERT, toy data, a few steps). The kernel is this
interpreter (``sys.executable``), through a kernelspec written into a temporary ``JUPYTER_PATH``,
so a stale user-level ``python3`` kernel can never run the notebooks with another environment.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "mtlkit-test-kernel"
# Text each notebook must print in small mode: proof that it reached its last results.
EXPECTED = {
    "01_quickstart.ipynb": ["val metrics per task", "val/mean =", "trec="],
    "02_weighting.ipynb": ["method", "pcgrad", "uncertainty", "cos(trec, sentiment)"],
    "03_transfer.ipynb": ["loaded", "checkpoint  frozen encoder", "L2-SP", "exported", "p(spam)"],
}
CELL_TIMEOUT_S = 120


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_every_notebook_is_listed() -> None:
    assert sorted(p.name for p in _notebooks()) == sorted(EXPECTED)


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"code cells {dirty} carry outputs or execution counts: strip them"
    assert "MTLKIT_NOTEBOOK_SMALL" in code[0].source, "the first code cell sets the parameters"


def _write_kernelspec(root: Path) -> None:
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "mtlkit (tests)", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))


def _printed(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"])
    return "\n".join(parts)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_runs_top_to_bottom(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MTLKIT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    work = tmp_path / "work"
    work.mkdir()

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(work)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    elapsed = time.perf_counter() - start

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    printed = _printed(nb)
    missing = [s for s in EXPECTED[path.name] if s not in printed]
    assert not missing, f"{path.name} never printed {missing}:\n{printed[-3000:]}"
    print(f"{path.name}: {elapsed:.1f} s")
