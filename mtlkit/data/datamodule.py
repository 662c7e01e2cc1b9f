"""The multi-task data module: loads and tokenizes every task, mixes them for training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from datasets import Dataset
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mtlkit._compat import dataset_fingerprint
from mtlkit.data.batching import (
    BatchMode,
    EvalBatchSampler,
    MultiTaskBatchSampler,
    MultiTaskCollator,
    MultiTaskDataset,
)
from mtlkit.data.checks import check_counts, check_max_length, warn_repeated_rows
from mtlkit.data.sampling import Proportional, SamplingStrategy
from mtlkit.errors import ConfigError, DataError
from mtlkit.paths import resolve_path
from mtlkit.tasks.base import Task

# target_text: generation tasks score generated text against the raw target text; prompt_ids:
# decoder-only generation continues the prompt.
_KEEP = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "labels",
    "length",
    "target_text",
    "prompt_ids",
)


class MultiTaskDataModule(L.LightningDataModule):
    """Mixes several tasks' datasets into one stream of training steps.

    Args:
        tasks: The tasks (written once here and linked into the model by the CLI).
        tokenizer: Tokenizer folder, ``pkg:<package>/<folder>`` or hub name.
        sampling: How often each task is drawn (proportional, uniform, temperature, annealed).
        batch_mode: ``homogeneous`` (one task per step) or ``mixed`` (several tasks per step,
            one sub-batch each; needed by methods that use every task's loss each step).
        batch_size: Training examples per step (per process).
        eval_batch_size: Examples per validation/test batch (default: ``2 * batch_size``).
        steps_per_epoch: Training steps per epoch; default: total train examples / global batch.
        group_by_length: Draw examples of similar length together to cut padding.
        max_train_examples: Deterministic cap on each task's train split (quick runs).
        max_eval_examples: Deterministic cap on each task's validation and test splits.
        num_workers: DataLoader worker processes.
        seed: Seed of the task and example order.
        cache_dir: Where tokenized splits are cached (``None`` disables the cache).
    """

    def __init__(
        self,
        tasks: list[Task],
        tokenizer: str,
        sampling: SamplingStrategy | None = None,
        batch_mode: BatchMode = "homogeneous",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        steps_per_epoch: int | None = None,
        group_by_length: bool = False,
        max_train_examples: int | None = None,
        max_eval_examples: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = ".mtlkit_cache",
    ) -> None:
        super().__init__()
        if not tasks:
            raise ConfigError("MultiTaskDataModule needs at least one task")
        names = [t.name for t in tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"duplicate task names {dupes}: every task needs its own name")
        if batch_mode not in ("homogeneous", "mixed"):
            raise ConfigError(f"batch_mode must be 'homogeneous' or 'mixed', got {batch_mode!r}")
        check_counts(
            batch_size=(batch_size, 1),
            eval_batch_size=(eval_batch_size, 1),
            steps_per_epoch=(steps_per_epoch, 1),
            max_train_examples=(max_train_examples, 0),
            max_eval_examples=(max_eval_examples, 0),
            num_workers=(num_workers, 0),
        )
        sampling = sampling if sampling is not None else Proportional()
        if not isinstance(sampling, SamplingStrategy):
            raise ConfigError(f"sampling must be a SamplingStrategy, got {type(sampling).__name__}")
        self.tasks = list(tasks)
        self.tokenizer_path = tokenizer
        self.sampling, self.batch_mode = sampling, batch_mode
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.steps_per_epoch = steps_per_epoch
        self.group_by_length = group_by_length
        self.max_train_examples, self.max_eval_examples = max_train_examples, max_eval_examples
        self.num_workers, self.seed = num_workers, seed
        self.cache_dir = cache_dir
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.splits: dict[str, dict[str, Dataset]] = {}
        self.train_sampler: MultiTaskBatchSampler | None = None
        self._pending_state: dict[str, Any] | None = None
        self._tokenizer_key = ""

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def frozen_encoder(self) -> tuple[Any, str] | None:
        """``(encoder, pooling)`` when the batches carry features of a frozen encoder instead of
        tokens (feature-based transfer, ``mtlkit.transfer.FeatureDataModule``); ``None`` here.
        The model then loads that encoder, so that export and inference see it."""
        return None

    # -------------------------------------------------------------- set-up
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(resolve_path(self.tokenizer_path))
            self.tokenizer = with_pad_token(tokenizer, self.tokenizer_path)
            # Keyed before any call: calling a fast tokenizer changes its truncation state.
            self._tokenizer_key = _tokenizer_key(self.tokenizer)
        for task in self.tasks:  # generation tasks decode with it
            task.bind_tokenizer(self.tokenizer)
        self._check_max_lengths()
        if not self.splits:
            self.splits = {t.name: self._prepare_task(t) for t in self.tasks}
        if stage in (None, "fit") and self.train_sampler is None:
            self.train_sampler = self._build_train_sampler()
            if self._pending_state is not None:
                self.train_sampler.load_state_dict(self._pending_state)

    def _check_max_lengths(self) -> None:
        """Every task's ``max_length`` leaves room for text."""
        assert self.tokenizer is not None
        for task in self.tasks:
            check_max_length(task, self.tokenizer)

    def _prepare_task(self, task: Task) -> dict[str, Dataset]:
        raw = task.load()
        out = {}
        for split, ds in raw.items():
            out[split] = self._tokenize(task, split, self._capped(split, ds))
        if len(out["train"]) == 0:
            raise DataError(f"task {task.name!r}: no training examples left after filtering")
        return out

    def _capped(self, split: str, ds: Dataset) -> Dataset:
        """``max_train_examples`` / ``max_eval_examples``: a deterministic subset (in order)."""
        cap = self.max_train_examples if split == "train" else self.max_eval_examples
        if cap is not None and len(ds) > cap:
            ds = ds.select(np.sort(np.random.default_rng(self.seed).permutation(len(ds))[:cap]))
        return ds

    def raw_split(self, name: str, split: str) -> Dataset:
        """Task ``name``'s ``split`` as this data module trains or evaluates on it (the same
        examples, before tokenization): e.g. for baselines scored on the same test examples."""
        task = next((t for t in self.tasks if t.name == name), None)
        if task is None:
            raise ConfigError(f"no task {name!r}; tasks: {[t.name for t in self.tasks]}")
        return self._capped(split, task.load()[split])

    def _tokenize(self, task: Task, split: str, ds: Dataset) -> Dataset:
        tokenizer = self.tokenizer
        assert tokenizer is not None

        def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            enc = task.tokenize(batch, tokenizer)
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        kwargs: dict[str, Any] = {}
        if self.cache_dir is not None:
            key = Hasher.hash([dataset_fingerprint(ds), task.fingerprint(), self._tokenizer_key])
            folder = Path(self.cache_dir) / task.name
            folder.mkdir(parents=True, exist_ok=True)
            kwargs["cache_file_name"] = str(folder / f"{split}-{key}.arrow")
        tokenized = ds.map(
            encode,
            batched=True,
            remove_columns=ds.column_names,
            desc=f"{task.name}/{split}",
            **kwargs,
        )
        return tokenized.with_format(
            None, columns=[c for c in _KEEP if c in tokenized.column_names]
        )

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _build_train_sampler(self) -> MultiTaskBatchSampler:
        rank, world = self._world()
        sizes = [len(self.splits[n]["train"]) for n in self.task_names]
        steps = self.steps_per_epoch or max(1, math.ceil(sum(sizes) / (self.batch_size * world)))
        warn_repeated_rows(
            self.task_names, sizes, self.sampling, self.batch_mode, self.batch_size, world
        )
        lengths = None
        if self.group_by_length:
            lengths = [np.asarray(self.splits[n]["train"]["length"]) for n in self.task_names]
        return MultiTaskBatchSampler(
            self.task_names,
            sizes,
            self.sampling,
            self.batch_size,
            self.batch_mode,
            steps,
            total_steps=self._total_steps(steps),
            seed=self.seed,
            lengths=lengths,
            rank=rank,
            world_size=world,
        )

    def _total_steps(self, steps_per_epoch: int) -> int:
        trainer = self.trainer
        if trainer is None:
            return steps_per_epoch
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        return steps_per_epoch * max(trainer.max_epochs or 1, 1)

    # --------------------------------------------------------- dataloaders
    def _collator(self) -> MultiTaskCollator:
        assert self.tokenizer is not None
        return MultiTaskCollator(self.tasks, int(self.tokenizer.pad_token_id or 0))

    def _loader(self, datasets: dict[str, Dataset], batch_sampler: Any) -> DataLoader:
        return DataLoader(
            MultiTaskDataset(datasets),  # type: ignore[arg-type]
            batch_sampler=batch_sampler,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_sampler is None:
            self.setup("fit")
        datasets = {n: self.splits[n]["train"] for n in self.task_names}
        return self._loader(datasets, self.train_sampler)

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        rank, world = self._world()
        loaders = []
        for name in self.task_names:
            ds = self.splits[name].get(split)
            if ds is None or len(ds) == 0:
                raise DataError(f"task {name!r} has no {split!r} split to evaluate on")
            lengths = np.asarray(ds["length"])
            sampler = EvalBatchSampler(name, lengths, self.eval_batch_size, rank, world)
            loaders.append(self._loader({name: ds}, sampler))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("validation")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    # ---------------------------------------------------- resumable state
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.train_sampler is not None and batch.get("step") is not None:
            self.train_sampler.mark_consumed(batch["epoch"], batch["step"])
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.train_sampler.state_dict()} if self.train_sampler else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "sampler" not in state_dict:
            return
        if self.train_sampler is None:
            self._pending_state = state_dict["sampler"]
        else:
            self.train_sampler.load_state_dict(state_dict["sampler"])


def with_pad_token(tokenizer: PreTrainedTokenizerBase, name: str) -> PreTrainedTokenizerBase:
    """``tokenizer``, padding with its end-of-sequence token when it has no pad token (GPT-2,
    Llama: decoder-only models are trained without padding). The attention mask hides the
    padding, and pooling ``last`` reads the last real token, so the choice of id is free.

    Raises:
        ConfigError: The tokenizer has neither a pad nor an eos token.
    """
    if tokenizer.pad_token is not None:
        return tokenizer
    if tokenizer.eos_token is None:
        raise ConfigError(
            f"tokenizer {name!r} has no pad token and no eos token to pad with; "
            "add a pad token to the tokenizer"
        )
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tokenizer_key(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return Hasher.hash([type(tokenizer).__name__, body])
