"""One run per folder: a lock while a run trains, ``--ckpt_path last`` that resumes or fails.

The folders a run writes belong to one run at a time. :class:`RunFolderLock` takes a lock file
for each when training starts and removes it at the end: beside each fixed checkpoint folder
(``runs/quickstart/.checkpoints.mtlkit-run.lock``; beside, so that a new checkpoint folder stays
empty) and inside the log folder (``.mtlkit-run.lock`` next to ``config.yaml``; it also holds the
checkpoints of a ``ModelCheckpoint`` without ``dirpath``) when the run logs or checkpoints there.
A second run started in one of them stops with a message naming the folder and the process
holding it; a lock left by a killed process of this machine is taken over. A new run in a folder
that holds an earlier run's ``last.ckpt`` replaces that file (instead of writing
``last-v1.ckpt`` next to it), so a fixed path such as ``runs/quickstart/checkpoints/last.ckpt``
always holds the newest run's model.

:func:`resolve_last` turns ``--ckpt_path last`` into a path (the newest ``last*.ckpt`` in the
checkpoint folders, including earlier ``version_N`` folders of a versioned logger) or raises:
asking to resume never silently trains from step 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mtlkit.checkpointing import CheckpointError, pid_alive
from mtlkit.errors import MtlkitError

__all__ = ["RunFolderError", "RunFolderLock", "lock_path", "log_dir", "resolve_last"]

#: The lock file inside a log folder.
LOCK_NAME = ".mtlkit-run.lock"


def lock_path(folder: str | Path) -> Path:
    """The lock file of a fixed checkpoint folder: a hidden file beside it."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.mtlkit-run.lock"


class RunFolderError(MtlkitError, RuntimeError):
    """Another run is using the folder this run would write to."""


def log_dir(trainer: L.Trainer) -> str:
    """``trainer.log_dir`` without its broadcast, so that one process alone may ask."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = getattr(logger, "log_dir", None) or logger.save_dir
        return str(folder or trainer.default_root_dir)
    return str(trainer.default_root_dir)


def _logger_root(trainer: L.Trainer) -> Path | None:
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)


def checkpoint_dir(callback: ModelCheckpoint, trainer: L.Trainer) -> str:
    """The folder ``callback`` writes to (Lightning's resolution, done before its ``setup``)."""
    if callback.dirpath is not None:
        return str(callback.dirpath)
    root = _logger_root(trainer)
    if root is None:
        return os.path.join(trainer.default_root_dir, "checkpoints")
    version = trainer.loggers[0].version
    version = version if isinstance(version, str) else f"version_{version}"
    return str(root / version / "checkpoints")


def _search_folders(trainer: L.Trainer) -> list[Path]:
    folders: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None:
            folders.append(Path(callback.dirpath))
        elif (root := _logger_root(trainer)) is not None:
            folders.extend(sorted(root.glob("*/checkpoints")) or [root / "version_*/checkpoints"])
        else:
            folders.append(Path(trainer.default_root_dir) / "checkpoints")
    return list(dict.fromkeys(folders))


def resolve_last(trainer: L.Trainer) -> str:
    """The checkpoint ``--ckpt_path last`` means: the newest ``last*.ckpt`` this config writes.

    Raises:
        CheckpointError: The run writes no checkpoints, or none was found.
    """
    if not any(isinstance(c, ModelCheckpoint) for c in trainer.checkpoint_callbacks):
        raise CheckpointError(
            "--ckpt_path last: this config writes no checkpoints (no ModelCheckpoint callback), "
            "so there is no last checkpoint to resume from; pass the checkpoint's path"
        )
    folders = _search_folders(trainer)
    found = [p for f in folders if f.is_dir() for p in f.glob("last*.ckpt") if p.is_file()]
    if not found:
        where = ", ".join(str(f) for f in folders)
        raise CheckpointError(
            f"--ckpt_path last: there is no last checkpoint (last*.ckpt) in {where}; pass the "
            "checkpoint's path, or train afresh without --ckpt_path"
        )
    newest = max(found, key=lambda p: p.stat().st_mtime)
    rank_zero_info(f"--ckpt_path last: resuming from {newest}")
    return str(newest)


def _read_lock(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return {}


class RunFolderLock(L.Callback):
    """Holds a lock file in every folder this run writes, from ``setup`` to the end of ``fit``."""

    def __init__(self) -> None:
        self._held: list[Path] = []
        self._host = socket.gethostname()

    def _locks(self, trainer: L.Trainer) -> list[tuple[Path, Path]]:
        """``(folder, lock file)`` pairs. A run without logger and checkpoints (benchmark
        workers, smoke runs) writes only ``config.yaml``: it takes no lock."""
        checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        locks = [(Path(c.dirpath), lock_path(c.dirpath)) for c in checkpoints if c.dirpath]
        if trainer.loggers or any(c.dirpath is None for c in checkpoints):
            folder = Path(log_dir(trainer)).resolve()
            locks.append((folder, folder / LOCK_NAME))
        return list(dict.fromkeys(locks))

    def _acquire(self, folder: Path, lock: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        mine = {"pid": os.getpid(), "host": self._host, "started": time.strftime("%F %T")}
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_lock(lock)
                pid, host = owner.get("pid"), owner.get("host")
                if pid == os.getpid() and host == self._host:
                    self._held.append(lock)  # left by an earlier fit of this process
                    return
                if host == self._host and isinstance(pid, int) and not pid_alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()  # left by a run that was killed
                    continue
                if not owner:  # being written by its owner this very moment
                    time.sleep(0.2)
                    continue
                raise RunFolderError(
                    f"run folder {folder} is in use by another run (process {pid} on {host}, "
                    f"started {owner.get('started')}); one run per folder: wait for it to end, "
                    "or give this run its own folder (trainer.default_root_dir, the logger's "
                    f"name/version or the ModelCheckpoint's dirpath). If no run is using it, "
                    f"delete {lock}"
                ) from None
            except OSError as err:  # a read-only parent, ...: run, but say that it is unguarded
                rank_zero_warn(f"could not lock {folder} ({err}); a concurrent run is not detected")
                return
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            self._held.append(lock)
            return
        raise RunFolderError(
            f"the lock {lock} of run folder {folder} cannot be read; if no run is using the "
            "folder, delete it"
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        error = None
        if trainer.is_global_zero:
            try:
                for folder, lock in self._locks(trainer):
                    self._acquire(folder, lock)
            except RunFolderError as err:
                self.release()
                error = str(err)
        error = trainer.strategy.broadcast(error)  # every process stops, not rank 0 alone
        if error:
            raise RunFolderError(error)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            return
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
                continue
            last = os.path.join(str(callback.dirpath), f"{callback.CHECKPOINT_NAME_LAST}.ckpt")
            if os.path.isfile(last) and callback.last_model_path != last:
                callback.last_model_path = last  # overwritten by this run, no last-v1.ckpt
                rank_zero_info(
                    f"{last} holds an earlier run's last checkpoint; this new run replaces it "
                    "(to continue that run instead, pass --ckpt_path last)"
                )

    def release(self) -> None:
        for lock in self._held:
            if _read_lock(lock).get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        self._held = []

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.release()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
