"""Small builders shared by tests."""

from __future__ import annotations

from mtlkit.data import InMemory, MultiTaskDataModule
from mtlkit.model import HFEncoder
from mtlkit.tasks import SequenceClassification
from mtlkit.testing import TINY_ENCODER, TINY_WORDS
from mtlkit.training import MultiTaskModule

TOKENIZER = "pkg:mtlkit/testing/tiny_tokenizer"
# Words of the tiny vocabulary, so toy texts tokenize into real word ids.
WORDS = [w for w in TINY_WORDS if w not in ("the", "a", "an", "is", "was")]


def toy_texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Texts whose label is decided by their first word (learnable by a tiny model)."""
    import random

    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        first = "good" if label else "bad"
        tail = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        texts.append(f"{first} {tail} {i}")
        labels.append(label)
    return texts, labels


def toy_task(name: str, n: int = 40, seed: int = 0, **kw) -> SequenceClassification:
    texts, labels = toy_texts(n, seed)
    source = InMemory({"train": {"text": texts, "label": labels}})
    return SequenceClassification(name=name, source=source, num_labels=2, **kw)


def toy_datamodule(tasks, **kw) -> MultiTaskDataModule:
    args = dict(tokenizer=TOKENIZER, batch_size=4, cache_dir=None, steps_per_epoch=5)
    args.update(kw)
    return MultiTaskDataModule(tasks, **args)


def tiny_model(tasks, **kw) -> MultiTaskModule:
    return MultiTaskModule(HFEncoder(config=dict(TINY_ENCODER)), tasks, **kw)


def quiet_trainer(tmp_path, **kw):
    """:func:`mtlkit.testing.trainer.quiet_trainer` in ``tmp_path`` (override any argument)."""
    from mtlkit.testing.trainer import quiet_trainer

    return quiet_trainer(default_root_dir=tmp_path, **kw)


def short_cpu_trainer(tmp_path, max_steps: int, **kw):
    """A quiet CPU trainer for a few steps without validation (override any argument)."""
    args = dict(
        accelerator="cpu",
        max_steps=max_steps,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    return quiet_trainer(str(tmp_path), **{**args, **kw})
