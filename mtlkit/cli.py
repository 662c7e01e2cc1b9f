"""``mtlkit`` command line: LightningCLI with the task list written once, in the data config."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mtlkit import console
from mtlkit.callbacks import DataSummary, TaskProgressBar, ValidationTable
from mtlkit.checkpointing import AtomicCheckpointIO, RNGState
from mtlkit.data.datamodule import MultiTaskDataModule
from mtlkit.errors import ConfigError, MtlkitError
from mtlkit.inputs import read_inputs
from mtlkit.run_folder import RunFolderLock, resolve_last
from mtlkit.training.module import MultiTaskModule

#: Set by the console entry point :func:`main`: parse errors are raised (and printed by it as
#: one line) instead of jsonargparse's usage dump and exit.
_RAISE_PARSE_ERRORS: ContextVar[bool] = ContextVar("mtlkit_raise_parse_errors", default=False)


class SaveConfig(SaveConfigCallback):
    """Lightning's ``config.yaml`` writer, also for a logger without a local folder.

    MLflow on a database or server store has no ``save_dir`` (Lightning's callback then fails
    on ``assert log_dir is not None``): the config goes to the trainer's ``default_root_dir``,
    where such a run keeps its checkpoints, and into the MLflow run as an artifact.
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if not self.save_to_log_dir or trainer.log_dir is not None:
            return super().setup(trainer, pl_module, stage)
        folder = Path(trainer.default_root_dir)
        if trainer.is_global_zero and not self.already_saved:
            folder.mkdir(parents=True, exist_ok=True)
            path = str(folder / self.config_filename)
            self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite)
        self.save_to_log_dir = False  # written above; the rest (save_config, sync) as usual
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            self.save_to_log_dir = True

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        logger = trainer.logger
        run_id = getattr(logger, "run_id", None)
        path = Path(trainer.default_root_dir) / self.config_filename
        if run_id is not None and hasattr(logger.experiment, "log_artifact") and path.is_file():
            logger.experiment.log_artifact(run_id, str(path))


class MtlkitCLI(LightningCLI):
    """``fit``/``validate``/``test``/``predict`` over YAML in ``class_path``/``init_args`` form."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("exit_on_error", not _RAISE_PARSE_ERRORS.get())
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The model receives the very task objects of the data module, so labels resolved while
        # the data is set up (num_labels from a ClassLabel, ...) reach the heads.
        parser.link_arguments(
            "data", "model.init_args.tasks", compute_fn=self._tasks_of, apply_on="instantiate"
        )

    def _tasks_of(self, datamodule: MultiTaskDataModule) -> list:
        """The data module's tasks, for the model; in a run, the data is read and checked first.

        The link is computed after the data module and before the model is built, so a data
        error stops a run before the (pretrained) encoder is loaded. Only the plain data module:
        a subclass may need the trainer to set up (``FeatureDataModule`` runs the encoder on
        the trainer's device), so it is set up by the trainer as usual.
        """
        if getattr(self, "subcommand", None) and type(datamodule) is MultiTaskDataModule:
            datamodule.setup("validate")  # tokenizer and every task's splits; no sampler yet
        return datamodule.tasks

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # jsonargparse wraps an error of a link's compute_fn (the data check above) in a
            # ValueError quoting its arguments; the caller gets mtlkit's own error instead.
            if isinstance(err.__cause__, MtlkitError) and str(err).startswith("Call to compute"):
                raise err.__cause__ from None
            raise

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
        if not any(isinstance(c, ValidationTable) for c in trainer.callbacks):
            trainer.callbacks.append(ValidationTable())  # mtlkit's per-task table
        if not any(isinstance(c, DataSummary) for c in trainer.callbacks):
            trainer.callbacks.append(DataSummary())
        _rich_progress_bar(trainer)
        # One run per folder: locked before anything (config.yaml included) is written there.
        trainer.callbacks.insert(0, RunFolderLock())
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _resolve_ckpt_path(self) -> None:
        """``--ckpt_path last`` becomes the newest last checkpoint, or an error: a run asked to
        resume never trains from step 0 (Lightning only warns and starts afresh). ``validate``
        and ``test`` print mtlkit's per-task table instead of Lightning's (which repeats every
        metric under each dataloader index)."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            config["ckpt_path"] = resolve_last(self.trainer)
        if self.subcommand in ("validate", "test"):
            config["verbose"] = False

    before_fit = before_validate = before_test = before_predict = _resolve_ckpt_path


def _rich_progress_bar(trainer: Trainer) -> None:
    """Lightning's default progress bar becomes :class:`~mtlkit.callbacks.TaskProgressBar`
    (rich, with per-task losses) when stdout is a terminal; a bar the config chose is kept."""
    bars = [c for c in trainer.callbacks if isinstance(c, ProgressBar)]
    default = len(bars) == 1 and type(bars[0]) in (RichProgressBar, TQDMProgressBar)
    terminal = sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"
    if default and terminal:
        trainer.callbacks[trainer.callbacks.index(bars[0])] = TaskProgressBar()


def cli_main(args: list[str] | None = None, run: bool = True) -> MtlkitCLI:
    """Builds (and by default runs) the CLI; ``run=False`` only instantiates the objects."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    console.quiet_third_party()
    return MtlkitCLI(
        MultiTaskModule,
        MultiTaskDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_callback=SaveConfig,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"use_distributed_sampler": False},
        auto_configure_optimizers=False,
    )


def predict_exported(
    model_dir: str,
    input_path: str,
    output_path: str,
    tasks: list[str] | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    text_column: str = "text",
    text_pair_column: str | None = None,
) -> dict[str, Any]:
    """``mtlkit predict --model DIR``: one JSON line per input line with every task's prediction.

    Each row holds the input's ``line`` number, its ``text`` (and ``text_pair``; or ``turns``
    and ``speakers``) and
    ``predictions`` (``{task: prediction}``); a blank input line gets a row with
    ``"predictions": null``. A prediction of an input cut to the task's ``max_length`` holds
    ``"truncated": true``.

    Returns:
        A summary: ``rows`` written, ``predicted`` inputs, ``blank`` line numbers and
        ``truncated`` line numbers per task.
    """
    from mtlkit.inference import ExportedModel

    items = read_inputs(Path(input_path), text_column, text_pair_column)
    given = [item for item in items if item is not None]
    try:
        model = ExportedModel.from_folder(model_dir, device=device)
        predictions = model.predict(given, tasks=tasks, batch_size=batch_size) if given else {}
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from err
    summary: dict[str, Any] = {"rows": len(items), "predicted": len(given), "blank": []}
    summary["truncated"] = {task: [] for task in predictions}
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    with out.open("w", encoding="utf-8") as f:
        for line, item in enumerate(items, 1):
            if item is None:
                summary["blank"].append(line)
                row: dict[str, Any] = {"line": line, "text": "", "predictions": None}
            else:
                row = {"line": line, **item, "predictions": {}}
                for task, per_input in predictions.items():
                    row["predictions"][task] = per_input[done]
                    if per_input[done].get("truncated"):
                        summary["truncated"][task].append(line)
                done += 1
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return summary


def export_checkpoint(configs: list[str], ckpt_path: str, output: str) -> Path:
    """``mtlkit export``: the model of ``configs`` with the weights and labels of ``ckpt_path``,
    written by :func:`mtlkit.export.export_model` with the data config's tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from mtlkit.export import export_model
    from mtlkit.paths import resolve_path

    if not Path(ckpt_path).is_file():
        raise ConfigError(f"checkpoint {ckpt_path!r} does not exist")
    args = [a for c in configs for a in ("--config", c)]
    cli = cli_main(args, run=False)  # builds the module: no weights read (init_from neither)
    module = cli.model
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # no pickled code
    module.on_load_checkpoint(ckpt)  # labels first: heads are built from them
    # An export holds the encoder and heads: training-only state (the weighting method's, a
    # distillation's projections) is left out, so a checkpoint trained with another method (a
    # configs/weighting/ override) exports too.
    model_keys = ("encoder.", "heads.")
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(model_keys)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith(model_keys)]
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {ckpt_path} does not fit the model of {', '.join(configs)}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(cli.datamodule.tokenizer_path))
    folder = export_model(module.eval(), tokenizer, output)
    write_card(folder, module, ckpt)
    return folder


def write_card(folder: Path, module: MultiTaskModule, ckpt: dict[str, Any]) -> None:
    """The model card facts of an export (``card.json``) and its ``README.md`` model card:
    every task's training data, the checkpoint's last evaluation metrics, the git commit."""
    from mtlkit.hf_export import CARD_FILE, git_commit, model_card
    from mtlkit.inference import ExportedModel

    facts = {
        "metrics": ckpt.get("mtlkit_metrics") or {},
        "data": {name: task.source.describe() for name, task in module.tasks.items()},
        "commit": git_commit(),
        "encoder": getattr(module.encoder, "name_or_path", None),
    }
    (folder / CARD_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    exported = ExportedModel.from_folder(folder)
    (folder / "README.md").write_text(model_card(exported, exported.task_names, facts))


def _export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="mtlkit export", description="Export a trained model to a self-contained folder."
    )
    parser.add_argument("--config", action="append", required=True, help="repeatable")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by mtlkit fit")
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument(
        "--hf_task",
        action="append",
        default=[],
        help="also write this task as a standalone transformers model in OUTPUT/hf/TASK "
        "(repeatable; 'all' for every task with a standard head)",
    )
    parser.add_argument(
        "--push_to_hub",
        default=None,
        metavar="REPO_ID",
        help="upload the folder (the one --hf_task folder, or the multi-task export) to the Hub",
    )
    ns = parser.parse_args(argv)
    folder = export_checkpoint(ns.config, ns.ckpt_path, ns.output)
    print(f"exported to {folder}")
    pushed = folder
    if ns.hf_task:
        from mtlkit.hf_export import KINDS, export_hf_task
        from mtlkit.inference import ExportedModel

        model = ExportedModel.from_folder(folder)
        tasks = ns.hf_task
        if tasks == ["all"]:
            tasks = [n for n, t in model.tasks.items() if t.kind in KINDS]
        for task in tasks:
            pushed = export_hf_task(model, task, folder / "hf" / task, card_facts=folder)
            print(f"task {task!r} as a transformers model: {pushed}")
        if ns.push_to_hub and len(tasks) != 1:
            raise ConfigError("--push_to_hub takes one --hf_task (or none: the whole export)")
    if ns.push_to_hub:
        from mtlkit.hf_export import push_to_hub

        print(f"pushed {pushed} to {push_to_hub(pushed, ns.push_to_hub)}")


def _predict_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="mtlkit predict",
        description="Predict with an exported model (with --config: LightningCLI's predict).",
    )
    parser.add_argument("--model", required=True, help="folder written by mtlkit export")
    parser.add_argument(
        "--input",
        required=True,
        help=".txt (a text per line), .jsonl (text/text_pair, or turns/speakers per line), .csv",
    )
    parser.add_argument("--text_column", default="text", help=".jsonl/.csv: the text's field")
    parser.add_argument(
        "--text_pair_column", default=None, help=".jsonl/.csv: the pair's field (pair tasks)"
    )
    parser.add_argument("--output", required=True, help=".jsonl to write")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default all)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="e.g. cuda, cuda:1")
    ns = parser.parse_args(argv)
    tasks = [t for t in ns.tasks.split(",") if t] if ns.tasks else None
    summary = predict_exported(
        ns.model,
        ns.input,
        ns.output,
        tasks,
        ns.batch_size,
        ns.device,
        ns.text_column,
        ns.text_pair_column,
    )
    blank = summary["blank"]
    note = f", {len(blank)} blank line(s) without one (lines {_lines(blank)})" if blank else ""
    print(f"wrote {summary['rows']} rows to {ns.output}: {summary['predicted']} predictions{note}")
    for task, lines in summary["truncated"].items():
        if lines:
            print(
                f"warning: task {task!r}: {len(lines)} of {summary['predicted']} input(s) longer "
                f"than its max_length were truncated (lines {_lines(lines)}); their predictions "
                'say "truncated": true',
                file=sys.stderr,
            )


def _tune_main(argv: list[str]) -> None:
    from mtlkit.tune import tune

    parser = argparse.ArgumentParser(
        prog="mtlkit tune",
        description="Optuna search over config keys; the study resumes from OUTPUT/study.db.",
    )
    parser.add_argument("--config", action="append", required=True, help="repeatable")
    parser.add_argument("--search", required=True, help="search file (YAML): params, objective")
    parser.add_argument("--output", default="runs/tune", help="study, trials, report, best.yaml")
    parser.add_argument("--n_trials", type=int, default=None, help="overrides the search file")
    ns, overrides = parser.parse_known_args(argv)
    bad = [a for a in overrides if not a.startswith("--")]
    if bad:
        raise ConfigError(f"mtlkit tune: unexpected argument(s) {bad}")
    tune(ns.config, ns.search, ns.output, _build, overrides, ns.n_trials)


def _build(args: list[str]) -> MtlkitCLI:
    return cli_main(args, run=False)


def _lines(numbers: list[int], shown: int = 10) -> str:
    text = ", ".join(map(str, numbers[:shown]))
    return text + (f", ... ({len(numbers) - shown} more)" if len(numbers) > shown else "")


def _dispatch(args: list[str], from_sys_argv: bool) -> None:
    if args[:1] in (["export"], ["tune"]):
        if from_sys_argv:  # the LightningCLI they build gets its own arguments, not these
            del sys.argv[1:]
        return (_export_main if args[0] == "export" else _tune_main)(args[1:])
    with_config = any(a in ("--config", "-c") or a.startswith("--config=") for a in args)
    if args[:1] == ["predict"] and not with_config:
        return _predict_main(args[1:])
    if from_sys_argv:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv[1:] = args
    cli_main(None if from_sys_argv else args)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``export``, ``predict --model`` and LightningCLI's subcommands.

    A user's mistake (a bad config value or file, a class_path typo, mtlkit's own
    :class:`~mtlkit.errors.MtlkitError` raised while the data is read or during training) is
    printed as one ``error: ...`` line, and the process exits with status 2 (config) or 1.
    ``--debug`` or ``MTLKIT_DEBUG=1`` shows the traceback instead. The Python API
    (:func:`cli_main`, :func:`export_checkpoint`, :func:`predict_exported`) raises.
    """
    debug, args = console.debug_requested(sys.argv[1:] if argv is None else list(argv))
    if args[:1] in (["--version"], ["-V"]):
        print(console.version_line())
        return None
    console.quiet_third_party()
    if debug:
        return _dispatch(args, argv is None)
    token = _RAISE_PARSE_ERRORS.set(True)
    try:
        console.check_config_files(args)
        _dispatch(args, argv is None)
    except Exception as err:  # noqa: BLE001 - anything else is re-raised with its traceback
        described = console.describe(err)
        if described is None:
            raise
        message, status = described
        print(f"error: {message}\n{console.DEBUG_HINT}", file=sys.stderr)
        raise SystemExit(status) from None
    finally:
        _RAISE_PARSE_ERRORS.reset(token)


if __name__ == "__main__":
    main()
