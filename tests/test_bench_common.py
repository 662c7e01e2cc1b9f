"""What the benchmarks share: Δm% on hand-made numbers, the quiet Trainer, the explicit CPU mode."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from benchmarks import common, run, suite_rows
from benchmarks.common import delta_m
from mtlkit.testing.trainer import QUIET, quiet_cli_args, quiet_trainer


def test_delta_m_on_hand_made_numbers():
    # (0.9 - 0.8) / 0.8 = +12.5%, (0.45 - 0.5) / 0.5 = -10%: mean +1.25%
    assert delta_m({"a": 0.9, "b": 0.45}, {"a": 0.8, "b": 0.5}) == pytest.approx(1.25)
    # A zero single-task score has no relative change: left out, not a division by zero.
    assert delta_m({"a": 0.9, "b": 0.3}, {"a": 0.8, "b": 0.0}) == pytest.approx(12.5)
    assert delta_m({"b": 0.3}, {"b": 0.0}) is None
    # Only the tasks of the multi-task row count.
    assert delta_m({"a": 0.4}, {"a": 0.5, "b": 0.9}) == pytest.approx(-20.0)


def test_quiet_trainer_and_its_cli_form():
    trainer = quiet_trainer(max_steps=1, enable_checkpointing=True)
    assert trainer.logger is None and trainer.checkpoint_callback is not None
    assert not trainer.progress_bar_callback
    assert quiet_cli_args() == [
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    assert set(QUIET) == {a.split("=")[0].removeprefix("--trainer.") for a in quiet_cli_args()}


@pytest.mark.parametrize("mode,expected", [("default", True), ("full", False)])
def test_gradient_on_comes_from_the_mode_not_from_max_length(tmp_path, mode, expected):
    """The mode is explicit: a default-mode run with no length cuts still aggregates on the
    representation, and the full mode never does."""
    row = run.rows()["weighting/pcgrad"]
    args = suite_rows._override_files(row, tmp_path, {}, mode)
    written = [Path(a) for a in args if a.endswith("gradient_on.yaml")]
    assert bool(written) is expected
    if written:
        override = yaml.safe_load(written[0].read_text())
        assert (
            override["model"]["init_args"]["weighting"]["init_args"]["works_on"]
            == (run.MODES[mode]["gradient_on"])
        )


def test_profile_step_splits_both_sides():
    from benchmarks import profile_step

    result = profile_step.profile("tiny", steps=3, batch_size=4)
    for side, parts in result.items():
        counted = sum(v for k, v in parts.items() if k != "total" and not k.startswith(" "))
        assert counted == pytest.approx(parts["total"]), side
        assert parts["encoder forward"] > 0 and parts["backward"] > 0
        assert parts["optimizer kernels"] > 0
    assert result["mtlkit"]["  of which self.log"] > 0
    assert "| mtlkit | post-step parameter check |" in profile_step.markdown(result)


def test_digest_is_order_free_and_names_every_value():
    key = common.digest({"commit": "a", "seed": 0})
    assert key == common.digest({"seed": 0, "commit": "a"}) and len(key) == 16
    assert key != common.digest({"commit": "a", "seed": 1})
    assert key == hashlib.sha256(b'{"commit": "a", "seed": 0}').hexdigest()[:16]


def test_write_json_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "cache" / "row.json"
    common.write_json_atomic(path, {"runs": [1]})
    common.write_json_atomic(path, {"runs": [1, 2]})
    assert json.loads(path.read_text()) == {"runs": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["row.json"]
