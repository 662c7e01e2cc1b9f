"""Per-task encoder parts (peft adapters, prompts) are found by task name, so the model can touch
those of tasks absent from a step (DDP needs every parameter used on every process)."""

import pytest

from mtlkit.model import HFEncoder
from mtlkit.model.adapters import LoRAEncoder
from mtlkit.model.prompt_tuning import PromptTuningEncoder
from mtlkit.testing import TINY_ENCODER


@pytest.mark.parametrize("cls", [LoRAEncoder, PromptTuningEncoder])
def test_task_parameters_are_each_tasks_own(cls):
    encoder = cls(config=dict(TINY_ENCODER))
    encoder.prepare_tasks(["a", "b"])
    names = {id(p): n for n, p in encoder.named_parameters()}
    own = {t: {names[id(p)] for p in encoder.task_parameters(t)} for t in ("a", "b")}
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert own["a"] and own["b"] and not own["a"] & own["b"]
    assert own["a"] | own["b"] == trainable  # every adapter/prompt parameter, nothing frozen
    assert all(".a." in f".{n}." for n in own["a"])


def test_a_plain_encoder_has_no_task_parameters():
    assert HFEncoder(config=dict(TINY_ENCODER)).task_parameters("a") == []
