import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed announces its CPU fallback on stdout when imported, which would mix into the YAML of
# `--print_config`; on a machine without CUDA name the accelerator so it stays quiet.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402

from mtlkit.testing import build_tiny_tokenizer, save_tiny_encoder  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random BERT + tokenizer saved as a Hugging Face folder."""
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))
