"""The strict environment check of ``make test`` (tests/conftest.py) sees a missing package and
a wrong version, and the real environment passes it."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import CONSTRAINTS, environment_mismatches

ROOT = Path(__file__).resolve().parents[1]


def test_this_environment_matches_the_constraints():
    assert environment_mismatches() == []


def test_a_missing_package_and_a_wrong_version_are_reported(tmp_path):
    pins = tmp_path / "constraints.txt"
    pins.write_text("# comment\ntorch==0.0.1\nno-such-package-mtlkit==1.0\n")
    problems = environment_mismatches(pins)
    assert any(p.startswith("torch: 2.13.0") and "pins 0.0.1" in p for p in problems)
    assert any(p.startswith("no-such-package-mtlkit: not installed") for p in problems)


def test_make_test_fails_instead_of_skipping_when_a_package_is_missing(tmp_path):
    """A fake constraints file naming a package that is not installed: pytest stops with exit
    code 3 and names it, before running anything."""
    (tmp_path / "tests").mkdir()
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    (tmp_path / "tests" / "conftest.py").write_text(conftest)
    (tmp_path / "tests" / "test_nothing.py").write_text("def test_x():\n    pass\n")
    (tmp_path / "constraints.txt").write_text(
        CONSTRAINTS.read_text() + "cvxpy-that-is-not-there==1.0\n"
    )
    env = {**os.environ, "MTLKIT_STRICT_ENV": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stdout[-2000:]
    assert "cvxpy-that-is-not-there: not installed" in proc.stdout + proc.stderr
