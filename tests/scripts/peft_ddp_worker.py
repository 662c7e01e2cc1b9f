"""Per-task parameter-efficient methods on 1 or 2 CPU processes (gloo), for
tests/test_peft_methods.py.

``python tests/scripts/peft_ddp_worker.py OUT SOURCES [NAMES]`` (directly, or under
``torch.distributed.run --nproc_per_node=2``): every method of the test table (``CASES``) trains
3 SGD steps on a global batch of 16 in mixed batches (a task may be absent from one process);
rank 0 writes each method's update of every trainable parameter to OUT. SOURCES holds the fusion
row's saved source adapters.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import toy_datamodule, toy_task  # noqa: E402
from test_peft_methods import CASES, SOURCES, TASKS, _module  # noqa: E402

from mtlkit.testing.trainer import quiet_trainer  # noqa: E402
from mtlkit.weighting import EqualWeighting  # noqa: E402

GLOBAL_BATCH = 16


def run(name: str, world: int) -> torch.Tensor:
    L.seed_everything(0)
    tasks = [toy_task(TASKS[0], n=60), toy_task(TASKS[1], n=30, seed=1)]
    dm = toy_datamodule(
        tasks, batch_mode="mixed", batch_size=GLOBAL_BATCH // world, steps_per_epoch=3
    )
    model = _module(
        name,
        tasks=dm.tasks,
        dropout=0.0,
        weighting=EqualWeighting(),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
    )
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        use_distributed_sampler=False,
        max_steps=3,
        limit_val_batches=0,
    )
    trainer.fit(model, dm)
    after = dict(model.named_parameters())
    return torch.cat([(after[n].detach() - v).ravel() for n, v in sorted(trainable.items())])


def main() -> None:
    out, SOURCES["path"] = Path(sys.argv[1]), Path(sys.argv[2])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(CASES)
    results = {name: run(name, world) for name in names}
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main()
