"""``mtlkit`` command line: LightningCLI with the task list written once, in the data config."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mtlkit.checkpointing import AtomicCheckpointIO, RNGState
from mtlkit.data.datamodule import MultiTaskDataModule
from mtlkit.model.module import MultiTaskModule


def _tasks_of(datamodule: MultiTaskDataModule) -> list:
    return datamodule.tasks


class MtlkitCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` over YAML in ``class_path``/``init_args`` form."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model receives the very task objects of the data module, so labels resolved while
        # the data is set up (num_labels from a ClassLabel, ...) reach the heads.
        parser.link_arguments(
            "data", "model.init_args.tasks", compute_fn=_tasks_of, apply_on="instantiate"
        )

    def _parse_ckpt_path(self) -> None:
        """Keeps the config as given when ``--ckpt_path`` is passed.

        Lightning 2.6 re-parses the checkpoint's saved hyper-parameters over the config, as
        ``class_path`` + ``dict_kwargs``, which resets every other init argument of the model to
        its default. The encoder, tasks and weighting method are not hyper-parameters here, so
        ``mtlkit fit ... --ckpt_path last.ckpt`` failed ("encoder" required). In mtlkit the config
        is complete and is the single source of truth; the checkpoint restores the state.
        """
        return

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, plus what an exact, crash-safe resume needs.

        Added after the config is applied, so a config's own ``callbacks`` list cannot drop
        them: an :class:`~mtlkit.checkpointing.RNGState` callback (unless the config has one)
        and, where the strategy would use Lightning's plain ``TorchCheckpointIO``, an
        :class:`~mtlkit.checkpointing.AtomicCheckpointIO` (a ``CheckpointIO`` plugin set in
        ``trainer.plugins`` is kept as it is).
        """
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, RNGState) for c in trainer.callbacks):
            trainer.callbacks.insert(0, RNGState())  # before ModelCheckpoint
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def cli_main(args: list[str] | None = None, run: bool = True) -> MtlkitCLI:
    """Builds (and by default runs) the CLI; ``run=False`` only instantiates the objects."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return MtlkitCLI(
        MultiTaskModule,
        MultiTaskDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
        auto_configure_optimizers=False,
    )


def main() -> None:
    """Console entry point."""
    cli_main()


if __name__ == "__main__":
    main()
