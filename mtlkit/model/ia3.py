"""Per-task (IA)^3 through peft: learned rescaling vectors of keys, values and feed-forward."""

from __future__ import annotations

from typing import Any

from peft import IA3Config

from mtlkit.model.adapters import InjectedAdapterEncoder

#: The paper's placement on BERT-like models: the attention keys and values, and the
#: feed-forward's inner activations (the input of its output projection ``output.dense``; peft's
#: own default, the suffix ``output.dense``, would also rescale the attention's output).
_BERT_TARGETS = r".*\.layer\.\d+\.(attention\.self\.(key|value)|output\.dense)"
_BERT_FEEDFORWARD = r".*\.layer\.\d+\.output\.dense"
_BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


class IA3Encoder(InjectedAdapterEncoder):
    """Frozen pretrained encoder plus one (IA)^3 adapter per task (Liu et al. 2022, "Few-Shot
    Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning"), by peft.

    Each task learns vectors ``l_k``, ``l_v`` and ``l_ff`` that rescale the attention keys and
    values and the feed-forward's inner activations; a new adapter is all ones, i.e. the frozen
    model.

    Args:
        name_or_path: See :class:`HFEncoder`.
        target_modules: Linear layers to rescale: names or one regular expression (peft's
            ``target_modules``). Default: the paper's ``key``, ``value`` and feed-forward output
            projection on BERT-like models, peft's choice for other model types.
        feedforward_modules: Which of them are feed-forward (their input is rescaled).
        adapters_from: A folder written by :meth:`save_adapters`; each task's adapter is loaded
            from it when created.
        **kwargs: The other arguments of :class:`HFEncoder` (``config``, ``keep_layers``, ...).
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        *,
        target_modules: list[str] | str | None = None,
        feedforward_modules: list[str] | str | None = None,
        adapters_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        def make_config() -> IA3Config:
            bert = getattr(self.model.config, "model_type", "") in _BERT_LIKE
            if target_modules is None and bert:
                return IA3Config(
                    target_modules=_BERT_TARGETS, feedforward_modules=_BERT_FEEDFORWARD
                )
            return IA3Config(
                target_modules=_listed(target_modules),
                feedforward_modules=_listed(feedforward_modules),
            )

        super().__init__(make_config, adapters_from, name_or_path=name_or_path, **kwargs)


def _listed(names: list[str] | str | None) -> list[str] | str | None:
    return list(names) if isinstance(names, list | tuple) else names
