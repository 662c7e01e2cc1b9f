"""``mtlkit tune``: Optuna search over any config key, pruned, resumable, reported.

A search file names the keys to vary (any dotted config key, as on the command line) and what
to optimise::

    objective: val/mean            # any logged validation metric (default val/mean)
    direction: maximize            # or minimize
    n_trials: 20                   # finished (complete or pruned) trials the study should hold
    sampler: {class_path: optuna.samplers.TPESampler, init_args: {seed: 0}}
    pruner: {class_path: optuna.pruners.MedianPruner, init_args: {n_startup_trials: 3}}
    params:
      model.init_args.optimizer.init_args.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      data.init_args.batch_mode: {type: categorical, choices: [homogeneous, mixed]}
      model.init_args.weighting:
        type: categorical
        choices:
          - {class_path: mtlkit.weighting.EqualWeighting}
          - {class_path: mtlkit.weighting.DWA}
      model.init_args.weighting.init_args.temperature:
        {type: float, low: 1.0, high: 4.0, when: {model.init_args.weighting: mtlkit.weighting.DWA}}

Each trial is the configs plus one generated override (``trial_N.yaml``) built and trained in
this process; ``when`` samples a key only when another one took that value (a ``class_path``
stands for its choice). A :class:`PruningCallback` reports the objective after every validation
and stops a trial the pruner rejects. The study lives in ``<output>/study.db`` (SQLite): a
search run again with the same output continues it, and a trial left running by a killed search
is marked failed and queued again with the same parameters. At the end: ``trials.md`` (a table,
also printed), ``optimization_history.png``, ``param_importances.png`` and ``best.yaml``, the
full config of the best trial, which ``mtlkit fit --config best.yaml`` trains.

Akiba et al., "Optuna: A Next-generation Hyperparameter Optimization Framework", KDD 2019.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from mtlkit.checkpointing import pid_alive
from mtlkit.errors import ConfigError

__all__ = ["PruningCallback", "SearchSpace", "tune"]

#: Builds a CLI from arguments without running it (``cli_main(args, run=False)``).
Build = Callable[[list[str]], Any]
LOCK = "tune.lock"


@dataclass
class SearchSpace:
    """A parsed search file (see the module docstring)."""

    params: dict[str, dict[str, Any]]
    objective: str = "val/mean"
    direction: str = "maximize"
    n_trials: int = 10
    sampler: dict[str, Any] | None = None
    pruner: dict[str, Any] | None = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """Reads and checks a search file.

        Raises:
            ConfigError: A missing file, an unknown field, or a parameter without a valid type.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"search file {str(path)!r} does not exist")
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        unknown = sorted(set(raw) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ConfigError(f"search file {path}: unknown field(s) {unknown}")
        space = cls(**raw)
        if space.direction not in ("maximize", "minimize"):
            raise ConfigError(f"search file {path}: direction must be maximize or minimize")
        if not space.params:
            raise ConfigError(f"search file {path}: `params` names no config key to search")
        for key, spec in space.params.items():
            _check_param(path, key, spec, space.params)
        return space


def _check_param(path: Path, key: str, spec: Any, params: dict[str, Any]) -> None:
    where = f"search file {path}: param {key!r}"
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in ("float", "int", "categorical"):
        raise ConfigError(f"{where}: `type` must be float, int or categorical, got {kind!r}")
    if kind == "categorical" and not spec.get("choices"):
        raise ConfigError(f"{where}: a categorical param needs a non-empty `choices` list")
    if kind != "categorical" and not ("low" in spec and "high" in spec):
        raise ConfigError(f"{where}: a {kind} param needs `low` and `high`")
    for other in spec.get("when") or {}:
        if other not in params or list(params).index(other) > list(params).index(key):
            raise ConfigError(f"{where}: `when` names {other!r}, which is not an earlier param")


def _label(choice: Any) -> Any:
    """What a categorical choice is stored as in the study: itself, or JSON for a dict/list;
    its ``class_path`` where ``when`` compares."""
    return (
        choice
        if choice is None or isinstance(choice, bool | int | float | str)
        else (json.dumps(choice, sort_keys=True))
    )


def _short(choice: Any) -> Any:
    return choice.get("class_path", choice) if isinstance(choice, dict) else choice


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """The trial's value of every param whose ``when`` holds (dotted key -> config value)."""
    values: dict[str, Any] = {}
    for key, spec in space.params.items():
        when = spec.get("when") or {}
        if any(k not in values or _short(values[k]) != v for k, v in when.items()):
            continue
        if spec["type"] == "categorical":
            labels = [_label(c) for c in spec["choices"]]
            picked = trial.suggest_categorical(key, labels)
            values[key] = copy.deepcopy(spec["choices"][labels.index(picked)])
        elif spec["type"] == "float":
            low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log"))
            values[key] = trial.suggest_float(key, low, high, log=log)
        else:
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]))
    return values


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as one nested override (``a.b: 1`` -> ``{a: {b: 1}}``), parents first."""
    out: dict[str, Any] = {}
    for key in sorted(values, key=lambda k: k.count(".")):
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"search param {key!r} is inside {part!r}, which is not a dict")
        value = values[key]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = {**value, **node[leaf]}
        else:
            node[leaf] = value
    return out


class PruningCallback(L.Callback):
    """Reports the objective to an Optuna trial after each validation; stops a pruned trial.

    Lightning stops at the end of the step (``trainer.should_stop``); the caller then raises
    ``optuna.TrialPruned`` when :attr:`pruned` is set.

    Args:
        trial: The Optuna trial.
        monitor: The logged metric (e.g. ``val/mean``).
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor, self.pruned = trial, monitor, False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(value):
            return
        self.trial.report(value, step=trainer.global_step)
        if self.trial.should_prune():
            self.pruned, trainer.should_stop = True, True


def _instance(spec: dict[str, Any] | None, default: Any) -> Any:
    if spec is None:
        return None
    if not spec:
        return default
    module, _, name = str(spec.get("class_path", "")).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"search file: no class {spec.get('class_path')!r} ({err})") from err
    return cls(**(spec.get("init_args") or {}))


def _take_lock(output: Path) -> None:
    lock = output / LOCK
    if lock.is_file():
        pid = int(lock.read_text().strip() or 0)
        if pid and pid != os.getpid() and pid_alive(pid):
            raise ConfigError(f"another mtlkit tune (process {pid}) is using {output}")
    lock.write_text(str(os.getpid()))


def _requeue_interrupted(study: Any) -> list[int]:
    """Trials a killed search left running: marked failed, their parameters queued again."""
    import optuna
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, skip_if_exists=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return [t.number for t in stale]


def tune(
    configs: list[str],
    search: str | Path,
    output: str | Path,
    build: Build,
    overrides: list[str] | None = None,
    n_trials: int | None = None,
) -> Any:
    """Runs (or continues) the search; writes the study, the report and ``best.yaml``.

    Args:
        configs: The ``--config`` files every trial stacks its override on.
        search: The search file.
        output: Folder of the study (``study.db``), trial overrides and the report.
        build: Builds a CLI without running it (``mtlkit.cli.cli_main(args, run=False)``).
        overrides: Extra command-line overrides for every trial.
        n_trials: Finished trials to reach (default: the search file's ``n_trials``).

    Returns:
        The Optuna study.
    """
    import optuna

    space = SearchSpace.from_file(search)
    target = n_trials or space.n_trials
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    _take_lock(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="mtlkit",
        storage=f"sqlite:///{out.resolve() / 'study.db'}",
        load_if_exists=True,
        direction=space.direction,
        sampler=_instance(space.sampler, None) if space.sampler else None,
        pruner=_instance(space.pruner, optuna.pruners.MedianPruner()) or optuna.pruners.NopPruner(),
    )
    requeued = _requeue_interrupted(study)
    if requeued:
        print(f"tune: trial(s) {requeued} of an interrupted search failed; queued again")
    base = [a for c in configs for a in ("--config", c)]

    def objective(trial: Any) -> float:
        values = suggest(trial, space)
        override = out / f"trial_{trial.number}.yaml"
        override.write_text(yaml.safe_dump(nested(values), sort_keys=False))
        folder = out / f"trial_{trial.number}"
        args = [*base, "--config", str(override), *(overrides or [])]
        cli = build([*args, f"--trainer.default_root_dir={folder}"])
        pruning = PruningCallback(trial, space.objective)
        cli.trainer.callbacks.append(pruning)
        cli.trainer.fit(cli.model, cli.datamodule)
        if pruning.pruned:
            raise optuna.TrialPruned()
        metrics = cli.trainer.callback_metrics
        if space.objective not in metrics:
            raise ConfigError(
                f"objective {space.objective!r} was not logged; logged: {sorted(metrics)}"
            )
        value = float(metrics[space.objective])
        if not math.isfinite(value):
            print(f"tune: trial {trial.number}: {space.objective} = {value}: failed")
            return value  # Optuna marks the trial failed
        print(f"tune: trial {trial.number}: {space.objective} = {value:.4f} with {values}")
        return value

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    failed = 0
    while len(study.get_trials(deepcopy=False, states=finished)) < target:
        trial = study.optimize(objective, n_trials=1) or study.trials[-1]
        if trial.state == optuna.trial.TrialState.FAIL:  # a non-finite objective
            failed += 1
            if failed >= target:
                raise ConfigError(
                    f"{failed} trials failed (objective {space.objective!r} not finite); "
                    f"see {out / 'study.db'}"
                )
    _report(study, space, out, base, overrides or [], build)
    (out / LOCK).unlink(missing_ok=True)
    return study


def _report(
    study: Any, space: SearchSpace, out: Path, base: list[str], extra: list[str], build: Build
) -> None:
    from mtlkit.tune.report import plots, table

    text = table(study, space.objective)
    (out / "trials.md").write_text(text + "\n")
    print(text)
    for name, note in plots(study, out).items():
        print(f"tune: {name}: {note}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        print("tune: no trial completed; no best.yaml")
        return
    best = study.best_trial
    cli = build([*base, "--config", str(out / f"trial_{best.number}.yaml"), *extra])
    (out / "best.yaml").write_text(cli.parser.dump(cli.config, skip_none=False))
    print(
        f"tune: best trial {best.number}: {space.objective} = {best.value:.4f}; "
        f"its config: {out / 'best.yaml'} (mtlkit fit --config {out / 'best.yaml'})"
    )
