"""``mtlkit`` command line: LightningCLI with the task list written once, in the data config."""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

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
