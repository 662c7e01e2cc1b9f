"""The model: a plain multi-task ``nn.Module`` and the LightningModule that trains it.

``mtlkit.model.encoder``, ``.multitask``, ``.outputs``, ``.pooling`` and ``.source`` import
without Lightning (a served model needs torch and transformers only); the training module is
imported when it is asked for (``mtlkit.model.MultiTaskModule``, as configs name it).
"""

from typing import Any

from mtlkit.model.decoders import WarmStartDecoder
from mtlkit.model.encoder import HFEncoder
from mtlkit.model.multitask import MultiTaskModel
from mtlkit.model.seq2seq import Seq2SeqBackbone

__all__ = ["HFEncoder", "MultiTaskModel", "MultiTaskModule", "Seq2SeqBackbone", "WarmStartDecoder"]


def __getattr__(name: str) -> Any:
    # Not a cycle breaker: importing the package (for the plain model) must not load Lightning.
    if name == "MultiTaskModule":
        from mtlkit.model.module import MultiTaskModule

        return MultiTaskModule
    raise AttributeError(f"module 'mtlkit.model' has no attribute {name!r}")
