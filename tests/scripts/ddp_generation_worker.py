"""A generation task next to a classification task on 1 or 2 CPU processes (gloo), for
tests/test_generation_ddp.py.

Launched as ``python -m torch.distributed.run --nproc_per_node=2 ddp_generation_worker.py OUT``
(or directly for the single-process reference). Per batch mode: 3 SGD steps on a global batch of
8, then a validation pass; rank 0 writes every parameter's update and the validation metrics.
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
from test_generation import gen_task  # noqa: E402

from mtlkit.testing import build_tiny_tokenizer  # noqa: E402
from mtlkit.testing.trainer import quiet_trainer  # noqa: E402

GLOBAL_BATCH = 8


class NoDropout(L.Callback):
    """Dropout off in every module, the decoder (built at fit start) included."""

    def on_fit_start(self, trainer, pl_module) -> None:
        for m in pl_module.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0


class Snapshot(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.before = copy.deepcopy(pl_module.state_dict())


def run(mode: str, world: int) -> dict:
    L.seed_everything(0)
    tasks = [gen_task(num_beams=2, max_new_tokens=5), toy_task("cls", n=40, seed=3)]
    # Heads built here, from the same random state in both runs (the DDP set-up draws random
    # numbers before Lightning's configure_model, which would otherwise build them).
    tasks[0].bind_tokenizer(build_tiny_tokenizer())
    dm = toy_datamodule(
        tasks,
        batch_mode=mode,
        batch_size=GLOBAL_BATCH // world,
        steps_per_epoch=3,
        eval_batch_size=5,
    )
    model = tiny_model(
        dm.tasks,
        lr_scheduler=None,
        dropout=0.0,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
    )
    common = dict(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        use_distributed_sampler=False,
    )
    trainer = quiet_trainer(
        max_steps=3, limit_val_batches=0, callbacks=[NoDropout(), Snapshot()], **common
    )
    trainer.fit(model, dm)
    after = model.state_dict()
    update = torch.cat([(after[k] - model.before[k]).float().ravel() for k in model.before])
    metrics = quiet_trainer(**common).validate(model, dm, verbose=False)[0]
    return {"update": update, "validation": {k: float(v) for k, v in metrics.items()}}


def main() -> None:
    out = Path(sys.argv[1])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    results = {mode: run(mode, world) for mode in ("homogeneous", "mixed")}
    if rank == 0:
        torch.save(results, out)


if __name__ == "__main__":
    main()
