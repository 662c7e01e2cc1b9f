"""Every module imports on its own, and package dependencies point one way.

Layers, lowest first (STYLE.md): errors/paths and the other leaves <- tasks/data/weighting <- model
(plain, no Lightning) <- training (the LightningModule) <-
transfer and the training callbacks <- cli/export/registry/testing. A unit (the first
level under ``mtlkit``) imports units of its own layer or lower only, and no import cycle joins
units, counting lazy imports inside functions (imports under ``if TYPE_CHECKING:`` are types
only, not counted). A lazy import or module-level ``__getattr__`` that only breaks a cycle
would hide a layering error: this test reads the source, so it sees them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mtlkit

ROOT = Path(mtlkit.__file__).parent

#: Layer of every unit; a new unit must be placed here.
LAYERS: dict[str, int] = {
    **dict.fromkeys(
        ["errors", "paths", "console", "checkpointing", "run_folder", "metrics", "sources"], 0
    ),
    **dict.fromkeys(["packaged", "optim", "_compat", "dialogue", "inputs"], 0),
    # Weighting methods see only losses, gradients and a StepContext: they import no other unit,
    # and the LightningModule (in training) holds one.
    **dict.fromkeys(["tasks", "data", "weighting"], 1),
    # The plain model (no Lightning) and serving; training wraps the model for Lightning.
    **dict.fromkeys(["model", "inference"], 2),
    "training": 3,
    **dict.fromkeys(["transfer", "regularization", "finetuning", "diagnostics", "callbacks"], 4),
    **dict.fromkeys(["cli", "export", "hf_export", "tune", "registry", "testing"], 5),
}


def _modules() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mtlkit" else None


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` of every import of the file, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for sub in ast.walk(stmt)
    }
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((base, node.lineno))
    return found


def _edges() -> dict[tuple[str, str], list[str]]:
    """Unit-to-unit imports, each with where it happens (``module:line``)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(
            ".__init__"
        )
        source = _unit(module)
        for target, line in _imports(path, module):
            unit = _unit(target)
            if source and unit and unit != source:
                edges.setdefault((source, unit), []).append(f"{module}:{line}")
    return edges


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return groups


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()} - {None}
    missing = sorted(units - set(LAYERS))
    assert not missing, f"place the new unit(s) {missing} in LAYERS (tests/test_imports.py)"


def test_no_unit_imports_a_higher_layer():
    upward = [
        f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]}) at {', '.join(where)}"
        for (a, b), where in sorted(_edges().items())
        if a in LAYERS and b in LAYERS and LAYERS[b] > LAYERS[a]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_units():
    edges = set(_edges())
    assert not _cycles(edges), _cycles(edges)


def test_the_layer_checks_catch_a_cycle():
    assert _cycles({("tasks", "data"), ("data", "tasks")}) == [["data", "tasks"]]
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert not _cycles({("a", "b"), ("b", "c")})


# Heavy third-party packages are imported once, then each module is imported in a forked child
# that has no mtlkit module loaded yet: what an import order can break (cycles, a name used
# before it is defined) shows as in a fresh interpreter, at a fraction of its start-up cost.
_IMPORT_EACH = """
import importlib, os, sys, traceback
import torch, transformers, lightning, datasets, torchmetrics, peft  # noqa: F401
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("FAILED:", failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_on_its_own():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *_modules()],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def test_the_data_package_imports_in_a_fresh_interpreter():
    done = subprocess.run(
        [sys.executable, "-c", "import mtlkit.data"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
