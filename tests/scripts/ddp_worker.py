"""One training run per weighting method, on 1 or 2 CPU processes (gloo), for tests/test_ddp.py.

Launched as ``python -m torch.distributed.run --nproc_per_node=2 tests/scripts/ddp_worker.py OUT``
(or directly for the single-process reference). Writes each method's encoder update to OUT.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import tiny_model, toy_datamodule, toy_task  # noqa: E402

from mtlkit.weighting import (  # noqa: E402
    FAMO,
    DynamicWeightAverage,
    EqualWeighting,
    GradientWeighting,
    GradNorm,
    RandomLossWeighting,
    UncertaintyWeighting,
)
from mtlkit.weighting.gradient import MGDAUB, PCGrad  # noqa: E402

GLOBAL_BATCH = 16
METHODS = {
    "equal": (EqualWeighting, "homogeneous"),
    "equal_mixed": (EqualWeighting, "mixed"),
    "uncertainty": (UncertaintyWeighting, "mixed"),
    "dwa": (lambda: DynamicWeightAverage(window_steps=1), "mixed"),
    "rlw": (lambda: RandomLossWeighting(seed=0), "mixed"),
    "famo": (FAMO, "mixed"),
    "gradnorm": (GradNorm, "mixed"),
    "pcgrad": (lambda: GradientWeighting(PCGrad()), "mixed"),
    "mgda_ub": (lambda: GradientWeighting(MGDAUB()), "mixed"),
}


def run(name: str, world: int) -> torch.Tensor:
    make, mode = METHODS[name]
    L.seed_everything(0)
    tasks = [toy_task("a", n=60), toy_task("b", n=60, seed=1), toy_task("c", n=30, seed=2)]
    dm = toy_datamodule(tasks, batch_mode=mode, batch_size=GLOBAL_BATCH // world, steps_per_epoch=3)
    model = tiny_model(
        dm.tasks,
        weighting=make(),
        lr_scheduler=None,
        dropout=0.0,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
    )
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    before = copy.deepcopy(model.encoder.state_dict())
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model, dm)
    after = model.encoder.state_dict()
    return torch.cat([(after[k] - before[k]).ravel() for k in before])


def main() -> None:
    out = Path(sys.argv[1])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(METHODS)
    results = {name: run(name, world) for name in names}
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main()
