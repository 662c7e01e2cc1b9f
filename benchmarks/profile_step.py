"""Where a training step's time goes: cProfile shares, mtlkit (Lightning) against the plain loop.

    python -m benchmarks.profile_step                 # MiniLM, 8 steps
    python -m benchmarks.profile_step --encoder tiny --steps 40

The two sides of :mod:`benchmarks.throughput` (``plain`` and ``mtlkit``: same config, weights,
batches and optimizer) run under :mod:`cProfile`; each step's time is split into the encoder's
forward, backward, the optimizer kernels and what is left (the loop, and for mtlkit its
``training_step`` around the encoder, its logging, its post-step parameter check, Lightning).
Shares, not timings: they hold on a loaded machine, where wall-clock differences of a few percent
do not. cProfile inflates Python-heavy parts (logging, Lightning's loop) several times over, so
their shares are upper bounds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import throughput
from benchmarks._timing import LightningSide, PlainLoop
from mtlkit.tasks import Regression

Key = tuple[str, int, str]


def _cum(stats: pstats.Stats, match: Callable[[Key], bool], column: int = 3) -> float:
    return sum(v[column] for k, v in stats.stats.items() if match(k))  # type: ignore[attr-defined]


def _fn(path: str, name: str) -> Callable[[Key], bool]:
    return lambda k: k[0].endswith(path) and k[2] == name


def categories(stats: pstats.Stats, mtlkit: bool) -> dict[str, float]:
    """Seconds per category (cumulative times of the functions that mark each)."""
    total = _cum(stats, lambda k: True, column=2)
    table = stats.stats  # type: ignore[attr-defined]
    # The outermost BERT forward (BertModel) holds every other.
    forwards = [v[3] for k, v in table.items() if _fn("modeling_bert.py", "forward")(k)]
    encoder = max(forwards, default=0.0)
    out = {
        "encoder forward": encoder,
        "backward": _cum(stats, lambda k: "run_backward" in k[2], column=2),
        "optimizer kernels": _cum(stats, _fn("torch/optim/adam.py", "adam")),
        "zero_grad": _cum(stats, _fn("torch/optim/optimizer.py", "zero_grad")),
    }
    if mtlkit:
        step = _cum(stats, _fn("mtlkit/model/module.py", "training_step"))
        out["training_step around the encoder"] = step - encoder
        out["  of which self.log"] = _cum(stats, _fn("lightning/pytorch/core/module.py", "log"))
        out["post-step parameter check"] = _cum(
            stats, _fn("mtlkit/training/step_guard.py", "after_update")
        )
    counted = sum(v for k, v in out.items() if not k.startswith(" "))
    out["loop, hooks and the rest"] = total - counted
    return {"total": total, **out}


def profile(encoder: str = "minilm", steps: int = 8, batch_size: int = 16) -> dict[str, Any]:
    """``{side: {category: seconds per step}}`` for the plain loop and mtlkit."""
    dm, like = throughput.quickstart({"batch_size": batch_size, "max_train_examples": 400})
    _, epoch = throughput.padding_share(dm)
    batches = epoch[:steps]
    model, plain = throughput.build_models(encoder, like)
    scales = {t.name: t.target_scale for t in like.tasks.values() if isinstance(t, Regression)}
    sides = {
        "plain": PlainLoop(plain, scales, like.optimizer_fn),
        "mtlkit": LightningSide(model, tempfile.mkdtemp(prefix="mtlkit-profile-")),
    }
    result = {}
    for name, side in sides.items():
        side.run(batches[:2], 1)  # warm-up: first-call costs stay out of the profile
        profiler = cProfile.Profile()
        profiler.enable()
        side.run(batches, 0)
        profiler.disable()
        seconds = categories(pstats.Stats(profiler), mtlkit=name == "mtlkit")
        result[name] = {k: v / steps for k, v in seconds.items()}
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["| side | part | ms/step (profiled) | share |", "|---|---|---|---|"]
    for side, parts in result.items():
        total = parts["total"]
        for part, seconds in parts.items():
            if part != "total":
                lines.append(f"| {side} | {part} | {1000 * seconds:.2f} | {seconds / total:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--encoder", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(markdown(profile(args.encoder, args.steps)))


if __name__ == "__main__":
    main()
