"""Training runs on 1 or 2 CPU processes (gloo), for tests/test_ddp.py.

Launched as ``python -m torch.distributed.run --nproc_per_node=2 tests/scripts/ddp_worker.py OUT``
(or directly for the single-process reference). Writes the encoder update of every run of
``RUNS`` (every weighting method of ``configs/weighting/``) to OUT; with ``trajectory`` as
second argument, the losses, examples and validation metrics of every batch mode x sampler x
optimizer to ``OUT.rank<k>.pt``.
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

from mtlkit.optim import adamw  # noqa: E402
from mtlkit.registry import sampling_classes  # noqa: E402
from mtlkit.testing.methods import weighting_methods  # noqa: E402
from mtlkit.testing.trainer import quiet_trainer  # noqa: E402

GLOBAL_BATCH = 16
METHODS = weighting_methods()
#: Toy tasks named as the quickstart's, which the shipped static and uncertainty configs name.
TASKS = ("trec", "sentiment", "bbc_topic")
#: ``init_args`` overrides, by method name: DWA's window of 1 step leaves its two warm-up windows
#: in the 3 steps (its weights differ from 1 in the last); GradNorm's weights move by about
#: ``lr`` per step, 10x the shipped 0.025 makes them matter within 3 steps.
OVERRIDES = {
    "dwa": {"window_steps": 1},
    "rlw": {"seed": 0},
    "gradnorm": {"lr": 0.25},
}
#: Run name -> (method, batch mode): every method of the catalog in its config's batch mode, and
#: those that allow homogeneous batches in mixed batches too (tasks absent from one process).
RUNS = {name: (name, m.batch_mode) for name, m in METHODS.items()} | {
    f"{name}/mixed": (name, "mixed") for name, m in METHODS.items() if m.batch_mode != "mixed"
}


def _no_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _trainer(world: int, **kwargs) -> L.Trainer:
    """A quiet CPU trainer on ``world`` gloo processes (mtlkit shards the data itself)."""
    return quiet_trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        use_distributed_sampler=False,
        **kwargs,
    )


def run(name: str, world: int) -> torch.Tensor:
    method, mode = RUNS[name]
    L.seed_everything(0)
    sizes = (60, 60, 30)
    tasks = [toy_task(t, n=n, seed=i) for i, (t, n) in enumerate(zip(TASKS, sizes, strict=True))]
    dm = toy_datamodule(tasks, batch_mode=mode, batch_size=GLOBAL_BATCH // world, steps_per_epoch=3)
    model = tiny_model(
        dm.tasks,
        weighting=METHODS[method].build(**OVERRIDES.get(method, {})),
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


#: Every sampling strategy of the package (``mtlkit.registry``), built with its defaults.
SAMPLINGS = {name.lower(): cls for name, cls in sampling_classes().items()}
TRAJECTORY_STEPS = 8
#: AdamW (the default) and SGD: Adam's normalised steps cannot see gradients of the wrong scale
#: (all 2x too large gives the same steps), SGD's can.
OPTIMIZERS = {"adamw": adamw, "sgd": lambda p: torch.optim.SGD(p, lr=0.1)}


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


def trajectory(mode: str, sampling: str, optimizer: str, world: int) -> dict:
    """A few steps (two epochs) of ``optimizer``, then a full validation pass."""
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
    model = tiny_model(dm.tasks, dropout=0.0, lr_scheduler=None, optimizer=OPTIMIZERS[optimizer])
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
            f"{mode}/{sampling}/{optimizer}": trajectory(mode, sampling, optimizer, world)
            for mode in ("homogeneous", "mixed")
            for sampling in SAMPLINGS
            for optimizer in OPTIMIZERS
        }
        torch.save(results, out.with_suffix(f".rank{rank}.pt"))  # each rank: its own examples
        return
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(RUNS)
    results = {name: run(name, world) for name in names}
    if rank == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main()
