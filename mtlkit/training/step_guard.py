"""Step safety of multi-task training: non-finite losses and task weights (raise, or skip with
limits), and the post-step parameter check (non-finite or exploding parameters), each at one
device-to-host sync per step. Used by :class:`~mtlkit.training.MultiTaskModule`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from mtlkit.errors import ConfigError, MtlkitError

#: The skipped-step fraction limit applies from this many training steps on (1 of 4 is no trend).
MIN_STEPS_FOR_SKIP_FRACTION = 20


class NonFiniteError(MtlkitError, FloatingPointError):
    """Training produced NaN/inf (loss, task weights or parameters) or diverged."""


class StepGuard:
    """Decides, step by step, whether training may go on.

    Args:
        on_nonfinite_loss: ``raise`` or ``skip`` (single process only).
        max_consecutive_skips: With ``skip``: more skipped steps in a row stop the run.
        max_skipped_fraction: With ``skip``: more skipped steps than this fraction of the steps
            so far stop the run (from :data:`MIN_STEPS_FOR_SKIP_FRACTION` steps on).
        max_param_norm_growth: A step that multiplies the parameters' total norm by more than
            this stops the run (``None``: finiteness only).
    """

    def __init__(
        self,
        on_nonfinite_loss: Literal["raise", "skip"] = "raise",
        max_consecutive_skips: int = 3,
        max_skipped_fraction: float = 0.05,
        max_param_norm_growth: float | None = 10.0,
    ) -> None:
        if on_nonfinite_loss not in ("raise", "skip"):
            raise ConfigError(
                f"on_nonfinite_loss must be 'raise' or 'skip', got {on_nonfinite_loss!r}"
            )
        if max_consecutive_skips < 0 or not 0.0 <= max_skipped_fraction <= 1.0:
            raise ConfigError(
                "max_consecutive_skips must be >= 0 and max_skipped_fraction in [0, 1], got "
                f"{max_consecutive_skips} and {max_skipped_fraction}"
            )
        if max_param_norm_growth is not None and not max_param_norm_growth > 1.0:
            raise ConfigError(f"max_param_norm_growth must be > 1, got {max_param_norm_growth}")
        self.on_nonfinite_loss = on_nonfinite_loss
        self.max_consecutive_skips = max_consecutive_skips
        self.max_skipped_fraction = max_skipped_fraction
        self.max_param_norm_growth = max_param_norm_growth
        self.skipped: list[int] = []
        self.attempted = self.consecutive = 0
        self._norm: Tensor | None = None  # total parameter norm after the last step
        # The weights' non-finite flag and its message, checked with the parameters post-step.
        self._pending: tuple[Tensor, Callable[[], str]] | None = None

    # ------------------------------------------------------------ before the update
    def begin(self) -> None:
        self.attempted += 1

    def losses_finite(self, losses: dict[str, Tensor], step: int, distributed: bool) -> bool:
        """One sync per step (not one per task) on the common, finite path."""
        if bool(torch.isfinite(torch.stack([v.detach().float() for v in losses.values()])).all()):
            return True
        bad = [n for n, loss in losses.items() if not torch.isfinite(loss)]
        return self._skip_or_raise(
            f"non-finite loss for task(s) {bad} at step {step}; "
            "lower the learning rate or check the targets",
            step,
            distributed,
        )

    def weights_finite(self, combined: Any, step: int, distributed: bool, method: str) -> bool:
        """The weighting method's weights and combined loss must be finite. With ``raise`` the
        check joins the post-step parameter check (one sync for both); ``skip`` decides now."""
        values = [combined.loss.detach().float().reshape(1)]
        values += [
            torch.as_tensor(w).detach().float().reshape(-1) for w in combined.weights.values()
        ]
        flag = ~torch.isfinite(torch.cat([v.to(values[0].device) for v in values])).all()
        weights = {n: torch.as_tensor(w).detach() for n, w in combined.weights.items()}

        def message() -> str:
            named = {n: round(float(w), 6) for n, w in weights.items()}
            return (
                f"non-finite weighted loss at step {step}: {method} gave task weights {named} "
                f"and combined loss {float(combined.loss)}; check the weighting method's "
                "settings (e.g. StaticWeighting's weights)"
            )

        if self.on_nonfinite_loss == "skip" and not distributed:
            return not bool(flag) or self._skip_or_raise(message(), step, distributed)
        self._pending = (flag, message)
        return True

    def passed(self) -> None:
        """The step goes on to its update."""
        self.consecutive = 0

    def _skip_or_raise(self, message: str, step: int, distributed: bool) -> bool:
        """Raises, or counts a skipped step (and raises once skips pass their limits)."""
        if self.on_nonfinite_loss == "raise" or distributed:
            raise NonFiniteError(message)
        self.skipped.append(step)
        self.consecutive += 1
        if self.consecutive > self.max_consecutive_skips:
            raise NonFiniteError(
                f"{message}; {self.consecutive} steps in a row were skipped (more than "
                f"max_consecutive_skips={self.max_consecutive_skips}): the run diverged"
            )
        skipped, attempted = len(self.skipped), self.attempted
        if (
            attempted >= MIN_STEPS_FOR_SKIP_FRACTION
            and skipped > self.max_skipped_fraction * attempted
        ):
            raise NonFiniteError(
                f"{message}; {skipped} of {attempted} steps were skipped (more than "
                f"max_skipped_fraction={self.max_skipped_fraction}): the run diverged"
            )
        rank_zero_warn(message + " (step skipped)")
        return False

    # ------------------------------------------------------------- around the update
    def before_update(self, parameters: Callable[[], Iterable[nn.Parameter]]) -> None:
        if self._norm is None:
            self._norm = _total_norm(parameters())

    def after_update(
        self,
        parameters: Callable[[], Iterable[nn.Parameter]],
        step: int,
        reduce_sum: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """After the optimizer step, before anything (a checkpoint) reads the parameters:
        stops on non-finite weights or parameters, or a step that multiplied the parameters'
        norm. One device-to-host sync for all of it (plus one all-reduce across processes)."""
        before, after = self._norm, _total_norm(parameters())
        pending, self._pending = self._pending, None
        flags = [~torch.isfinite(after)]
        if self.max_param_norm_growth is not None and before is not None:
            flags.append(after > self.max_param_norm_growth * before.clamp(min=1.0))
        flags.append(pending[0] if pending is not None else torch.zeros((), dtype=torch.bool))
        state = torch.stack([f.to(after.device) for f in flags]).float()
        if reduce_sum is not None:
            state = reduce_sum(state)
        bad = [bool(v > 0) for v in state.tolist()]
        self._norm = after
        if not any(bad):
            return
        new = float(after)
        if bad[-1] and pending is not None:
            message = pending[1]()
        elif bad[0]:
            message = f"the parameters became non-finite in the optimizer step at step {step}"
        else:
            old = float(before) if before is not None else 0.0
            message = (
                f"the optimizer step at step {step} multiplied the parameters' norm by "
                f"{new / max(old, 1.0):.3g} ({old:.4g} -> {new:.4g}; limit "
                f"max_param_norm_growth={self.max_param_norm_growth}): training diverged"
            )
        raise NonFiniteError(
            f"{message}; lower the learning rate (or clip gradients: trainer.gradient_clip_val). "
            "Training stopped before this step's parameters were checkpointed"
        )

    def summary(self) -> str | None:
        """The skipped steps, for the end of training (``None`` when none was skipped)."""
        if not self.skipped:
            return None
        shown = self.skipped[:20]
        return (
            f"{len(self.skipped)} of {self.attempted} training steps were skipped for "
            f"non-finite losses (on_nonfinite_loss: skip), at step(s) {shown}"
            + (" ..." if len(self.skipped) > len(shown) else "")
        )


def _total_norm(parameters: Iterable[nn.Parameter]) -> Tensor:
    params = [p.detach() for p in parameters if p.is_floating_point()]
    return torch.nn.utils.get_total_norm(params, norm_type=2.0).float()
