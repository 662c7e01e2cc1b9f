"""Feature-based transfer: heads trained on a frozen encoder's outputs, computed once and cached.

The frozen encoder runs once over every split of every task; training and evaluation then read
the stored vectors, so many epochs of head training cost seconds instead of encoder passes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset
from datasets.fingerprint import Hasher
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mtlkit._compat import dataset_fingerprint
from mtlkit.data.batching import MultiTaskCollator, Plan
from mtlkit.data.datamodule import MultiTaskDataModule
from mtlkit.errors import ConfigError
from mtlkit.model.encoder import HFEncoder
from mtlkit.model.multitask import MultiTaskModel
from mtlkit.model.pooling import Pooling, check_pooling
from mtlkit.tasks.base import Task

if TYPE_CHECKING:
    from mtlkit.training.module import MultiTaskModule


class FeatureDataModule(MultiTaskDataModule):
    """A :class:`MultiTaskDataModule` whose sub-batches also carry a frozen encoder's outputs.

    After tokenization, ``encoder`` runs once (eval mode, no gradients) over every split of every
    task: sequence-level tasks get one pooled vector per example, token-level tasks one state per
    token (as many as ``input_ids``, so token labels stay aligned). Each sub-batch then holds
    ``features`` (``[batch, hidden]`` or ``[batch, width, hidden]``, zero-padded, next to the
    usual ``attention_mask``), and :class:`~mtlkit.training.MultiTaskModule` skips its encoder for
    it. Features are cached under ``cache_dir``, keyed by the encoder (config and a hash of its
    weights), the tokenized data's cache key, ``pooling`` and ``max_length``: a second set-up
    with the same inputs reads them back without running the encoder.

    The model needs an encoder too, for the hidden size and so that its checkpoints are a
    complete text model: give it the same encoder as here (a YAML anchor, ``&encoder`` /
    ``*encoder``, writes it once) and the same ``pooling``. When training starts, the model reads
    them from here: its encoder takes this encoder's weights and is frozen
    (:meth:`~mtlkit.model.multitask.MultiTaskModel.load_frozen_encoder`).

    Args:
        encoder: The frozen feature extractor.
        pooling: Sentence vector of sequence-level tasks, as in the model: ``mean``, ``cls``
            or ``last``.
        feature_batch_size: Examples per encoder pass while computing the features.
        feature_device: Device of that pass; default: the trainer's device (CPU without one).
        **kwargs: The arguments of :class:`MultiTaskDataModule` (tasks, tokenizer, ...).
    """

    def __init__(
        self,
        encoder: HFEncoder,
        pooling: Pooling = "mean",
        feature_batch_size: int = 64,
        feature_device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_pooling(pooling)
        if encoder.per_task:
            raise ConfigError("feature extraction needs one encoder for all tasks (per_task off)")
        if feature_batch_size < 1:
            raise ConfigError(f"feature_batch_size must be >= 1, got {feature_batch_size}")
        turn_level = [t.name for t in self.tasks if t.level == "dialogue"]
        if turn_level:
            raise ConfigError(
                f"task(s) {turn_level}: feature-based training caches one vector per example or "
                "token, and a hierarchical dialogue task pools each turn; use encoding: flat"
            )
        self.encoder = encoder.requires_grad_(False)
        self.pooling, self.feature_batch_size = pooling, feature_batch_size
        self.feature_device = feature_device
        self._data_keys: dict[tuple[str, str], str] = {}
        self._encoder_key: str | None = None

    def frozen_encoder(self) -> tuple[HFEncoder, Pooling]:
        """The encoder and pooling whose outputs the heads learn on (the model loads them)."""
        return self.encoder, self.pooling

    # -------------------------------------------------------------- set-up
    def _tokenize(self, task: Task, split: str, ds: Dataset) -> Dataset:
        # The tokenization cache key, also the data part of the feature cache key.
        self._data_keys[(task.name, split)] = Hasher.hash(
            [dataset_fingerprint(ds), task.fingerprint(), self._tokenizer_key]
        )
        return super()._tokenize(task, split, ds)

    def _prepare_task(self, task: Task) -> dict[str, Any]:
        if task.level not in ("sequence", "token"):
            raise ConfigError(
                f"task {task.name!r}: cached features serve classification and regression "
                f"heads; a {type(task).__name__} task decodes from the encoder at every step, "
                "so train it with mtlkit.data.MultiTaskDataModule"
            )
        splits = super()._prepare_task(task)
        if self._encoder_key is None:
            self._encoder_key = encoder_fingerprint(self.encoder)
        return {split: self._with_features(task, split, ds) for split, ds in splits.items()}

    def _with_features(self, task: Task, split: str, ds: Dataset) -> FeatureSplit:
        key = Hasher.hash(
            [
                self._data_keys[(task.name, split)],
                self._encoder_key,
                task.level,
                self.pooling if task.level == "sequence" else None,
                task.max_length,
            ]
        )
        path = None
        if self.cache_dir is not None:
            path = Path(self.cache_dir) / task.name / f"{split}-features-{key}.safetensors"
            if path.exists():
                stored = load_file(path)
                return FeatureSplit(ds, stored["features"], stored.get("offsets"))
        features, offsets = self._extract(task, ds)
        if path is not None:
            tensors = {"features": features}
            if offsets is not None:
                tensors["offsets"] = offsets
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            save_file(tensors, str(partial))
            os.replace(partial, path)  # atomic: a crash or a second process leaves no half file
        return FeatureSplit(ds, features, offsets)

    def _device(self) -> torch.device:
        if self.feature_device is not None:
            return torch.device(self.feature_device)
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    @torch.no_grad()
    def _extract(self, task: Task, ds: Dataset) -> tuple[Tensor, Tensor | None]:
        """Runs the encoder over ``ds`` in length order (little padding); rows in ``ds`` order."""
        assert self.tokenizer is not None
        pad_id = int(self.tokenizer.pad_token_id or 0)
        device, was_training = self._device(), self.encoder.training
        # The model's own head inputs (encoder, then pooling for sequence tasks), without heads.
        model = MultiTaskModel(self.encoder, self.pooling, levels={task.name: task.level})
        model.to(device).eval()
        lengths = np.asarray(ds["length"], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        rows: list[Tensor | None] = [None] * len(ds)
        for start in range(0, len(ds), self.feature_batch_size):
            idx = order[start : start + self.feature_batch_size].tolist()
            batch = task.collate(ds[idx], pad_id)
            keys = ("input_ids", "attention_mask", "token_type_ids")
            inputs = {k: batch[k].to(device) for k in keys if k in batch}
            features = model.head_inputs({task.name: inputs})[task.name].float().cpu()
            if task.level == "token":
                out = [h[: lengths[i]] for i, h in zip(idx, features, strict=True)]
            else:
                out = list(features)
            for i, vector in zip(idx, out, strict=True):
                rows[i] = vector
        self.encoder.to("cpu").train(was_training)
        if not rows:  # an empty split (a test split nobody filled)
            empty = torch.zeros(0, self.encoder.hidden_size)
            return empty, torch.zeros(1, dtype=torch.long) if task.level == "token" else None
        if task.level != "token":
            return torch.stack(rows).contiguous(), None  # type: ignore[arg-type]
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
        return torch.cat(rows).contiguous(), offsets  # type: ignore[arg-type]

    def _collator(self) -> MultiTaskCollator:
        assert self.tokenizer is not None
        return FeatureCollator(self.tasks, int(self.tokenizer.pad_token_id or 0))

    # -------------------------------------------------------------- model
    def bind_model(self, model: MultiTaskModule) -> None:
        """Gives ``model`` this frozen encoder's weights (what the model's ``setup`` does itself
        with a feature data module: :meth:`MultiTaskModel.load_frozen_encoder`)."""
        model.model.load_frozen_encoder(self.encoder, self.pooling)


class FeatureSplit:
    """A tokenized split and its features: rows read by indices carry ``features`` as well.

    Args:
        dataset: The tokenized split.
        features: ``[rows, hidden]`` vectors, or ``[tokens, hidden]`` token states of all rows
            one after the other (token-level tasks).
        offsets: For token states, row ``i`` is ``features[offsets[i]:offsets[i + 1]]``.
    """

    def __init__(self, dataset: Dataset, features: Tensor, offsets: Tensor | None = None) -> None:
        rows = len(offsets) - 1 if offsets is not None else len(features)
        if rows != len(dataset):
            raise ConfigError(f"{rows} feature rows for a split of {len(dataset)} examples")
        self.dataset, self.features, self.offsets = dataset, features, offsets
        self._bounds = offsets.numpy() if offsets is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def column_names(self) -> list[str]:
        return self.dataset.column_names

    def __getitem__(self, key: str | list[int]) -> Any:
        if isinstance(key, str):  # a whole column, e.g. "length" for the samplers
            return self.dataset[key]
        rows = self.dataset[key]
        if self._bounds is None:
            rows["features"] = self.features[torch.as_tensor(key, dtype=torch.long)]
        else:
            starts, ends = self._bounds[key], self._bounds[np.asarray(key) + 1]
            rows["features"] = [self.features[a:b] for a, b in zip(starts, ends, strict=True)]
        return rows


class FeatureCollator(MultiTaskCollator):
    """:class:`MultiTaskCollator` that also passes each sub-batch's ``features`` on (zero-padded
    to the sub-batch width for token-level tasks)."""

    def __call__(self, fetched: Plan) -> dict[str, Any]:
        batch = super().__call__(fetched)
        for name, rows in fetched["rows"].items():
            features = rows["features"]
            if isinstance(features, list):
                width = batch["tasks"][name]["input_ids"].shape[1]
                padded = features[0].new_zeros(len(features), width, features[0].shape[-1])
                for i, states in enumerate(features):
                    padded[i, : len(states)] = states
                features = padded
            batch["tasks"][name]["features"] = features
        return batch


def encoder_fingerprint(encoder: nn.Module) -> str:
    """A key of an encoder's config and weights (xxh3 over the raw tensor bytes: ~5 ms for
    22M parameters, against ~170 ms for blake2b)."""
    try:
        import xxhash  # a dependency of datasets

        digest: Any = xxhash.xxh3_128()
    except ImportError:  # pragma: no cover
        digest = hashlib.blake2b(digest_size=16)
    config = getattr(getattr(encoder, "model", None), "config", None)
    digest.update(type(encoder).__name__.encode())
    digest.update(config.to_json_string(use_diff=False).encode() if config is not None else b"")
    for name, tensor in encoder.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()
