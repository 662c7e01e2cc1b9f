import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed announces its CPU fallback on stdout when imported, which would mix into the YAML of
# `--print_config`; on a machine without CUDA name the accelerator so it stays quiet.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import re  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from mtlkit.testing import build_tiny_tokenizer, save_tiny_encoder  # noqa: E402

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def environment_mismatches(constraints: Path = CONSTRAINTS) -> list[str]:
    """Packages of ``constraints.txt`` that are missing or at another version here."""
    problems = []
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, pinned = line.split("==")
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed (constraints.txt pins {pinned})")
            continue
        if re.sub(r"\+.*$", "", installed) != pinned:
            problems.append(f"{name}: {installed} installed, constraints.txt pins {pinned}")
    return problems


def pytest_sessionstart(session):
    """Under ``make test`` (MTLKIT_STRICT_ENV=1) the environment must be the verified one: a
    missing optional package fails the run here instead of turning its tests into skips."""
    if os.environ.get("MTLKIT_STRICT_ENV") != "1":
        return
    problems = environment_mismatches()
    if problems:
        pytest.exit(
            "the environment differs from constraints.txt (run `make setup`, or `make lock` to "
            "refresh the pins):\n  " + "\n  ".join(problems),
            returncode=3,
        )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random BERT + tokenizer saved as a Hugging Face folder."""
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))
