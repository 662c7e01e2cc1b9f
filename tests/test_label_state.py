"""``Task.label_state`` (formerly ``head_state``): the old names keep working for callers and for
task types written against them; ``num_labels`` is part of the task contract."""

from __future__ import annotations

from typing import Any

from mtlkit.data import InMemory
from mtlkit.tasks import Regression, SequenceClassification, Task


def _source() -> InMemory:
    return InMemory({"train": {"text": ["a", "b"], "label": [0, 1]}})


def test_old_names_are_aliases_of_the_new_ones():
    task = SequenceClassification("topic", _source(), num_labels=2)
    task.label_names = ["neg", "pos"]
    assert (
        task.head_state() == task.label_state() == {"num_labels": 2, "label_names": ["neg", "pos"]}
    )
    fresh = SequenceClassification("topic", _source())
    fresh.load_head_state(task.label_state())
    assert fresh.num_labels == 2 and fresh.label_names == ["neg", "pos"]


def test_a_task_type_overriding_the_old_names_is_read_through_the_new_ones():
    class Legacy(Regression):
        def head_state(self) -> dict[str, Any]:
            return {"legacy": True}

        def load_head_state(self, state: dict[str, Any]) -> None:
            self.loaded = state

    task = Legacy("score", _source())
    assert task.label_state() == task.head_state() == {"legacy": True}
    task.load_label_state({"x": 1})
    assert task.loaded == {"x": 1}


def test_num_labels_is_declared_on_the_base_class():
    assert "num_labels" in Task.__annotations__ and Task.num_labels is None
    assert Regression("score", _source()).num_labels == 1
    assert not SequenceClassification("topic", _source()).is_ready
    assert SequenceClassification("topic", _source(), num_labels=3).is_ready
