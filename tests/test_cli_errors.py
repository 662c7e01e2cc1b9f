"""The ``mtlkit`` console turns a user's mistake into one ``error: ...`` line, no traceback.

The console cases run the installed ``mtlkit`` script in a subprocess: what matters is what a
user sees on the terminal. The Python API (``cli_main``) keeps raising mtlkit's exceptions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtlkit.cli import cli_main
from mtlkit.console import check_config_files, describe, suggest_class_path
from mtlkit.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny/tiny.yaml")
MTLKIT = str(Path(sys.executable).with_name("mtlkit"))

MISNAMED_COLUMN = """\
data:
  init_args:
    tasks:
      - class_path: mtlkit.tasks.SequenceClassification
        init_args:
          name: trec
          text_column: txt
          num_labels: 2
          source:
            class_path: mtlkit.data.InMemory
            init_args: {splits: {train: {text: [a b, c d, e f, g h], label: [0, 1, 0, 1]}}}
"""
# The data must be checked before the encoder is built: this one cannot be loaded at all.
MISSING_ENCODER = "--model.init_args.encoder.init_args.name_or_path=no-such-encoder-folder"


def _mtlkit(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    environ = {k: v for k, v in os.environ.items() if k != "MTLKIT_DEBUG"}
    environ.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})})
    return subprocess.run(
        [MTLKIT, *args], cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=600
    )


def _files(tmp_path: Path) -> dict[str, str]:
    typo = Path(TINY).read_text().replace("mtlkit.tasks.Regression", "mtlkit.tasks.Regresion")
    # The LightningModule's path before it moved out of mtlkit.model (which imports no Lightning).
    old = "mtlkit" + ".model.MultiTaskModule"  # spelled apart: path rewrites must not touch it
    moved = Path(TINY).read_text().replace("mtlkit.training.MultiTaskModule", old)
    files = {
        "typo.yaml": typo,
        "moved.yaml": moved,
        "broken.yaml": "trainer:\n  max_steps: [1\nmodel: {\n",
        "column.yaml": MISNAMED_COLUMN,
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {name: str(tmp_path / name) for name in files}


# (case, arguments after `mtlkit fit --config tiny.yaml`, exit status, the error line)
CONSOLE_CASES = [
    (
        "constructor_error",
        [
            "--data.init_args.sampling=mtlkit.data.sampling.Temperature",
            "--data.init_args.sampling.init_args.temperature=-1",
        ],
        2,
        "error: temperature must be > 0, got -1.0",
    ),
    (
        "class_path_typo",
        ["--config", "typo.yaml"],
        2,
        "error: data.init_args.tasks: no class 'mtlkit.tasks.Regresion' (module 'mtlkit.tasks' "
        "has no attribute 'Regresion'); did you mean 'mtlkit.tasks.Regression'?",
    ),
    (
        "moved_class_path",
        ["--config", "moved.yaml"],
        2,
        "error: model: no class 'mtlkit"
        ".model.MultiTaskModule' (module 'mtlkit.model' has no "
        "attribute 'MultiTaskModule'); did you mean 'mtlkit.training.MultiTaskModule'?",
    ),
    (
        "malformed_yaml",
        ["--config", "broken.yaml"],
        2,
        "error: config file broken.yaml: line 3, column 6: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 2, column 14)",
    ),
    (
        "bad_literal_value",
        ["--model.init_args.pooling=max"],
        2,
        "error: model.init_args.pooling: Expected a typing.Literal['cls', 'mean', 'last']. "
        "Got value: max",
    ),
    (
        "data_error_before_the_model_loads",
        ["--config", "column.yaml", MISSING_ENCODER],
        1,
        "error: task 'trec': split 'train' has no column(s) ['txt']; "
        "available columns: ['text', 'label']",
    ),
    (
        "config_error_during_fit",
        ["--model.init_args.weighting=mtlkit.weighting.DynamicWeightAverage"],
        2,
        "error: DynamicWeightAverage needs every task's loss in every step; "
        "set data.batch_mode: mixed",
    ),
]


@pytest.mark.parametrize(
    "args, status, line", [c[1:] for c in CONSOLE_CASES], ids=[c[0] for c in CONSOLE_CASES]
)
def test_console_prints_one_line_without_traceback(args, status, line, tmp_path):
    _files(tmp_path)
    result = _mtlkit(tmp_path, "fit", "--config", TINY, *args)
    err = result.stderr
    assert result.returncode == status, err
    assert "Traceback" not in err and "usage:" not in err, err
    assert line in err.splitlines(), err
    assert err.splitlines()[-1] == "(traceback: --debug or MTLKIT_DEBUG=1)"
    assert len(err) < 2000, err  # not the 10 KB of chained errors and namespace dumps


def test_debug_shows_the_traceback(tmp_path):
    files = _files(tmp_path)
    args = ["fit", "--config", TINY, "--config", files["column.yaml"]]
    flag = _mtlkit(tmp_path, *args, "--debug")
    env = _mtlkit(tmp_path, *args, env={"MTLKIT_DEBUG": "1"})
    for result in (flag, env):
        assert result.returncode != 0
        assert "Traceback" in result.stderr
        assert "mtlkit.errors.DataError: task 'trec'" in result.stderr


def test_python_api_raises_the_data_error_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = _files(tmp_path)
    with pytest.raises(DataError, match=r"task 'trec': split 'train' has no column\(s\)"):
        cli_main(["fit", "--config", TINY, "--config", files["column.yaml"], MISSING_ENCODER])


def test_yaml_error_names_the_file_and_line(tmp_path):
    files = _files(tmp_path)
    with pytest.raises(ConfigError, match=r"broken\.yaml: line 3, column 6: expected ','"):
        check_config_files(["fit", "--config", TINY, "--config", files["broken.yaml"]])
    # A missing file or inline YAML is left to the parser ("File does not exist: '...'").
    check_config_files(["fit", "--config=nope.yaml", "-c", "{trainer: {max_steps: 1}}"])


@pytest.mark.parametrize(
    "given, base, expected",
    [
        ("mtlkit.data.sampling.Temprature", None, "mtlkit.data.sampling.Temperature"),
        ("mtlkit.weightin.StaticWeighting", None, "mtlkit.weighting.StaticWeighting"),
        ("torch.optim.Adamw", None, "torch.optim.AdamW"),
        (
            "mtlkit.tasks.Regresion",
            "mtlkit.tasks.base.Task",
            "mtlkit.tasks.Regression",
        ),
        ("mtlkit.tasks.Zzzzzzzz", None, None),
    ],
)
def test_did_you_mean(given, base, expected):
    assert suggest_class_path(given, base) == expected


def test_bugs_keep_their_traceback():
    assert describe(KeyError("x")) is None
    assert describe(DataError("task 'a': bad")) == ("task 'a': bad", 1)
    assert describe(RuntimeError("wrapped")) is None
    unreadable = OSError("Can't load tokenizer for 'no-such-folder'")
    assert describe(unreadable) == ("Can't load tokenizer for 'no-such-folder'", 1)
    for outer, expected in (
        (ValueError, ("Can't load tokenizer for 'no-such-folder'", 1)),
        (RuntimeError, None),
    ):  # jsonargparse wraps in ValueError
        try:
            raise outer("Problem with given class_path ...") from unreadable
        except outer as err:
            assert describe(err) == expected


def test_missing_encoder_or_tokenizer_folder_is_named(tmp_path):
    """A path that is not there: one line naming it (it was transformers' "couldn't connect to
    https://huggingface.co" text, which does not say which path)."""
    from mtlkit.errors import ConfigError
    from mtlkit.paths import resolve_path

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="no-such-model.*does not exist"):
        resolve_path(missing)
    with pytest.raises(ConfigError, match="'some-org/some-model' is not a local folder.*offline"):
        resolve_path("some-org/some-model")
    assert resolve_path(str(tmp_path)) == str(tmp_path)
