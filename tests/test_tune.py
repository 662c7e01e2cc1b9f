"""``mtlkit tune``: a search on the tiny config, pruning, a killed and resumed study, the report
and a best config that ``mtlkit fit`` accepts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from mtlkit.cli import cli_main, main
from mtlkit.errors import ConfigError
from mtlkit.tune import SearchSpace
from mtlkit.tune.search import nested

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny/tiny.yaml")
# The tiny config validates on one example per task: its Pearson (in val/mean) is undefined,
# the loss is not.
SEARCH = {
    "objective": "val/trec/loss",
    "direction": "minimize",
    "n_trials": 3,
    "sampler": {"class_path": "optuna.samplers.RandomSampler", "init_args": {"seed": 0}},
    "params": {
        "model.init_args.head_lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "data.init_args.batch_mode": {"type": "categorical", "choices": ["homogeneous", "mixed"]},
        "model.init_args.weighting": {
            "type": "categorical",
            "choices": [
                {"class_path": "mtlkit.weighting.EqualWeighting"},
                {"class_path": "mtlkit.weighting.DynamicWeightAverage"},
            ],
        },
        "model.init_args.weighting.init_args.temperature": {
            "type": "float",
            "low": 1.0,
            "high": 4.0,
            "when": {"model.init_args.weighting": "mtlkit.weighting.DynamicWeightAverage"},
        },
    },
}


def _search(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({**SEARCH, **changes}))
    return path


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="mtlkit", storage=f"sqlite:///{out / 'study.db'}")


def test_nested_override_from_dotted_keys():
    values = {
        "model.init_args.weighting.init_args.temperature": 2.0,
        "model.init_args.weighting": {"class_path": "W"},
        "data.init_args.batch_size": 8,
    }
    assert nested(values) == {
        "model": {
            "init_args": {"weighting": {"class_path": "W", "init_args": {"temperature": 2.0}}}
        },
        "data": {"init_args": {"batch_size": 8}},
    }


def test_search_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    main(["tune", "--config", TINY, "--search", str(_search(tmp_path)), "--output", str(out)])
    study = _study(out)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert all(len(t.intermediate_values) == 2 for t in study.trials)  # 2 validations each
    # A conditional param is sampled exactly when its condition holds.
    for t in study.trials:
        dwa = "DynamicWeightAverage" in t.params["model.init_args.weighting"]
        assert ("model.init_args.weighting.init_args.temperature" in t.params) == dwa
    printed = capsys.readouterr().out
    table = (out / "trials.md").read_text()
    assert table.splitlines()[0].startswith("| trial | state | val/trec/loss | reports |")
    assert len(table.splitlines()) == 2 + 3 and table.strip() in printed
    for plot in ("optimization_history.png", "param_importances.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    # best.yaml is a full config that `mtlkit fit` builds, with the best trial's values.
    best = study.best_trial
    assert best.value == min(t.value for t in study.trials)
    cli = cli_main(["--config", str(out / "best.yaml")], run=False)
    assert cli.model.head_lr == pytest.approx(best.params["model.init_args.head_lr"])
    assert cli.datamodule.batch_mode == best.params["data.init_args.batch_mode"]
    assert f"best trial {best.number}" in printed


def test_pruned_trials_stop_at_the_first_validation(tmp_path, monkeypatch):
    """A pruner that rejects every value (a loss above 0): each trial reports once, at the
    end of the first epoch (step 3 of 6), and is pruned; no trial completes, so no best.yaml."""
    monkeypatch.chdir(tmp_path)
    pruner = {"class_path": "optuna.pruners.ThresholdPruner", "init_args": {"upper": 0.0}}
    search = _search(tmp_path, pruner=pruner, n_trials=2)
    out = tmp_path / "out"
    main(["tune", "--config", TINY, "--search", str(search), "--output", str(out)])
    study = _study(out)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert [list(t.intermediate_values) for t in study.trials] == [[3], [3]]
    assert not (out / "best.yaml").exists()
    assert "pruned" in (out / "trials.md").read_text()


def test_a_killed_search_resumes(tmp_path):
    """Killed (SIGKILL) after its first trial is stored, the search run again continues the
    same study: earlier trials kept, the interrupted one failed and queued again, numbering
    continuing, until n_trials have finished."""
    search = _search(tmp_path, n_trials=4)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mtlkit.cli", "tune", "--config", TINY, "--search", str(search)]
    cmd += ["--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 240
        done: list = []
        while time.time() < deadline and proc.poll() is None:
            if (out / "study.db").is_file():
                try:
                    done = _study(out).get_trials(states=(TrialState.COMPLETE,))
                except Exception:  # noqa: BLE001 - the database is being created
                    done = []
                if done:
                    break
            time.sleep(0.2)
        assert done and proc.poll() is None, "the first trial did not complete in time"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    before = _study(out).trials
    first = before[0]
    running = [t for t in before if t.state == TrialState.RUNNING]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _study(out).trials
    assert [t.number for t in after] == list(range(len(after)))
    assert after[0].params == first.params and after[0].value == first.value
    finished = [t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len(after) > len(before)
    for stale in running:  # failed, and the same parameters ran again in a later trial
        assert after[stale.number].state == TrialState.FAIL
        assert any(t.params == stale.params for t in after[stale.number + 1 :])
        assert "queued again" in result.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"a.b": {"type": "loguniform", "low": 1, "high": 2}}}, "`type` must be"),
        ({"params": {"a.b": {"type": "float", "low": 1}}}, "needs `low` and `high`"),
        ({"params": {"a.b": {"type": "categorical", "choices": []}}}, "non-empty `choices`"),
        ({"params": {"a": {"type": "int", "low": 1, "high": 2, "when": {"b": 1}}}}, "earlier"),
        ({"trials": 3}, "unknown field"),
        ({"direction": "up"}, "maximize or minimize"),
    ],
)
def test_search_file_errors(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_file(_search(tmp_path, **change))


def test_an_objective_that_is_not_logged_is_one_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    search = _search(tmp_path, objective="val/nope", n_trials=1)
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--config", TINY, "--search", str(search), "--output", "out"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "objective 'val/nope' was not logged" in err and "val/trec/loss" in err


def test_the_shipped_search_fits_the_quickstart_config(tmp_path, monkeypatch):
    """Every key of configs/tune/quickstart.yaml is a key of configs/quickstart.yaml: the
    override of one trial (each param at its low end or last choice) builds."""
    monkeypatch.chdir(tmp_path)
    space = SearchSpace.from_file(ROOT / "configs/tune/quickstart.yaml")
    values = {
        key: spec["choices"][-1] if spec["type"] == "categorical" else spec["low"]
        for key, spec in space.params.items()
    }
    override = tmp_path / "trial.yaml"
    override.write_text(yaml.safe_dump(nested(values)))
    quickstart = str(ROOT / "configs/quickstart.yaml")
    cli = cli_main(["--config", quickstart, "--config", str(override)], run=False)
    assert type(cli.model.weighting).__name__ == "DynamicWeightAverage"
    assert cli.model.weighting.temperature == 1.0
    assert cli.datamodule.sampling.temperature == 1.0 and cli.datamodule.batch_mode == "mixed"
    assert cli.model.head_lr == 1.0e-4
