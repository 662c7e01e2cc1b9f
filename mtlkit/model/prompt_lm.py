"""Generation on a decoder-only backbone: the shared causal LM continues a prompt.

A :class:`~mtlkit.tasks.Seq2SeqGeneration` task with ``decoder_only: true`` tokenizes each example
as one sequence, prompt then target, so the shared encoder (a
:class:`~mtlkit.model.causal_encoder.CausalLMEncoder`) reads it in the same single pass as every
other task's sub-batch; :class:`PromptLMHead` turns those token states into next-token logits with
the encoder's own LM head. Evaluation and prediction continue the prompts alone with the causal
LM's ``generate``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError

Tokens = dict[str, int]


def left_align(ids: Tensor, mask: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """The real tokens of each row moved to the right end (left padding, as ``generate`` on a
    decoder-only model needs), whatever side ``ids`` was padded on; columns that are padding in
    every row are dropped."""
    mask = mask.bool()
    width = int(mask.sum(-1).max()) if mask.numel() else 0
    out = ids.new_full((ids.shape[0], width), pad)
    out_mask = torch.zeros_like(out)
    for row in range(ids.shape[0]):
        real = ids[row][mask[row]]
        if real.numel():
            out[row, width - real.numel() :] = real
            out_mask[row, width - real.numel() :] = 1
    return out, out_mask


class PromptLMHead(nn.Module):
    """Prompt-then-target language modelling (Radford et al. 2019, "Language Models are
    Unsupervised Multitask Learners": tasks as text continuation) on the shared decoder-only
    encoder: the head of a decoder-only generation task. It owns no parameters: the logits come
    from the encoder's LM head, so the task trains the shared transformer and the LM head.

    Training (``forward``): the sub-batch's ``input_ids`` are prompt + target (without the
    target's last token) and its ``labels`` are already shifted by one (the label at position
    ``t`` is token ``t + 1``; ``-100`` over the prompt and padding), so the task's token
    cross-entropy is the loss on target tokens only.

    Generation (``generate``): the causal LM's ``generate`` (greedy, beam search, ...) continues
    the prompts (``prompt_ids`` / ``prompt_mask``, re-padded on the left) and the continuation is
    returned without them.

    Args:
        encoder: The shared encoder: a ``CausalLMEncoder`` (``causal_lm``, ``lm_logits``).
        tokens: ``eos_token_id`` and ``pad_token_id`` (``decoder_start_token_id`` is unused:
            the prompt comes first).

    Raises:
        ConfigError: The encoder has no LM head, or runs per task without a way to switch the
            causal LM to a task's parameters (``activate_task``, per-task LoRA has it).
    """

    #: The model calls ``head(token_states, sub_batch)``.
    reads_batch = True
    #: ``generate`` reads the prompts of the sub-batch, not the encoder's token states.
    generates_from_prompts = True

    def __init__(self, encoder: nn.Module, tokens: Tokens) -> None:
        super().__init__()
        if not hasattr(encoder, "lm_logits") or not hasattr(encoder, "causal_lm"):
            raise ConfigError(
                f"{type(encoder).__name__} has no language-model head: a decoder-only generation "
                "task needs mtlkit.model.CausalLMEncoder"
            )
        if getattr(encoder, "per_task", False) and not hasattr(encoder, "activate_task"):
            raise ConfigError(
                f"{type(encoder).__name__} runs per task but cannot switch the causal LM to a "
                "task's parameters; use CausalLMEncoder or CausalLMLoRAEncoder"
            )
        # Not a submodule: the encoder is saved once, under ``encoder.``.
        object.__setattr__(self, "encoder", encoder)
        self.tokens = {k: int(tokens[k]) for k in ("eos_token_id", "pad_token_id")}

    @property
    def max_positions(self) -> int | None:
        """The longest prompt + target the encoder's positions take."""
        return self.encoder.max_positions

    def forward(self, hidden: Tensor, batch: dict[str, Any]) -> Tensor:
        """Next-token logits ``[batch, length, vocab]`` of the prompt + target sequence.

        Args:
            hidden: The encoder's token states of the sub-batch.
            batch: The sub-batch (unused: the labels are aligned at tokenization).
        """
        del batch
        return self.encoder.lm_logits(hidden)

    @torch.no_grad()
    def generate(
        self, prompt_ids: Tensor, prompt_mask: Tensor, task: str | None = None, **settings: Any
    ) -> Tensor:
        """Generated ids ``[batch, length]`` after each prompt (padded with the pad id after the
        end token), by the causal LM's ``generate``.

        Args:
            prompt_ids: The prompts, padded on either side.
            prompt_mask: Their attention mask.
            task: The task generating: a per-task encoder (per-task LoRA) switches the causal
                LM to its parameters first.
            settings: ``generate`` arguments (``num_beams``, ``max_new_tokens``, ...).
        """
        if getattr(self.encoder, "per_task", False):
            if task is None:
                raise ConfigError("a per-task encoder generates for a named task; pass task=")
            self.encoder.activate_task(task)
        ids, mask = left_align(prompt_ids, prompt_mask, self.tokens["pad_token_id"])
        out = self.encoder.causal_lm.generate(
            input_ids=ids, attention_mask=mask, **self.tokens, **settings
        )
        return out[:, ids.shape[1] :]
