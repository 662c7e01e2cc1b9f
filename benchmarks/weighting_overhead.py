"""Time per training step of every weighting method relative to equal weighting.

    python -m benchmarks.weighting_overhead            # tiny encoder and the packaged MiniLM
    python -m benchmarks.weighting_overhead --quick    # tiny encoder only
    python -m benchmarks.weighting_overhead --gramian  # explicit, one-pass, autogram Gramians

Every config of ``configs/weighting/`` (gradient methods on the shared representation and on the
parameters, with both encoders; the parameters' 1.5x target at 8 tasks is issue 12's aim: the
Gramian-based methods also with ``gramian: one_pass``). Same batches for every method (mixed
batches: every task in every step), 2, 4 and 8 tasks; one step = forward, the method, backward,
optimizer step.
Methods are timed in interleaved rounds (a new method order every round); a method's overhead is
the median over rounds of its time divided by equal weighting's time in the same round, with a
95 % percentile bootstrap interval of that median (:func:`benchmarks.stats.paired_ratio`), and a
target counts as ``met`` only when the whole interval lies at or below it (``not met`` when it
lies above, ``inconclusive`` when it straddles it). Writes
``benchmarks/results/weighting_overhead.{json,md}`` with every round's times and the settings.

``--gramian`` compares, at 8 tasks on both encoders (``--quick``: the tiny one), ``--methods``
on the parameters with each way of taking the Gramian (``--modes``): ``explicit`` (T backward
passes, ``[T, P]`` gradients), ``one_pass`` (:mod:`mtlkit.weighting.one_pass`: every task's
gradient from one backward pass) and ``autogram`` (torchjd's engine): the Gramians' relative
difference from the explicit one, and each mode's time against equal weighting and against the
explicit Gramian, per round. Writes ``benchmarks/results/gramian_overhead.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks import stats
from benchmarks.common import require_clean, write_result
from mtlkit.data import InMemory
from mtlkit.model import HFEncoder
from mtlkit.paths import MINILM
from mtlkit.tasks import SequenceClassification
from mtlkit.testing import TINY_ENCODER
from mtlkit.testing.methods import MethodConfig, weighting_methods
from mtlkit.training import MultiTaskModule
from mtlkit.weighting import GradientWeighting, TaskGradients, Weighting
from mtlkit.weighting.autogram import AutogramGramian
from mtlkit.weighting.gradient import GramianAggregator, gram_matrix
from mtlkit.weighting.one_pass import OnePassGramian

TINY = TINY_ENCODER
#: Task names: the quickstart's first, which the shipped static and uncertainty configs name.
TASK_NAMES = ["trec", "sentiment", "bbc_topic", *(f"t{i}" for i in range(3, 8))]
#: Kinds that are not "loss" (loss-level methods) or "representation" / "parameters" (gradient
#: methods, one row each); the kind decides the target.
KINDS = {"equal": "baseline", "gradnorm": "gradnorm"}


def _methods() -> dict[str, tuple[str, Callable[[], Weighting]]]:
    """Row name -> (kind, factory): every config of ``configs/weighting/``, gradient methods once
    on the shared representation and once on the parameters (both encoders)."""
    rows: dict[str, tuple[str, Callable[[], Weighting]]] = {}
    for name, method in weighting_methods().items():
        if not method.is_gradient_method:
            rows[name] = (KINDS.get(name, "loss"), method.build)
            continue
        for works_on, suffix in (("representation", "rep"), ("parameters", "params")):
            build = functools.partial(method.build, works_on=works_on)
            rows[f"{name}/{suffix}"] = (works_on, build)
        if _gramian_based(method):
            build = functools.partial(method.build, works_on="parameters", gramian="one_pass")
            rows[f"{name}/params-1pass"] = ("parameters, one pass", build)
    order = ["baseline", "loss", "gradnorm", "representation", *GRAMIANS.values()]
    return dict(sorted(rows.items(), key=lambda row: (order.index(row[1][0]), row[0])))


def _gramian_based(method: MethodConfig) -> bool:
    probe = method.build() if method.is_gradient_method else None
    return isinstance(probe, GradientWeighting) and isinstance(probe.aggregator, GramianAggregator)


#: The ways of taking the Gramian on the parameters (``GradientWeighting(gramian=...)``), as the
#: kinds of their rows.
GRAMIANS = {"explicit": "parameters", "one_pass": "parameters, one pass", "autogram": "autogram"}
#: name -> (kind, factory).
METHODS = _methods()
#: Gradient methods' targets hold at 8 tasks (on the parameters: the aim of issue 12).
TARGETS = {
    "loss": 1.05,
    "gradnorm": 1.3,
    "representation": 1.5,
    **dict.fromkeys(GRAMIANS.values(), 1.5),
}


def make_batch(tasks: int, per_task: int, length: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    subs = {}
    for t in range(tasks):
        ids = torch.randint(5, vocab, (per_task, length), generator=g)
        subs[TASK_NAMES[t]] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (per_task,), generator=g),
        }
    return {"tasks": subs}


def build(encoder: Callable[[], HFEncoder], tasks: int, method: Weighting) -> MultiTaskModule:
    specs = [
        SequenceClassification(
            TASK_NAMES[t], InMemory({"train": {"text": ["x"], "label": [0]}}), num_labels=2
        )
        for t in range(tasks)
    ]
    torch.manual_seed(0)
    model = MultiTaskModule(encoder(), specs, weighting=method, lr_scheduler=None)
    model.log = lambda *a, **k: None  # timing the step, not Lightning's logging
    return model


def time_steps(model: MultiTaskModule, batch: dict, steps: int) -> float:
    optimizer = model.configure_optimizers()
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def measure(
    encoder, vocab, tasks, per_task, length, steps, rounds, methods
) -> dict[str, list[float]]:
    """Seconds per step of each method in each round (same batch, interleaved)."""
    batch = make_batch(tasks, per_task, length, vocab)
    models = {name: build(encoder, tasks, METHODS[name][1]()) for name in methods}
    return time_rounds(models, batch, steps, rounds)


def time_rounds(
    models: dict[str, MultiTaskModule], batch: dict, steps: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per step of each model in each round, after a 2-step warm-up (which also builds
    the one-pass and autogram hooks)."""
    for model in models.values():
        time_steps(model, batch, 2)
    times: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for r in range(rounds):
        # A new order every round, so no method always runs first (cold caches) or last.
        for i in torch.randperm(len(order), generator=torch.Generator().manual_seed(r)).tolist():
            times[order[i]].append(time_steps(models[order[i]], batch, steps))
    return times


def overhead(times: dict[str, list[float]], name: str) -> dict:
    """``name``'s per-round time over equal weighting's: median, interval, verdict."""
    return stats.paired_ratio(dict(enumerate(times[name])), dict(enumerate(times["equal"])))


def gramian_error(tasks: int, per_task: int, length: int, steps: int = 3) -> dict[str, float]:
    """Largest relative difference (max entry) between the one-pass (and the autogram) Gramian
    and the explicit one, on the tiny encoder over ``steps`` steps."""
    model = build(lambda: HFEncoder(config=dict(TINY)), tasks, METHODS["equal"][1]())
    subs = make_batch(tasks, per_task, length, TINY["vocab_size"])["tasks"]
    rows, params = model.model.encoder_rows(subs), list(model.encoder.parameters())
    one_pass, autogram = OnePassGramian(), AutogramGramian()
    worst = {"one_pass": 0.0, "autogram": 0.0}
    for step in range(steps + 1):
        losses = model.task_losses(model(subs), subs)
        grams = {
            "one_pass": one_pass.gramian(losses, model.encoder, rows),
            "autogram": autogram.gramian(torch.stack(list(losses.values())), model.encoder),
        }
        if step:  # step 0 builds the hooks
            explicit = gram_matrix(TaskGradients().of_parameters(losses, params))
            for mode, gram in grams.items():
                error = (gram.detach().double() - explicit).abs().max() / explicit.abs().max()
                worst[mode] = max(worst[mode], float(error))
    return worst


def gramian_rounds(setup: tuple, tasks: int, methods: list[str], modes: list[str]) -> dict:
    """Per-round step times of equal weighting and of each method on the parameters with each
    way of taking the Gramian (same batch, interleaved, a new order every round)."""
    _, encoder, vocab, per_task, length, steps, rounds = setup
    batch = make_batch(tasks, per_task, length, vocab)
    builders = {"equal": METHODS["equal"][1]}
    configs = weighting_methods()
    for name in methods:
        for mode in modes:
            builders[f"{name}/{mode}"] = functools.partial(
                configs[name].build, works_on="parameters", gramian=mode
            )
    models = {name: build(encoder, tasks, make()) for name, make in builders.items()}
    return time_rounds(models, batch, steps, rounds)


def gramian_report(setups: list[tuple], methods: list[str], modes: list[str], tasks: int = 8):
    """``results/gramian_overhead.{json,md}``: each way of taking the Gramian against equal
    weighting and against the explicit Gramian, per round, at ``tasks`` tasks."""
    errors = gramian_error(tasks, 8, 32)
    rows = []
    for setup in setups:
        times = gramian_rounds(setup, tasks, methods, modes)
        for name in times:
            if name == "equal":
                continue
            method, mode = name.rsplit("/", 1)
            vs_explicit = stats.paired_ratio(
                dict(enumerate(times[name])), dict(enumerate(times[f"{method}/explicit"]))
            )
            rows.append(
                {
                    "encoder": setup[0],
                    "tasks": tasks,
                    "method": f"{method}/params" if mode == "explicit" else f"{method}/{mode}",
                    "kind": GRAMIANS[mode],
                    "seconds": statistics.median(times[name]),
                    "rounds": times[name],
                    "equal_rounds": times["equal"],
                    "ratio": overhead(times, name).as_dict(),
                    "vs_explicit": vs_explicit.as_dict(),
                }
            )
    errors_text = ", ".join(f"{m} {e:.1e}" for m, e in errors.items())
    text = markdown(rows) + (
        f"\nGramian against the explicit one (tiny encoder, {tasks} tasks, 3 steps), largest "
        f"relative difference: {errors_text}. Time against the explicit Gramian, per round "
        "(median [95 % interval]): "
        + "; ".join(
            f"{r['encoder']} {r['method']} {r['vs_explicit']['mean']:.2f}x "
            f"[{r['vs_explicit']['low']:.2f}, {r['vs_explicit']['high']:.2f}]"
            for r in rows
            if r["kind"] != "parameters" and r["vs_explicit"]["low"] is not None
        )
        + ".\n"
    )
    payload = {
        "targets": TARGETS,
        "settings": {**_settings(setups), "tasks": tasks, "methods": methods, "modes": modes},
        "gramian_error": errors,
        "rows": rows,
        "note": "per-round seconds per step; mixed batches of per_task examples per task",
    }
    print(text)
    return write_result("gramian_overhead", payload, text)


def _settings(setups: list[tuple]) -> dict[str, dict[str, int]]:
    """Each setup's sizes, as recorded in the results."""
    return {
        label: {"vocab": vocab, "per_task": per_task, "length": length, "steps": steps,
                "rounds": rounds}
        for label, _, vocab, per_task, length, steps, rounds in setups
    }  # fmt: skip


def verdict(row: dict) -> str:
    """The target's verdict from the ratio's interval (empty where no target applies)."""
    target = TARGETS.get(row["kind"])
    gradient = row["kind"] in ("representation", *GRAMIANS.values())
    if target is None or (gradient and row["tasks"] != 8):
        return ""
    return stats.within(stats.Comparison(**row["ratio"]), target)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| encoder | tasks | method | kind | s/step (median) | vs equal [95 % interval] | target "
        "| met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = TARGETS.get(r["kind"])
        ratio = r["ratio"]
        interval = "" if ratio["low"] is None else f" [{ratio['low']:.2f}, {ratio['high']:.2f}]"
        lines.append(
            f"| {r['encoder']} | {r['tasks']} | {r['method']} | {r['kind']} "
            f"| {r['seconds']:.4f} | {ratio['mean']:.2f}x{interval} "
            f"| {'' if target is None else f'{target}x'} | {verdict(r)} |"
        )
    lines.append(
        "\nvs equal: median over interleaved rounds of the per-round time ratio to equal "
        "weighting, with a percentile bootstrap interval; `met` only when the interval lies at "
        "or below the target, `inconclusive` when it straddles it."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny encoder only")
    parser.add_argument(
        "--gramian",
        action="store_true",
        help="explicit, one-pass and autogram Gramians at 8 tasks (gramian_overhead.md)",
    )
    parser.add_argument("--methods", default="upgrad,mgda", help="methods of --gramian")
    parser.add_argument("--modes", default=",".join(GRAMIANS), help="Gramians of --gramian")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="run from uncommitted changes (not for README)"
    )
    args = parser.parse_args()
    require_clean(args.allow_dirty, "benchmarks.weighting_overhead")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    setups = [("tiny", lambda: HFEncoder(config=dict(TINY)), 155, 8, 32, 10, 9)]
    if not args.quick:
        setups.append(("MiniLM-L6", lambda: HFEncoder(MINILM), 30522, 4, 32, 2, 6))
    if args.gramian:
        gramian_report(setups, args.methods.split(","), args.modes.split(","))
        return
    rows = []
    for label, encoder, vocab, per_task, length, steps, rounds in setups:
        for tasks in (2, 4, 8):
            times = measure(encoder, vocab, tasks, per_task, length, steps, rounds, list(METHODS))
            for name, seconds in times.items():
                rows.append(
                    {
                        "encoder": label,
                        "tasks": tasks,
                        "method": name,
                        "kind": METHODS[name][0],
                        "seconds": statistics.median(seconds),
                        "rounds": seconds,
                        "ratio": overhead(times, name).as_dict(),
                    }
                )
            print(markdown([r for r in rows if r["encoder"] == label and r["tasks"] == tasks]))
    settings = {label: {**s, "tasks": [2, 4, 8]} for label, s in _settings(setups).items()}
    payload = {
        "targets": TARGETS,
        "settings": {**settings, "quick": args.quick, "torch_threads": torch.get_num_threads()},
        "rows": rows,
        "note": "per-round seconds per step; mixed batches of per_task examples per task",
    }
    path = write_result("weighting_overhead", payload, markdown(rows), for_readme=not args.quick)
    summary = markdown([r for r in rows if r["tasks"] == 8])  # the README shows 8 tasks
    (path.parent / "weighting_overhead_8tasks.md").write_text(summary)
    print(path)


if __name__ == "__main__":
    main()
