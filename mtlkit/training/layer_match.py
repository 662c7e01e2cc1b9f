"""Intermediate-layer distillation: a student's hidden states and attention maps matched to a
teacher's, layer by layer (TextBrewer's "intermediate matches", Yang et al. 2020, "TextBrewer: An
Open-Source Knowledge Distillation Toolkit for Natural Language Processing").

Layers are numbered as Hugging Face numbers ``hidden_states``: ``0`` is the embeddings' output and
``i`` the output of encoder layer ``i`` (1-based); an attention map ``i`` is layer ``i``'s
self-attention probabilities. Every loss averages over real tokens only (the attention mask).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ConfigError

MatchLoss = Literal["hidden_mse", "hidden_cosine", "attention_mse", "attention_kl"]


@dataclass
class LayerMatch:
    """One matched pair of layers.

    Args:
        student: The student's layer (``0``: embeddings, ``i``: layer ``i``'s output).
        teacher: The teacher's layer it learns from.
        loss: ``hidden_mse`` / ``hidden_cosine`` on the layers' token states (a learned linear
            projection maps the student's width to the teacher's when they differ), or
            ``attention_mse`` / ``attention_kl`` on the layers' attention probabilities (same
            number of heads; ``attention_kl`` is MiniLM's KL(teacher || student), Wang et al.
            2020).
        weight: Multiplier of this term in the training loss.
    """

    student: int
    teacher: int
    loss: MatchLoss = "hidden_mse"
    weight: float = 1.0

    @property
    def on_attention(self) -> bool:
        return self.loss.startswith("attention")

    @property
    def name(self) -> str:
        return f"{self.loss}_{self.student}_{self.teacher}"


def hidden_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean squared difference per real token and dimension (TextBrewer's ``hidden_mse`` with a
    mask): ``sum_{real t} ||s_t - h_t||^2 / (n_real * dim)``."""
    m = mask.to(student.dtype).unsqueeze(-1)
    squared = ((student.float() - teacher.float()) ** 2 * m).sum()
    return squared / (m.sum().clamp(min=1.0) * student.shape[-1])


def hidden_cosine(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """``1 - cos(s_t, h_t)`` averaged over real tokens (TextBrewer's ``cos`` loss)."""
    m = mask.to(torch.float32)
    distance = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    return (distance * m).sum() / m.sum().clamp(min=1.0)


def _query_key_mask(attention: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    m = mask.to(torch.float32)
    rows = m[:, None, :, None].expand(attention.shape[:3] + (1,))  # [batch, heads, query, 1]
    return rows, m[:, None, None, :]  # and keys: [batch, 1, 1, key]


def attention_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean squared difference of attention probabilities over heads, real queries and real
    keys."""
    rows, keys = _query_key_mask(student, mask)
    weights = rows * keys  # 1 for (head, real query, real key)
    squared = ((student.float() - teacher.float()) ** 2 * weights).sum()
    return squared / weights.expand_as(student).sum().clamp(min=1.0)


def attention_kl(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """``KL(teacher || student)`` of each real query's attention distribution, averaged over
    heads and real queries (MiniLM, Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation
    for Task-Agnostic Compression of Pre-Trained Transformers")."""
    rows, keys = _query_key_mask(student, mask)
    t, s = teacher.float(), student.float()
    terms = torch.where(t > 0, t * (t.clamp(min=1e-30).log() - s.clamp(min=1e-30).log()), 0.0)
    per_query = (terms * keys).sum(-1, keepdim=True)
    return (per_query * rows).sum() / rows.sum().clamp(min=1.0)


LOSSES = {
    "hidden_mse": hidden_mse,
    "hidden_cosine": hidden_cosine,
    "attention_mse": attention_mse,
    "attention_kl": attention_kl,
}


@dataclass
class Captured:
    """What one forward pass of an encoder showed: token states and attention maps by layer,
    and the attention mask of the (last) encoder call."""

    hidden: dict[int, Tensor] = field(default_factory=dict)
    attention: dict[int, Tensor] = field(default_factory=dict)
    mask: Tensor | None = None


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple | list) else output


@contextmanager
def capture(encoder: nn.Module, hidden: set[int], attention: set[int]) -> Iterator[Captured]:
    """Records ``encoder``'s token states (``hidden``) and attention probabilities
    (``attention``) of the given layers during the forward passes run inside the block.

    ``encoder`` is an :class:`~mtlkit.model.encoder.HFEncoder` (its ``embeddings`` and
    ``layers``); attention maps need eager attention (set by :func:`check_layers`).
    """
    seen = Captured()
    layers = encoder.layers
    handles = [
        encoder.register_forward_pre_hook(
            lambda _m, args, kwargs: setattr(
                seen, "mask", kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            ),
            with_kwargs=True,
        )
    ]
    for index in hidden:
        module = encoder.embeddings if index == 0 else layers[index - 1]
        handles.append(
            module.register_forward_hook(
                lambda _m, _a, out, i=index: seen.hidden.__setitem__(i, _first(out))
            )
        )
    for index in attention:
        for sub in layers[index - 1].modules():

            def keep(_m: nn.Module, _a: Any, out: Any, i: int = index) -> None:
                if (
                    i not in seen.attention
                    and isinstance(out, tuple)
                    and len(out) > 1
                    and torch.is_tensor(out[1])
                    and out[1].dim() == 4
                ):
                    seen.attention[i] = out[1]

            handles.append(sub.register_forward_hook(keep))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def check_layers(matches: list[LayerMatch], encoder: nn.Module, role: str) -> None:
    """The layers named by ``matches`` exist in ``encoder`` (the ``role`` side); switches it to
    eager attention when attention maps are matched (fused kernels return no probabilities).

    Raises:
        ConfigError: A layer the encoder does not have.
    """
    count = len(encoder.layers)
    for match in matches:
        index = getattr(match, role)
        low = 1 if match.on_attention else 0
        if not low <= index <= count:
            raise ConfigError(
                f"distillation match {match.name}: the {role} has layers {low}..{count} for "
                f"{'attention maps' if match.on_attention else 'hidden states'}, got {index}"
            )
    if any(m.on_attention for m in matches):
        encoder.model.set_attn_implementation("eager")


def match_loss(
    match: LayerMatch,
    student: Captured,
    teacher: Captured,
    projection: nn.Module | None = None,
) -> Tensor:
    """One match's loss between a student's and a teacher's captured pass over the same inputs."""
    mask = student.mask
    if mask is None:
        raise ConfigError("distillation matches need the encoder's attention mask")
    if match.on_attention:
        s, t = student.attention[match.student], teacher.attention[match.teacher]
        if s.shape != t.shape:
            raise ConfigError(
                f"distillation match {match.name}: attention maps of shape {tuple(s.shape)} "
                f"(student) and {tuple(t.shape)} (teacher): the number of heads must agree"
            )
    else:
        s, t = student.hidden[match.student], teacher.hidden[match.teacher]
        if projection is not None:
            s = projection(s)
    return LOSSES[match.loss](s, t.detach(), mask)
