"""The English suite's rows and how one row becomes ``mtlkit fit`` arguments: the base config
(``configs/quickstart.yaml``), the modes, the per-row overrides (tasks and length cuts, encoder
layers, sampling, weighting configs and their settings) and the model-selection callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import CONFIGS
from benchmarks.suite_report import PRIMARY, task_steps
from mtlkit.testing.methods import MethodConfig, weighting_methods

BASE = CONFIGS / "quickstart.yaml"
MODES: dict[str, dict[str, Any]] = {
    # CPU budget: the encoder's lower three layers with frozen embeddings (their 11.7M
    # parameters are two thirds of what those layers would train), sequences cut (a BBC
    # article's topic is clear from its title and first line), gradient methods aggregating on
    # the shared representation (on this CPU per-parameter gradients, one backward per task,
    # cost 3-5x a step). Peak learning rates 3e-4 (encoder) and 3e-3 (heads), decayed linearly
    # over the run: learning curves of one seed at 100-150 steps per task put single-task TREC at
    # 0.86-0.905 test accuracy (0.58 with the configs' 1e-4 at 40 steps) and equal weighting's
    # val/mean on a plateau over the last 60 of 300 steps.
    "default": {
        "steps": 100,
        # Steps per task are ``steps`` times this factor. TREC gained +0.029 [+0.010, +0.048]
        # test accuracy from 200 steps against 100 (budget check at 5ef84c8, 5 seeds); BBC
        # topic and sentiment gained nothing. A peak learning rate of 6e-4 instead of 3e-4 did
        # not get there sooner (100 steps: 0.866 against 0.875; one seed of four stopped early).
        "task_budget": {"trec": 2},
        # MGDA-UB is MGDA on the shared representation (Sener & Koltun 2018), where this mode
        # runs every gradient method: the row equalled MGDA's in every seed at 5ef84c8.
        "skip": {"weighting/mgda_ub": "weighting/mgda"},
        "eval_every": 25,
        "patience": 3,
        "seeds": 5,
        "max_eval": 200,
        # Two layers and sentiment at 32 tokens took 68 min instead of 88 (ce6537b,
        # results/experiments/suite_2layers_ce6537b.md) but fell short of the plateaus:
        # sentiment gained +0.057 [+0.028, +0.086] from 200 steps (Pearson 0.736 at 100,
        # 0.796 here at bb0961c), equal weighting +0.030 [+0.020, +0.039] from 800.
        "max_length": {"trec": 32, "bbc_topic": 32, "sentiment": 48},
        "keep_layers": [0, 1, 2],
        # Mixed batches run the encoder once per task's sub-batch at its own width, not once
        # over all of them padded to the widest (HFEncoder(stack_tasks=False)): equal
        # weighting's step 0.199 s against 0.210 s (one seed, one process, 1 thread).
        "stack_tasks": False,
        # The embeddings and the lowest of the three layers stay frozen (FreezeLayers(n=1)), so
        # the backward pass stops above layer 0: a step ~20 % cheaper (equal weighting 0.160 s
        # against 0.199 s, sentiment alone 0.148 against 0.177) for the same single-task
        # scores (5027f80 against bb0961c: TREC 0.906 / 0.904, BBC topic 0.942 / 0.937,
        # sentiment Pearson 0.795 / 0.796). At 5027f80 the budget check found sentiment
        # (+0.026 [+0.007, +0.044] from 200 steps) and equal weighting (+0.019 [+0.012, +0.026]
        # from 800) still gaining, as they did unresolved at bb0961c and d152cb9.
        "frozen_layers": 1,
        "freeze_embeddings": True,
        "lr": 3.0e-4,
        "head_lr": 3.0e-3,
        "gradient_on": "representation",
        "accelerator": "cpu",
    },
    # The whole model and each config's own settings (for a GPU).
    "full": {
        "steps": 1000,
        "eval_every": 100,
        "patience": 5,
        "seeds": 5,
        "max_eval": None,
        "max_length": {},
        "keep_layers": None,
        "gradient_on": None,
        "accelerator": "auto",  # the quickstart config says cpu; --full is meant for a GPU
    },
}
#: Settings under which a dynamic method acts within the suite's budget (the shipped configs
#: suit long runs). Uncertainty (Kendall et al. 2018): the log-variances get their own learning
#: rate; at the encoder's 1e-4 Adam moves them < 0.05 in a few hundred steps, so the row would
#: be static weighting. DWA (Liu et al. 2019): the paper's period is an epoch, many per run; a
#: 10-step window gives tens of windows instead of one.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "uncertainty": {"lr": 1.0e-2},
    "dwa": {"window_steps": 10},
}
# The CPU suite's settings on the whole encoder (six layers, embeddings trained), 3 seeds:
# benchmarks.suite_check retrains a subset of rows this way to see whether the CPU suite's
# conclusions hold for the whole model.
MODES["whole"] = {
    **MODES["default"],
    "keep_layers": None,
    "frozen_layers": 0,
    "freeze_embeddings": False,
    "seeds": 3,
}
#: How many times the suite's steps the budget-check rows (``budget/<task>``) train.
BUDGET_CHECK = 2
SAMPLING = {
    "proportional": "mtlkit.data.sampling.Proportional",
    "uniform": "mtlkit.data.sampling.Uniform",
    "t2": ("mtlkit.data.sampling.Temperature", 2.0),
    "t5": ("mtlkit.data.sampling.Temperature", 5.0),
}


def _weighting_order(method: MethodConfig) -> tuple[bool, bool, str]:
    """Equal weighting first, then the loss-level and the gradient methods, each by name."""
    return method.is_gradient_method, method.name != "equal", method.name


def rows() -> dict[str, dict[str, Any]]:
    """Row name -> what it overrides on the base config."""
    table: dict[str, dict[str, Any]] = {f"single/{t}": {"single": t} for t in PRIMARY}
    # The budget check: each single-task row again with BUDGET_CHECK times the steps. A budget
    # that reaches the single-task plateau gains nothing (paired by seed) from more steps.
    table.update({f"budget/{t}": {"single": t, "budget": BUDGET_CHECK} for t in PRIMARY})
    for name, spec in SAMPLING.items():
        cls, temperature = spec if isinstance(spec, tuple) else (spec, None)
        sampling: dict[str, Any] = {"class_path": cls}
        if temperature is not None:
            sampling["init_args"] = {"temperature": temperature}
        table[f"sampling/{name}"] = {"data": {"init_args": {"sampling": sampling}}}
    # Weighting rows (every config of configs/weighting/) all use mixed batches, equal weighting
    # included, so they differ from each other only in the method.
    for method in sorted(weighting_methods().values(), key=_weighting_order):
        row: dict[str, Any] = {"config": method.path, "mixed": True}
        if method.is_gradient_method:
            # Where a mode's ``gradient_on`` (MODES) applies: the default CPU suite aggregates
            # on the shared representation, as MGDA-UB does; --full keeps the config's choice.
            row["gradient_on"] = "representation"
        if method.name in METHOD_SETTINGS:
            row["weighting"] = METHOD_SETTINGS[method.name]
        table[f"weighting/{method.name}"] = row
    # The same check for the multi-task rows: equal weighting with twice the steps.
    table["budget/equal"] = {**table["weighting/equal"], "budget": BUDGET_CHECK}
    return table


def _mode_of(max_length: dict[str, int]) -> str:
    """The mode whose length cuts ``max_length`` are (for callers that pass only those)."""
    return next(m for m, s in MODES.items() if s["max_length"] == max_length)


def _dump(tmp: Path, name: str, content: dict[str, Any]) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


def _override_files(
    row: dict[str, Any], tmp: Path, max_length: dict[str, int], mode: str | None = None
) -> list[str]:
    """``--config`` arguments for one row: its tasks (with the mode's ``max_length`` cuts), the
    mode's encoder layers, its data and weighting overrides, and the mode's ``gradient_on`` for
    gradient methods."""
    settings = MODES[mode or _mode_of(max_length)]
    files: list[str] = []
    base = yaml.safe_load(BASE.read_text())
    tasks = [
        t
        for t in base["data"]["init_args"]["tasks"]
        if row.get("single") in (None, t["init_args"]["name"])
    ]
    for task in tasks:
        name = task["init_args"]["name"]
        task["init_args"]["max_length"] = max_length.get(name, task["init_args"].get("max_length"))
    files.append(_dump(tmp, "tasks", {"data": {"init_args": {"tasks": tasks}}}))
    encoder_args = {
        k: settings[k] for k in ("keep_layers", "stack_tasks") if settings.get(k) is not None
    }
    if encoder_args:
        encoder = {"encoder": {"init_args": encoder_args}}
        files.append(_dump(tmp, "encoder", {"model": {"init_args": encoder}}))
    if "data" in row:
        files.append(_dump(tmp, "override", {"data": row["data"]}))
    if "config" in row:
        files.append(str(row["config"]))
    weighting: dict[str, Any] = dict(row.get("weighting", {}))
    if "gradient_on" in row and settings["gradient_on"] is not None:
        weighting["works_on"] = settings["gradient_on"]
    if weighting:
        name = "gradient_on" if list(weighting) == ["works_on"] else "weighting"
        content = {"model": {"init_args": {"weighting": {"init_args": weighting}}}}
        files.append(_dump(tmp, name, content))
    return [arg for f in files for arg in ("--config", f)]


def _callbacks(
    tmp: Path, monitor: str, patience: int, freeze_embeddings: bool = False, frozen_layers: int = 0
) -> str:
    """Early stopping and best-checkpoint selection on ``monitor``, plus the run recorder (and,
    with ``freeze_embeddings`` or ``frozen_layers``, the embeddings and that many bottom layers
    kept frozen: ``FreezeLayers``)."""
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.EarlyStopping",
            "init_args": {"monitor": monitor, "mode": "max", "patience": patience},
        },
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "monitor": monitor,
                "mode": "max",
                "save_top_k": 1,
                "save_weights_only": True,
                "dirpath": str(tmp / "checkpoints"),
            },
        },
        {"class_path": "benchmarks.recorder.RunRecorder", "init_args": {"monitor": monitor}},
    ]
    if freeze_embeddings or frozen_layers:
        callbacks.append(
            {
                "class_path": "mtlkit.finetuning.FreezeLayers",
                "init_args": {"n": frozen_layers, "embeddings": freeze_embeddings},
            }
        )
    return _dump(tmp, "callbacks", {"trainer": {"callbacks": callbacks}})


def suite_rows(mode: str) -> dict[str, dict[str, Any]]:
    """The rows a mode trains: :func:`rows` without the mode's ``skip`` (rows that would repeat
    another row exactly)."""
    return {n: r for n, r in rows().items() if n not in MODES[mode].get("skip", {})}


def is_budget_check(row: dict[str, Any]) -> bool:
    """Whether a row is one of the budget check's (``budget/``): it trains another row longer
    to test the budget, and ``make bench`` trains it only when asked (``--budget-check``)."""
    return "budget" in row


def val_interval(total: int, every: int) -> int:
    """The divisor of ``total`` nearest ``every`` (the smaller on a tie): validation then falls
    on the last step, so the run's end is always scored."""
    divisors = [d for d in range(1, total + 1) if total % d == 0]
    return min(divisors, key=lambda d: (abs(d - every), d))


def row_tasks(row: dict[str, Any]) -> list[str]:
    """The tasks a row trains: its single task, or all of them."""
    return [row["single"]] if "single" in row else list(PRIMARY)


def row_steps(row: dict[str, Any], settings: dict[str, Any]) -> int:
    """The most steps a row trains: its task's budget, or for a multi-task row the sum of its
    tasks' single-task budgets; times the row's ``budget`` factor (the budget check)."""
    return sum(task_steps(settings, t) for t in row_tasks(row)) * row.get("budget", 1)


#: A mixed step's cost in homogeneous steps (0.22 s against 0.15 s on average at bb0961c;
#: 0.16 s against ~0.12 s with layer 0 frozen and one encoder pass per task).
MIXED_STEP_COST = 1.3


def longest_first(costs: dict[str, float]) -> list[str]:
    """The rows, costliest first (ties in the given order): started in this order as processes
    free up (:func:`benchmarks.common.train_in_workers`), the last rows to start are the
    shortest and the processes finish close together (longest processing time first)."""
    return sorted(costs, key=lambda n: -costs[n])


def row_cost(row: dict[str, Any], settings: dict[str, Any]) -> float:
    """A row's training cost in homogeneous steps (for :func:`longest_first`)."""
    return row_steps(row, settings) * (MIXED_STEP_COST if row.get("mixed") else 1.0)


def cli_args(row: dict[str, Any], mode: str, settings: dict[str, Any], tmp: Path) -> list[str]:
    """The ``mtlkit fit`` arguments of one row (without the seed: see :func:`seed_args`)."""
    from mtlkit.testing.trainer import quiet_cli_args

    tasks = row_tasks(row)
    total = row_steps(row, settings)
    # Validation every ``eval_every`` steps per task: a multi-task row (one task's batch per
    # step on average) validates about every ``eval_every * tasks`` steps, so patience counts
    # the same training per task in every row (counted in multi-task steps it stopped 7 of 95
    # multi-task runs at 8a558b6 after 25 steps per task without a gain, each its row's worst).
    interval = val_interval(total, settings["eval_every"] * len(tasks))
    args = ["fit", "--config", str(BASE), *_override_files(row, tmp, settings["max_length"], mode)]
    args += [*quiet_cli_args(), "--trainer.enable_checkpointing=true", "--trainer.callbacks=[]"]
    args += [
        "--config",
        _callbacks(
            tmp,
            "val/mean",
            settings["patience"],
            settings.get("freeze_embeddings", False),
            settings.get("frozen_layers", 0),
        ),
    ]
    args += [
        f"--trainer.accelerator={settings.get('accelerator', 'cpu')}",
        f"--trainer.max_steps={total}",
        "--trainer.max_epochs=1",
        f"--trainer.val_check_interval={min(interval, total)}",
        f"--data.init_args.steps_per_epoch={total}",
    ]
    if settings["max_eval"] is not None:
        args.append(f"--data.init_args.max_eval_examples={settings['max_eval']}")
    if settings.get("lr") is not None:  # the encoder's and the heads' peak learning rates
        args.append(f"--model.init_args.optimizer.init_args.lr={settings['lr']}")
        args.append(f"--model.init_args.head_lr={settings['head_lr']}")
    if row.get("mixed"):
        args.append("--data.init_args.batch_mode=mixed")
    return args


def seed_args(seed: int) -> list[str]:
    return [f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]
