"""The model: a plain multi-task ``nn.Module`` (encoder, pooling, heads, one forward, output
decoding) and the encoders it is built from.

Nothing here imports Lightning (a served model needs torch and transformers only); the
LightningModule that trains the model is :class:`mtlkit.training.MultiTaskModule`.
"""

from mtlkit.model.causal_encoder import CausalLMEncoder
from mtlkit.model.decoders import WarmStartDecoder
from mtlkit.model.encoder import HFEncoder
from mtlkit.model.multitask import MultiTaskModel
from mtlkit.model.seq2seq import Seq2SeqBackbone

__all__ = ["CausalLMEncoder", "HFEncoder", "MultiTaskModel", "Seq2SeqBackbone", "WarmStartDecoder"]
