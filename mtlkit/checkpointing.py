"""Exact, crash-safe resumption: atomic checkpoint files and the global RNG states.

Two pieces, both installed by default by the ``mtlkit`` CLI:

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the target's folder,
  flushes and ``fsync``s it, then ``os.replace``s it over the target. A run killed while saving
  (even with ``SIGKILL``) leaves the previous ``last.ckpt`` intact, never a truncated one.
  The written file is read back (its zip records and their CRCs) before it replaces the target,
  and a checkpoint whose model or optimizer tensors are not finite is refused: ``last.ckpt`` is
  always the last complete, finite state. Reading a damaged checkpoint raises
  :class:`CheckpointError`, which names the newest intact checkpoint next to it.
* :class:`RNGState` stores the Python, NumPy and torch (and CUDA) random states in every
  checkpoint and puts them back just before the first training step after a resume, so dropout
  masks and any other global draws continue exactly as in an uninterrupted run.

Everything else a resume needs is already part of the checkpoint: model and weighting-method
state (buffers, extra state), optimizer, LR scheduler, loop counters and the data module's
sampler position (see :class:`mtlkit.data.batching.MultiTaskBatchSampler`).

Periodic checkpoints every N optimizer steps are plain Lightning::

    trainer:
      callbacks:
        - class_path: lightning.pytorch.callbacks.ModelCheckpoint
          init_args: {every_n_train_steps: 100, save_last: true}

and ``mtlkit fit ... --ckpt_path <run>/checkpoints/last.ckpt`` resumes from the latest one.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import random
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mtlkit.errors import MtlkitError

#: A file or folder path, as Lightning's checkpoint IO takes it.
PathLike = str | os.PathLike[str]

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "RNGState",
    "atomic_torch_save",
    "damage",
    "newest_intact",
]


class CheckpointError(MtlkitError, RuntimeError):
    """A checkpoint cannot be written (non-finite state) or read (missing, damaged)."""


def _is_local(path: PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _fsync_dir(folder: str) -> None:
    """Makes a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temporaries(folder: str, prefix: str) -> None:
    """Removes temporary files of killed writes; a live process's file (``pid<N>`` in its name,
    N alive) is another writer's, in the middle of its write, and stays."""
    for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*.tmp")):
        owner = re.match(r"pid(\d+)\.", os.path.basename(stale)[len(prefix) :])
        if owner and pid_alive(int(owner.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(stale)


def damage(path: PathLike) -> str | None:
    """Why ``path`` is not a complete checkpoint file (``None`` if it is one).

    Reads the zip records ``torch.save`` writes and checks their CRCs: a truncated file, random
    bytes or a flipped bit is found without unpickling anything.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                return "it holds no torch data record"
            bad = archive.testzip()
            if bad is not None:
                return f"record {bad!r} fails its CRC check"
    except FileNotFoundError:
        return "it does not exist"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"it is truncated or not a checkpoint file ({err})"
    return None


def _checkpoints_newest_first(folder: Path) -> Iterator[Path]:
    files = [p for p in folder.glob("*.ckpt") if p.is_file()]
    yield from sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def newest_intact(folder: PathLike, exclude: PathLike | None = None) -> Path | None:
    """The most recently written intact ``*.ckpt`` in ``folder`` (other than ``exclude``)."""
    folder = Path(str(folder))
    skip = Path(str(exclude)).resolve() if exclude is not None else None
    if not folder.is_dir():
        return None
    for candidate in _checkpoints_newest_first(folder):
        if candidate.resolve() != skip and damage(candidate) is None:
            return candidate
    return None


def damaged_checkpoint_message(path: PathLike, reason: str) -> str:
    """One message: the damaged file, why, and what to resume from instead."""
    folder = os.path.dirname(str(path)) or "."  # as the user wrote it: paths they can paste
    other = newest_intact(folder, exclude=path)
    hint = (
        f"the newest intact checkpoint there is {other}: resume with --ckpt_path {other}"
        if other is not None
        else f"there is no intact checkpoint in {folder}: train afresh (no --ckpt_path)"
    )
    if not os.path.exists(str(path)):
        return f"checkpoint {path} does not exist; {hint}"
    return f"checkpoint {path} is damaged: {reason}; {hint}"


def _float_tensors(obj: Any, name: str) -> Iterator[tuple[str, torch.Tensor]]:
    if torch.is_tensor(obj):
        if obj.is_floating_point() or obj.is_complex():
            yield name, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _float_tensors(value, f"{name}.{key}" if name else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from _float_tensors(value, f"{name}[{i}]")


def nonfinite_tensors(checkpoint: dict[str, Any]) -> list[str]:
    """Names of the model and optimizer tensors holding NaN or inf.

    Only the training state is checked: callbacks may keep infinities on purpose (the
    ``kth_value`` of a ``ModelCheckpoint`` starts at inf).
    """
    parts = {k: checkpoint[k] for k in ("state_dict", "optimizer_states") if k in checkpoint}
    named = list(_float_tensors(parts, ""))
    if not named:
        return []
    # One fused max-abs over everything (NaN propagates; no overflow, unlike a 2-norm); names
    # are looked up one by one only when something is not finite.
    largest = torch.nn.utils.get_total_norm([t.detach() for _, t in named], norm_type=math.inf)
    if bool(torch.isfinite(largest)):
        return []
    return [n for n, t in named if not bool(torch.isfinite(t).all())]


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file, ``fsync`` and ``os.replace``.

    Either the complete new file or the previous file (if any) is at ``path`` afterwards, whatever
    happens during the write: the new file replaces the old one only once it has been read back
    intact. Temporary files left by an earlier killed write are removed (never those of a
    concurrent writer that is still running).
    """
    path = str(path).removeprefix("file://")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix = _temp_prefix(path)
    _remove_stale_temporaries(folder, prefix)
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}pid{os.getpid()}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~umask)
        reason = damage(tmp)
        if reason is not None:
            raise CheckpointError(
                f"the checkpoint written for {path} does not read back ({reason}); "
                "the previous file is kept"
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` whose local writes are atomic and durable.

    Remote (fsspec URL) paths fall back to Lightning's own saving. A checkpoint whose model or
    optimizer tensors are not finite is never written (the previous file stays), and reading a
    missing or damaged file raises one :class:`CheckpointError` naming it and the newest intact
    checkpoint next to it.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None
    ) -> None:
        bad = nonfinite_tensors(checkpoint)
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise CheckpointError(
                f"refusing to write {path}: {len(bad)} tensor(s) hold NaN or inf ({shown}); the "
                "previous checkpoint is kept. The training state diverged: lower the learning "
                "rate or check the loss weights and targets"
            )
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: PathLike, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, *args, **kwargs)
        local = str(path).removeprefix("file://")
        reason = damage(local)
        if reason is None:
            try:
                return super().load_checkpoint(path, *args, **kwargs)
            except (RuntimeError, EOFError, OSError) as err:  # intact zip, unreadable contents
                if isinstance(err, CheckpointError):
                    raise
                reason = f"its contents do not load ({type(err).__name__})"
        # ``from None``: torch's own message for such files suggests weights_only=False.
        raise CheckpointError(damaged_checkpoint_message(local, reason)) from None


def _collect() -> dict[str, Any]:
    """The global random states, as tensors and plain Python (loads with ``weights_only``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch.cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("torch.cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class RNGState(L.Callback):
    """Makes the global RNG states part of the training state: checkpointed, and restored exactly.

    The state that matters is the one each training step starts from. So that it is the same
    whether a run was interrupted or not, the callback takes the states at the end of every
    training step (``on_train_batch_end``) and puts them back at the start of the next one
    (``on_train_batch_start``): whatever runs in between (validation, checkpointing, a new epoch's
    DataLoader iterator, which draws a base seed from torch's generator) leaves the training draws
    alone. Checkpoints store those end-of-step states; after a restore they are put back at the
    start of the first resumed step, so the work a resumed run does first (building the model,
    sanity validation, new iterators) does not shift the draws either, whether the checkpoint was
    written in the middle of an epoch, at its end or after validation.

    Lightning writes the checkpoint from rank 0, so in a multi-process run every rank resumes
    with rank 0's states (deterministic, but not the per-rank streams of the uninterrupted run).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None  # loaded from a checkpoint
        self._after_step: dict[str, Any] | None = None  # taken at the end of the last step
        self._after_step_at = -1  # the global step it was taken at
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        # A checkpoint written in `on_train_batch_end` by a callback that runs before this one
        # (ModelCheckpoint runs last, but the order is the trainer's) comes before this step's
        # snapshot: nothing has drawn since the step ended, so the current states are the ones.
        step = self._trainer.global_step if self._trainer is not None else None
        if self._after_step is not None and self._after_step_at == step:
            return self._after_step
        return _collect()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict) if state_dict else None
        self._after_step = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._after_step = None  # a later fit() on the same trainer starts from its own states

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        state = self._pending if self._pending is not None else self._after_step
        self._pending = None
        if state is not None:
            _restore(state)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._after_step, self._after_step_at = _collect(), trainer.global_step
