"""Multi-task batch plans, the dataset that serves them and the collator that pads them.

A *plan* says which examples of which tasks form one step. The training plan is a pure function
of ``(seed, epoch, step)`` and the per-task stream positions at the start of the epoch, so the
sampler's state is a few integers and a resumed run replays the same task sequence exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from datasets import Dataset
from torch import Tensor

from mtlkit.data.sampling.base import SamplingStrategy
from mtlkit.errors import ConfigError
from mtlkit.tasks.base import Task

BatchMode = Literal["homogeneous", "mixed"]
Plan = dict[str, Any]


class TaskStream:
    """An endless, reshuffled-every-pass order over one task's examples.

    With ``lengths``, each window of ``group_size`` shuffled indices is sorted by length, so
    consecutive draws have similar lengths and dynamic padding wastes less.
    """

    def __init__(
        self, size: int, seed: int, lengths: np.ndarray | None = None, group_size: int = 1024
    ) -> None:
        self.size, self.seed, self.lengths, self.group_size = size, seed, lengths, group_size
        self.pass_no, self.offset = 0, 0
        self._cache: tuple[int, np.ndarray] | None = None

    def _order(self, pass_no: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != pass_no:
            order = np.random.default_rng([self.seed, pass_no]).permutation(self.size)
            if self.lengths is not None:
                chunks = [
                    order[i : i + self.group_size] for i in range(0, self.size, self.group_size)
                ]
                order = np.concatenate(
                    [c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks]
                )
            self._cache = (pass_no, order)
        return self._cache[1]

    def take(self, count: int) -> list[int]:
        """The next ``count`` indices (wrapping into a new shuffled pass when needed)."""
        out: list[int] = []
        while len(out) < count:
            n = min(count - len(out), self.size - self.offset)
            out.extend(self._order(self.pass_no)[self.offset : self.offset + n].tolist())
            self.offset += n
            if self.offset == self.size:
                self.pass_no, self.offset = self.pass_no + 1, 0
        return out

    def get_state(self) -> tuple[int, int]:
        return self.pass_no, self.offset

    def set_state(self, state: Sequence[int]) -> None:
        self.pass_no, self.offset = int(state[0]), int(state[1])


class MultiTaskBatchSampler:
    """Yields one plan per training step.

    ``homogeneous``: each step draws one task with the sampling probabilities and a batch of it.
    ``mixed``: each step draws per-task counts from a multinomial over the same probabilities.
    With ``world_size > 1`` the plan covers the global batch and each rank keeps a disjoint slice;
    every rank draws the same tasks because the draws depend only on the shared seed.

    Args:
        task_names: Task names, in model order.
        sizes: Training examples per task.
        strategy: Sampling strategy.
        batch_size: Examples per step and per rank.
        mode: ``homogeneous`` or ``mixed``.
        steps_per_epoch: Steps in one epoch.
        total_steps: Steps of the whole run (annealed sampling uses the fraction done).
        seed: Seed of all draws.
        lengths: Per-task token lengths, enabling length-grouped streams.
        rank: This process's rank.
        world_size: Number of processes.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        sizes: Sequence[int],
        strategy: SamplingStrategy,
        batch_size: int,
        mode: BatchMode,
        steps_per_epoch: int,
        total_steps: int | None = None,
        seed: int = 0,
        lengths: Sequence[np.ndarray] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if mode not in ("homogeneous", "mixed"):
            raise ConfigError(f"batch_mode must be 'homogeneous' or 'mixed', got {mode!r}")
        if steps_per_epoch < 1 or batch_size < 1:
            raise ConfigError("steps_per_epoch and batch_size must be >= 1")
        self.task_names, self.sizes = list(task_names), list(sizes)
        self.strategy, self.batch_size, self.mode = strategy, batch_size, mode
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps or steps_per_epoch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.streams = [
            TaskStream(n, seed * 1_000_003 + i, None if lengths is None else lengths[i])
            for i, n in enumerate(self.sizes)
        ]
        self.epoch = 0
        self.consumed = 0  # steps of `epoch` already trained on
        self._skip = 0
        self._state_epoch = 0  # epoch whose start the streams' saved positions describe
        self._epoch_start = [s.get_state() for s in self.streams]
        # Lightning calls `set_epoch` on `dataloader.batch_sampler.sampler`, never on the batch
        # sampler itself: without this, every epoch replayed epoch 0's plans.
        self.sampler = _EpochSetter(self)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        if epoch != self.epoch:
            self.epoch, self.consumed, self._skip = epoch, 0, 0

    def probabilities(self, global_step: int) -> np.ndarray:
        """Task probabilities at a global step."""
        progress = global_step / max(self.total_steps - 1, 1)
        return self.strategy.probabilities(self.sizes, progress)

    def _draw(self, rng: np.random.Generator, global_step: int) -> dict[str, list[int]]:
        probs = self.probabilities(global_step)
        total = self.batch_size * self.world_size
        if self.mode == "homogeneous":
            t = int(rng.choice(len(probs), p=probs))
            idx = self.streams[t].take(total)
            part = idx[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            return {self.task_names[t]: part}
        plan = {}
        for t, count in enumerate(rng.multinomial(total, probs)):
            if count:
                part = self.streams[t].take(int(count))[self.rank :: self.world_size]
                if part:
                    plan[self.task_names[t]] = part
        return plan

    def _epoch_plans(self, epoch: int) -> Iterator[tuple[int, dict[str, list[int]]]]:
        rng = np.random.default_rng([self.seed, epoch, 17])
        for step in range(self.steps_per_epoch):
            yield step, self._draw(rng, epoch * self.steps_per_epoch + step)

    def _rewind_to(self, epoch: int) -> None:
        """Puts the streams where they stand at the start of ``epoch`` (replaying draws only)."""
        if epoch < self._state_epoch:
            self._state_epoch, self._epoch_start = 0, [(0, 0)] * len(self.streams)
        for s, state in zip(self.streams, self._epoch_start, strict=True):
            s.set_state(state)
        while self._state_epoch < epoch:
            for _ in self._epoch_plans(self._state_epoch):
                pass
            self._state_epoch += 1
            self._epoch_start = [s.get_state() for s in self.streams]

    def __iter__(self) -> Iterator[Plan]:
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        self._rewind_to(epoch)
        for step, indices in self._epoch_plans(epoch):
            if step >= skip:
                yield {"epoch": epoch, "step": step, "indices": indices}

    def mark_consumed(self, epoch: int, step: int) -> None:
        """Records that the trainer used the plan ``(epoch, step)`` (prefetched plans are not)."""
        self.epoch, self.consumed = epoch, step + 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "seed": self.seed,
            "state_epoch": self._state_epoch,
            "epoch_start": [list(s) for s in self._epoch_start],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or len(state["epoch_start"]) != len(self.streams):
            raise ConfigError(
                "the checkpoint's sampler state does not match this data configuration "
                f"(seed {state['seed']} vs {self.seed}, {len(state['epoch_start'])} vs "
                f"{len(self.streams)} tasks)"
            )
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._skip = self.consumed if self.consumed < self.steps_per_epoch else 0
        self._state_epoch = int(state["state_epoch"])
        self._epoch_start = [tuple(s) for s in state["epoch_start"]]


class _EpochSetter:
    """The ``batch_sampler.sampler`` Lightning looks for; forwards ``set_epoch`` to its owner."""

    def __init__(self, owner: MultiTaskBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class EvalBatchSampler:
    """Every example of one task's split once, in length order (cheaper padding)."""

    def __init__(
        self, task: str, lengths: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> None:
        order = np.argsort(-lengths, kind="stable")[rank::world_size]
        self.batches = [
            order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)
        ]
        self.task = task
        # Under DDP every process must run the same number of eval batches: each forward of the
        # DDP-wrapped model broadcasts buffers (a collective), and Lightning refuses a process
        # with an empty loader. A process with fewer batches (a small split, or one whose size
        # does not divide evenly) gets padding batches: one row, marked "padding", which the
        # model runs but leaves out of every metric and prediction.
        self.padding = 0
        if world_size > 1 and len(lengths):
            most = math.ceil(math.ceil(len(lengths) / world_size) / batch_size)
            self.padding = max(most, 1) - len(self.batches)

    def __len__(self) -> int:
        return len(self.batches) + self.padding

    def __iter__(self) -> Iterator[Plan]:
        for batch in self.batches:
            yield {"indices": {self.task: batch}}
        for _ in range(self.padding):
            yield {"indices": {self.task: [0]}, "padding": True}


class MultiTaskDataset:
    """Serves the rows a plan names (``DataLoader`` passes the whole plan to ``__getitems__``)."""

    def __init__(self, datasets: dict[str, Dataset]) -> None:
        self.datasets = datasets

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())

    def __getitems__(self, plan: Plan) -> Plan:
        rows = {t: self.datasets[t][idx] for t, idx in plan["indices"].items()}
        return {**plan, "rows": rows}

    def __getitem__(self, plan: Plan) -> Plan:
        return self.__getitems__(plan)


class MultiTaskCollator:
    """Pads each task's rows to that task's longest sequence; one sub-batch per task."""

    def __init__(self, tasks: Sequence[Task], pad_token_id: int) -> None:
        self.tasks = {t.name: t for t in tasks}
        self.pad_token_id = pad_token_id

    def __call__(self, fetched: Plan) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "tasks": {
                name: self.tasks[name].collate(rows, self.pad_token_id)
                for name, rows in fetched["rows"].items()
            }
        }
        if "step" in fetched:
            batch["epoch"], batch["step"] = fetched["epoch"], fetched["step"]
        if fetched.get("padding"):
            batch["padding"] = True  # see EvalBatchSampler: run, but counted nowhere
        return batch


def count_tokens(batch: dict[str, Any]) -> tuple[int, int]:
    """Real (non-padding) and total token slots of a collated batch."""
    real = total = 0
    for sub in batch["tasks"].values():
        mask: Tensor = sub["attention_mask"]
        real, total = real + int(mask.sum()), total + mask.numel()
    return real, total
