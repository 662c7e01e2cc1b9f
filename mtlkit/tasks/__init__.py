"""Task types, one per module, all under :class:`mtlkit.tasks.base.Task`."""

from mtlkit.tasks.base import IGNORE_INDEX, Task
from mtlkit.tasks.dialogue_classification import DialogueClassification
from mtlkit.tasks.generation import Seq2SeqGeneration
from mtlkit.tasks.multi_label import MultiLabelClassification
from mtlkit.tasks.regression import Regression
from mtlkit.tasks.sequence_classification import SequenceClassification
from mtlkit.tasks.token_classification import TokenClassification

__all__ = [
    "IGNORE_INDEX",
    "DialogueClassification",
    "MultiLabelClassification",
    "Regression",
    "Seq2SeqGeneration",
    "SequenceClassification",
    "Task",
    "TokenClassification",
]
