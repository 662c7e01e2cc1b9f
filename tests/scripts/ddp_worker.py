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

from mtlkit.data.sampling import Annealed, Proportional, Temperature, Uniform  # noqa: E402
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


def _no_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _trainer(world: int, **kwargs) -> L.Trainer:
    """A quiet CPU trainer on ``world`` gloo processes (mtlkit shards the data itself)."""
    return L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        **kwargs,
    )


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
    _no_dropout(model)
    before = copy.deepcopy(model.encoder.state_dict())
    trainer = _trainer(world, max_steps=3, limit_val_batches=0)
    trainer.fit(model, dm)
    after = model.encoder.state_dict()
    return torch.cat([(after[k] - before[k]).ravel() for k in before])


SAMPLINGS = {
    "proportional": Proportional,
    "uniform": Uniform,
    "temperature": lambda: Temperature(temperature=2.0),
    "annealed": Annealed,
}
TRAJECTORY_STEPS = 8


class Recorder(L.Callback):
    """Per step: the global training loss, and the examples (token rows) each task sub-batch
    holds on this rank; after validation, the logged validation values."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.examples: list[dict[str, list[tuple[int, ...]]]] = []
        self.validation: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        rows = {}
        for task, sub in batch["tasks"].items():
            mask = sub["attention_mask"].bool()
            rows[task] = [tuple(r[m].tolist()) for r, m in zip(sub["input_ids"], mask, strict=True)]
        self.examples.append(rows)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validation = {k: float(v) for k, v in trainer.callback_metrics.items() if "val" in k}


def trajectory(mode: str, sampling: str, world: int) -> dict:
    """Adam for a few steps (two epochs), then a full validation pass."""
    L.seed_everything(0)
    tasks = [toy_task("a", n=70), toy_task("b", n=50, seed=1), toy_task("c", n=25, seed=2)]
    dm = toy_datamodule(
        tasks,
        batch_mode=mode,
        batch_size=GLOBAL_BATCH // world,
        steps_per_epoch=TRAJECTORY_STEPS // 2,
        sampling=SAMPLINGS[sampling](),
        eval_batch_size=5,
    )
    model = tiny_model(dm.tasks, dropout=0.0, lr_scheduler=None)
    _no_dropout(model)
    recorder = Recorder()
    trainer = _trainer(
        world,
        max_steps=TRAJECTORY_STEPS,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=2,
        callbacks=[recorder],
    )
    trainer.fit(model, dm)
    return {
        "losses": recorder.losses,
        "examples": recorder.examples,
        "validation": recorder.validation,
    }


def main() -> None:
    out = Path(sys.argv[1])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if len(sys.argv) > 2 and sys.argv[2] == "trajectory":
        results = {
            f"{mode}/{sampling}": trajectory(mode, sampling, world)
            for mode in ("homogeneous", "mixed")
            for sampling in SAMPLINGS
        }
        torch.save(results, out.with_suffix(f".rank{rank}.pt"))  # each rank: its own examples
        return
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(METHODS)
    results = {name: run(name, world) for name in names}
    if rank == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main()
