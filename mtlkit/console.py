"""What the ``mtlkit`` console prints for a user's mistake: one ``error: ...`` line, no traceback.

LightningCLI reports a bad config as jsonargparse's chained errors (a class's own clear message
under several "Does not validate against any of the Union subtypes" levels and a dump of the
whole namespace), and mtlkit's data checks raise from inside ``trainer.fit``. :func:`describe`
turns such an exception into the one line that matters, naming the config key where the parser
knows it; :func:`check_config_files` names the YAML file and line of a syntax error (jsonargparse
parses the file's text and names it ``"<unicode string>"``). The traceback stays available with
``--debug`` or ``MTLKIT_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import logging
import os
import pkgutil
import re
import warnings
from pathlib import Path

import yaml

from mtlkit.errors import ConfigError, MtlkitError

DEBUG_ENV = "MTLKIT_DEBUG"
DEBUG_FLAG = "--debug"
DEBUG_HINT = f"(traceback: {DEBUG_FLAG} or {DEBUG_ENV}=1)"

_KEY = re.compile(r'^Parser key "([^"]+)":')
_CLASS_PATH = re.compile(r"^Problem with given class_path '([^']+)':")
_NO_ATTRIBUTE = re.compile(r"^module '([^']+)' has no attribute '([^']+)'")
_SUBTYPE = re.compile(r"Subtypes: \[<class '([^']+)'>")


class _DropTips(logging.Filter):
    """Drops Lightning's advertisements for its cloud services ("💡 Tip: ... litlogger",
    "... litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


def quiet_third_party() -> None:
    """Silences other libraries' messages that say nothing about the user's run.

    DeepSpeed (imported by transformers' checkpoint code) warns "Setting accelerator to CPU"
    on every CPU machine: naming the CPU accelerator for it (``DS_ACCELERATOR``, unless set, and
    only on a machine without CUDA or XPU) makes its detection silent. Lightning advertises
    litlogger and litmodels at every Trainer start, and its own ``_pytree`` trips a deprecation
    warning of newer torch.
    """
    import torch

    xpu = getattr(torch, "xpu", None)
    accelerator = torch.cuda.is_available() or (xpu is not None and xpu.is_available())
    if "DS_ACCELERATOR" not in os.environ and not accelerator:
        os.environ["DS_ACCELERATOR"] = "cpu"
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def version_line() -> str:
    """``mtlkit X (torch X, transformers X, lightning X, python X)``."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    from mtlkit import __version__

    deps = ", ".join(f"{p} {of(p)}" for p in ("torch", "transformers", "lightning"))
    return f"mtlkit {__version__} ({deps}, python {sys.version.split()[0]})"


def debug_requested(args: list[str]) -> tuple[bool, list[str]]:
    """Whether the traceback was asked for, and ``args`` without ``--debug``."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return env or DEBUG_FLAG in args, [a for a in args if a != DEBUG_FLAG]


def config_files(args: list[str]) -> list[str]:
    """The values of ``--config``/``-c`` in ``args``."""
    found = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def check_config_files(args: list[str]) -> None:
    """Every ``--config`` file exists and is YAML.

    A value that is no file name (jsonargparse also takes inline YAML) is left to the parser.

    Raises:
        ConfigError: Naming the file, and the line and column of a syntax error.
    """
    for value in config_files(args):
        path = Path(value)
        if not path.is_file():  # not found, or inline YAML: the parser says which
            continue
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.MarkedYAMLError as err:
            raise ConfigError(f"config file {value}: {_yaml_problem(err)}") from err
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {value}: {err}") from err


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    where = lambda mark: f"line {mark.line + 1}, column {mark.column + 1}"  # noqa: E731
    mark = err.problem_mark or err.context_mark
    text = f"{where(mark)}: " if mark is not None else ""
    text += err.problem or "invalid YAML"
    if err.context:
        text += f" ({err.context}"
        text += f" at {where(err.context_mark)})" if err.context_mark is not None else ")"
    return text


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return chain


def _messages(chain: list[BaseException]) -> list[str]:
    """The distinct messages of the chain (jsonargparse repeats each one at several levels)."""
    out: list[str] = []
    for err in chain:
        text = str(err).strip()
        if not out or out[-1] != text:
            out.append(text)
    return out


def _key_path(messages: list[str]) -> str:
    """The config key jsonargparse was reading, e.g. ``model.init_args.pooling``."""
    parts: list[str] = []
    for text in messages:
        if match := _KEY.match(text):
            parts.append(match.group(1))
        elif _CLASS_PATH.match(text) and parts and parts[-1] != "init_args":
            parts.append("init_args")
    while parts and parts[-1] == "init_args":
        parts.pop()
    return ".".join(parts)


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(err: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit status for a user's mistake; ``None`` for anything else
    (a bug, whose traceback is then shown as it is)."""
    chain = _chain(err)
    own = [e for e in chain if isinstance(e, MtlkitError)]
    if own:
        return _one_line(str(own[-1]), 2000), 2 if isinstance(own[-1], ConfigError) else 1
    if any(isinstance(e, argparse.ArgumentError) for e in chain):
        return _argument_error(_messages(chain), chain), 2
    # A file or folder that cannot be read (a tokenizer or encoder path, a checkpoint), raised
    # as it is or wrapped by jsonargparse while a constructor ran.
    wrapped = isinstance(err, ValueError | TypeError)
    unreadable = [e for e in chain if isinstance(e, OSError) and (e is err or wrapped)]
    if unreadable:
        return _one_line(str(unreadable[0])), 1  # the outermost says which file
    return None


def _argument_error(messages: list[str], chain: list[BaseException]) -> str:
    key = _key_path(messages)
    prefix = f"{key}: " if key else ""
    given = _missing_class(messages, chain[-1])
    if given is None:
        return prefix + _one_line(messages[-1])
    base = None
    for before, text in zip(messages, messages[1:], strict=False):
        if text.startswith(f"Problem with given class_path '{given}'"):
            base = _SUBTYPE.search(before)
    hint = suggest_class_path(given, base.group(1) if base else None)
    text = f"{prefix}no class {given!r} ({_one_line(messages[-1])})"
    return text + (f"; did you mean {hint!r}?" if hint else "")


def _missing_class(messages: list[str], innermost: BaseException) -> str | None:
    """The import path that failed, when the innermost error is a failed import."""
    if isinstance(innermost, AttributeError):
        match = _NO_ATTRIBUTE.match(str(innermost))
        return f"{match.group(1)}.{match.group(2)}" if match else None
    if isinstance(innermost, ImportError):
        paths = [m.group(1) for m in map(_CLASS_PATH.match, messages) if m]
        return paths[-1] if paths else None
    return None


def suggest_class_path(given: str, base: str | None = None) -> str | None:
    """The import path of the class closest to ``given`` among mtlkit's public classes and those
    of ``given``'s module, only subclasses of ``base`` (an import path) where it is known."""
    base_type = _import(base) if base else None
    candidates: set[str] = set()
    module_name = given.rpartition(".")[0]
    modules = [m for m in (_importable(module_name),) if m is not None] + _mtlkit_namespaces()
    for module in modules:
        for name, obj in vars(module).items():
            if name.startswith("_") or not inspect.isclass(obj):
                continue
            if module is not modules[0] and not obj.__module__.startswith(module.__name__):
                continue  # a class imported from elsewhere: named by its own package
            if isinstance(base_type, type) and not issubclass(obj, base_type):
                continue
            candidates.add(f"{module.__name__}.{name}")

    def similarity(path: str) -> tuple[float, float]:  # the class name first, then the module
        ratio = lambda a, b: difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()  # noqa: E731
        return ratio(given.rpartition(".")[2], path.rpartition(".")[2]), ratio(given, path)

    best = max(sorted(candidates), key=similarity, default=None)
    return best if best is not None and similarity(best)[0] >= 0.6 else None


def _import(path: str) -> object | None:
    module, _, name = path.rpartition(".")
    found = _importable(module)
    return getattr(found, name, None) if found is not None else None


def _importable(name: str):  # noqa: ANN202 - a module or None
    """The module ``name``, or the longest importable prefix of it."""
    while name:
        try:
            return importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a typo'd module name: try its parent
            name = name.rpartition(".")[0]
    return None


def _mtlkit_namespaces() -> list:
    """mtlkit's packages and top-level modules: the import paths configs name classes by."""
    import mtlkit

    found = [mtlkit]
    for info in pkgutil.walk_packages(mtlkit.__path__, "mtlkit."):
        top_level = info.name.count(".") == 1
        if (info.ispkg or top_level) and not info.name.rpartition(".")[2].startswith("_"):
            module = _importable(info.name)
            if module is not None and module.__name__ == info.name:
                found.append(module)
    return found
