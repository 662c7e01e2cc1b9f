"""Training throughput of mtlkit (Lightning) against a hand-written PyTorch loop, and padding.

    python -m benchmarks.throughput            # CPU suite: MiniLM, then a tiny BERT
    python -m benchmarks.throughput --smoke    # seconds: the tiny BERT only, few steps
    python -m benchmarks.throughput --full     # bigger batches and more steps (for a GPU)

Everything is read from the shipped ``configs/quickstart.yaml``, built as ``mtlkit fit`` builds
it: the data module (tasks, sampling, batch mode, ``group_by_length``, tokenizer; this mode's batch
size, one whole epoch, seed 0), the pooling, dropout and optimizer (``mtlkit.optim.AdamW``, its
fused kernel). The benchmark's own choices: a constant learning rate, one rate for encoder and
heads (``lr_scheduler`` and ``head_lr`` off, so the plain loop can match them), and the tiny
encoder. Both sides train the same encoder (same weights), the same pooling + linear heads, with
the same optimizer, on the same collated batches: the first batches of the training epoch. Every
side checks that it trained on exactly those batches. Sides:

* ``plain``: a hand-written loop (``AutoModel`` forward, pooling, head, loss, backward,
  ``optimizer.step()``, ``zero_grad``).
* ``module_only``: ``MultiTaskModule.training_step`` in the same hand-written loop (its own
  optimizer parameter groups; ``self.log`` muted, as it needs a Trainer).
* ``mtlkit_nolog``: ``MultiTaskModule`` under ``lightning.Trainer`` (no logger, progress bar or
  checkpoints), ``self.log`` muted. ``mtlkit``: the same with ``self.log``.
  ``mtlkit_tensorboard``: plus TensorBoard every 10 steps. ``mtlkit_logged``: plus Lightning's
  default progress bar too, as the quickstart config.

Per step: wall-clock and CPU time from ``on_train_batch_start`` to ``on_train_batch_end`` (the
plain loop: around its step), and the loop's wall time per step (fetching the batch and
Lightning's bookkeeping included). Sides run in interleaved rounds (a new order every round),
warm-up steps skipped. Times: the fastest round (least disturbed by other load; the median is
kept too). Ratios to the plain loop: of the fastest rounds, and "paired", the median over rounds
of the ratio within a round (the sides of a round run back to back, so slow drifts of the load
cancel); the headline is the paired loop-time ratio with a 95 % percentile bootstrap interval
of that median (:func:`benchmarks.stats.paired_ratio`), and the target (1.05) counts as met only
when the whole interval lies at or below it. The tiny BERT makes the
fixed per-step cost of the framework visible (on a GPU the encoder's step is short too). The
padding part needs no model: the share of real tokens over one epoch of the training sampler
with and without ``group_by_length``.
Writes ``benchmarks/results/throughput.{json,md}``.

Where mtlkit's extra time per step goes (profiles, not timings: shares hold on a loaded machine;
2-core CPU, one thread, torch 2.13, batch 16, issue 12; reproduce with
``python -m benchmarks.profile_step``):

* The optimizer. torch's default AdamW on CPU is the single-tensor loop; its ``step`` took 24.6%
  of the tiny encoder's step (``module_only`` loop, torch.profiler, self-CPU of all ops) and
  10.7% of MiniLM's; ``foreach=True`` 22.8% / 8.2% (CPU multi-tensor ops still loop per tensor);
  the fused kernel 6.8% / 1.4%. Hence ``mtlkit.optim.AdamW`` (fused where the device has it) as
  the default, in every shipped config, and on both sides here.
* MiniLM, cProfile of 8 steps, fused optimizer: forward 39.7% (plain 39.9%), backward 55.2%
  (57.2%), optimizer kernels 2.0% (2.1%): the same kernels, with the same counts per step (torch
  .profiler). mtlkit's own additions: the post-step parameter check (``max_param_norm_growth``:
  one norm per parameter tensor, 108 ``linalg_vector_norm`` calls and one host sync) 0.8%;
  ``training_step`` around the encoder 0.7%, of which ``self.log`` 0.4%; Lightning's loop and
  hooks 1.6% against the plain loop's 0.8%; one more fused-kernel launch (two parameter groups,
  encoder and heads). In all about 2-3% of a MiniLM step: the profile does not show the 60-90 ms
  (1.12-1.20x) gap issue 12 measured on an idle machine; re-measure with this file there.
* Tiny encoder (where the framework's fixed cost shows): ``self.log`` 10% of mtlkit's step (3
  calls per step in homogeneous mode, 2 per task + 1 in mixed mode; each spends most of its time
  in Lightning's ``_ResultMetric.to(device)``, run on every call), the parameter check 5-6%,
  Lightning's loop ~13% against the plain loop's ~12%. cProfile inflates these Python-heavy parts
  several times over, so they are upper bounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from benchmarks import stats
from benchmarks._timing import Batch, LightningSide, ModuleLoop, PlainLoop, fingerprint
from benchmarks.common import CONFIGS, require_clean, write_result
from mtlkit.cli import cli_main
from mtlkit.data import MultiTaskDataModule
from mtlkit.data.batching import count_tokens
from mtlkit.model import HFEncoder
from mtlkit.paths import MINILM, resolve_path
from mtlkit.tasks import Regression
from mtlkit.tasks.base import Task
from mtlkit.testing.trainer import quiet_cli_args
from mtlkit.training import MultiTaskModule

#: Each side adds one layer to the one before: the difference between two is that layer's cost.
ALL_SIDES = [
    "plain",
    "module_only",
    "mtlkit_nolog",
    "mtlkit",
    "mtlkit_tensorboard",
    "mtlkit_logged",
]
SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {
        "batch_size": 8,
        "max_train_examples": 200,
        "runs": [{"encoder": "tiny", "warmup": 2, "steps": 4, "rounds": 2, "sides": ALL_SIDES}],
    },
    "default": {
        "batch_size": 16,
        "max_train_examples": None,
        "runs": [
            # 6 rounds left the paired ratio's interval at [0.968, 1.082] (a0cdf5e): too wide
            # to say whether the 1.05x target is met. 24 rounds take about 5 minutes.
            {"encoder": "minilm", "warmup": 2, "steps": 8, "rounds": 24,
             "sides": ["plain", "mtlkit", "mtlkit_logged"]},
            {"encoder": "tiny", "warmup": 3, "steps": 40, "rounds": 7, "sides": ALL_SIDES},
        ],
    },
    "full": {
        "batch_size": 32,
        "max_train_examples": None,
        "runs": [
            {"encoder": "minilm", "warmup": 10, "steps": 100, "rounds": 5, "sides": ALL_SIDES},
            {"encoder": "tiny", "warmup": 10, "steps": 100, "rounds": 5, "sides": ALL_SIDES},
        ],
    },
}  # fmt: skip
#: A random BERT of the size transformers' own tests use, on MiniLM's vocabulary.
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
}
QUICKSTART = CONFIGS / "quickstart.yaml"
TARGET = 1.05


def quickstart(cfg: dict[str, Any]) -> tuple[MultiTaskDataModule, MultiTaskModule]:
    """The data module (set up for fit) and model of ``configs/quickstart.yaml`` as ``mtlkit fit``
    builds them, quiet, with this mode's batch size and training cap, one whole epoch (no
    ``steps_per_epoch``), seed 0, a constant learning rate and one rate for encoder and heads."""
    cap = cfg["max_train_examples"]
    cli = cli_main(
        [
            "--config",
            str(QUICKSTART),
            *quiet_cli_args(),
            "--trainer.callbacks=[]",
            f"--data.init_args.batch_size={cfg['batch_size']}",
            f"--data.init_args.max_train_examples={'null' if cap is None else cap}",
            "--data.init_args.steps_per_epoch=null",
            "--data.init_args.seed=0",
            "--model.init_args.lr_scheduler=null",
            "--model.init_args.head_lr=null",
        ],
        run=False,
    )
    cli.datamodule.setup("fit")
    return cli.datamodule, cli.model


def ungrouped(like: MultiTaskDataModule) -> MultiTaskDataModule:
    """``like`` without ``group_by_length``, reusing its tasks and tokenized splits (no reload)."""
    dm = MultiTaskDataModule(
        like.tasks,
        like.tokenizer_path,
        sampling=like.sampling,
        batch_mode=like.batch_mode,
        batch_size=like.batch_size,
        group_by_length=False,
        max_train_examples=like.max_train_examples,
        seed=like.seed,
    )
    dm.tokenizer, dm.splits = like.tokenizer, like.splits
    dm.setup("fit")
    return dm


def padding_share(dm: MultiTaskDataModule) -> tuple[dict[str, Any], list[Batch]]:
    """Real-token shares over one epoch of ``dm``'s training sampler, and the epoch's batches."""
    batches, shares, per_task = [], [], {}
    for batch in dm.train_dataloader():
        real, total = count_tokens(batch)
        shares.append(real / total)
        for name in batch["tasks"]:  # one task per batch (homogeneous)
            counts = per_task.setdefault(name, [0, 0])
            counts[0], counts[1] = counts[0] + real, counts[1] + total
        batches.append(batch)
    real, total = (sum(c[i] for c in per_task.values()) for i in (0, 1))
    stats = {
        "batches": len(shares),
        "mean_batch_share": statistics.fmean(shares),
        "overall_share": real / total,
        "per_task": {n: c[0] / c[1] for n, c in sorted(per_task.items())},
    }
    return stats, batches


def build_models(encoder: str, like: MultiTaskModule) -> tuple[MultiTaskModule, nn.Module]:
    """A fresh mtlkit module configured as ``like`` (the config's) and the plain ``AutoModel`` +
    heads, with identical weights; ``encoder``: ``minilm`` (the config's) or ``tiny``."""
    if like.pooling != "mean":
        raise ValueError(f"the plain loop pools by the mean, the config by {like.pooling!r}")
    torch.manual_seed(0)
    if encoder == "tiny":
        config = AutoConfig.from_pretrained(resolve_path(MINILM), **TINY)
        mtl_encoder = HFEncoder(config=config.to_dict())
        plain = AutoModel.from_config(config, add_pooling_layer=False)
    else:
        mtl_encoder = HFEncoder(MINILM)
        plain = AutoModel.from_pretrained(resolve_path(MINILM), add_pooling_layer=False)
    tasks = list(like.tasks.values())
    model = MultiTaskModule(
        mtl_encoder,
        tasks,
        pooling=like.pooling,
        dropout=like.dropout,
        optimizer=like.optimizer_fn,
        lr_scheduler=None,
    )
    plain.load_state_dict(model.encoder.model.state_dict())
    heads = nn.ModuleDict()
    for task in tasks:
        out = 1 if isinstance(task, Regression) else task.num_labels
        heads[task.name] = nn.Sequential(
            nn.Dropout(like.dropout), nn.Linear(plain.config.hidden_size, out)
        )
        heads[task.name][1].load_state_dict(model.heads[task.name][1].state_dict())
    return model, nn.ModuleDict({"encoder": plain, "heads": heads})


def measure(run: dict[str, Any], batches: list[Batch], like: MultiTaskModule) -> dict[str, Any]:
    """Interleaved rounds of every side; per side and round: mean step, CPU and loop times."""
    model, plain = build_models(run["encoder"], like)
    tasks: list[Task] = list(like.tasks.values())
    scales = {t.name: t.target_scale for t in tasks if isinstance(t, Regression)}
    logdir = tempfile.mkdtemp(prefix="mtlkit-throughput-")
    sides = {
        "plain": PlainLoop(plain, scales, like.optimizer_fn),
        "module_only": ModuleLoop(model),
        "mtlkit_nolog": LightningSide(model, logdir, mute_log=True),
        "mtlkit": LightningSide(model, logdir),
        "mtlkit_tensorboard": LightningSide(model, logdir, tensorboard=True),
        "mtlkit_logged": LightningSide(model, logdir, tensorboard=True, progress_bar=True),
    }
    names = run["sides"]
    expected = [fingerprint(b) for b in batches]
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(run["rounds"]):
        # Rotate the order so that no side always runs first (cold caches) or last.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out = sides[name].run(batches, run["warmup"])
            if out.pop("fingerprints") != expected:
                raise RuntimeError(f"{name} did not train on the expected batches, in order")
            rounds[name].append(out)
    return summarise(rounds, batches[run["warmup"] :])


def summarise(rounds: dict[str, list[dict[str, float]]], measured: list[Batch]) -> dict[str, Any]:
    real = sum(count_tokens(b)[0] for b in measured) / len(measured)  # per step
    sides: dict[str, Any] = {}
    for name, values in rounds.items():
        side: dict[str, Any] = {"rounds": values}
        for kind in ("step", "cpu", "loop"):
            seconds = [v[kind] for v in values]
            fastest, median = min(seconds), statistics.median(seconds)
            side[kind] = {
                "fastest_s": fastest,
                "median_s": median,
                "spread": max(seconds) / fastest - 1,  # round-to-round noise of this machine
                "steps_per_s": 1 / fastest,
                "tokens_per_s": real / fastest,
            }
        sides[name] = side
    base = sides["plain"]
    for side in sides.values():
        side["ratio"] = {
            f"{kind}_{est}": side[kind][f"{est}_s"] / base[kind][f"{est}_s"]
            for kind in ("step", "cpu", "loop")
            for est in ("fastest", "median")
        }
        # Within a round the sides run back to back: the median of per-round ratios cancels
        # the slow drift of other load on the machine that separates rounds.
        for kind in ("step", "cpu", "loop"):
            pairs = zip(side["rounds"], base["rounds"], strict=True)
            side["ratio"][f"{kind}_paired"] = statistics.median(a[kind] / b[kind] for a, b in pairs)
        side["overhead_ms"] = {
            kind: 1000 * (side[kind]["fastest_s"] - base[kind]["fastest_s"])
            for kind in ("step", "cpu", "loop")
        }
    # What each layer adds per step (loop time: everything a step costs, fetching included).
    names = list(sides)
    layers = {
        f"{b} - {a}": 1000 * (sides[b]["loop"]["fastest_s"] - sides[a]["loop"]["fastest_s"])
        for a, b in zip(names, names[1:], strict=False)
    }
    return {"sides": sides, "real_tokens_per_step": real, "layer_ms": layers}


def loop_ratio(sides: dict[str, Any], side: str = "mtlkit") -> stats.Comparison:
    """``side``'s loop time over the plain loop's, round by round: the median with its
    bootstrap interval."""
    ours = {r: v["loop"] for r, v in enumerate(sides[side]["rounds"])}
    plain = {r: v["loop"] for r, v in enumerate(sides["plain"]["rounds"])}
    return stats.paired_ratio(ours, plain)


def markdown(payload: dict[str, Any]) -> str:
    head = payload["headline"]
    low, high = head["loop_time_ratio_interval"]
    interval = "" if low is None else f" [95 % interval {low:.3f}, {high:.3f}]"
    lines = [
        f"Headline ({head['encoder']}): mtlkit's loop time per step / the plain loop's, median "
        f"over {head['rounds']} paired rounds: {head['loop_time_ratio']:.3f}x{interval}; "
        f"target {head['target_ratio']}x: **{head['target']}**.\n"
    ]
    for run in payload["settings"]["runs"]:
        result = payload["runs"][run["encoder"]]
        lines += [
            f"Encoder `{run['encoder']}`, batch {payload['settings']['batch_size']}, "
            f"{run['steps']} timed steps after {run['warmup']} warm-up, fastest of "
            f"{run['rounds']} interleaved rounds; {result['real_tokens_per_step']:.0f} real "
            "tokens per step; the plain loop's slowest round took "
            f"{100 * result['sides']['plain']['step']['spread']:.0f}% longer than its fastest "
            "(the noise of this machine).\n",
            "| loop | step ms | CPU ms | steps/s | tokens/s | vs plain | loop ms/step "
            "| loop vs plain | loop vs plain, paired |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, s in result["sides"].items():
            step, loop = s["step"], s["loop"]
            lines.append(
                f"| {name} | {1000 * step['fastest_s']:.1f} | {1000 * s['cpu']['fastest_s']:.1f} "
                f"| {step['steps_per_s']:.2f} | {step['tokens_per_s']:.0f} "
                f"| {s['ratio']['step_fastest']:.3f}x | {1000 * loop['fastest_s']:.1f} "
                f"| {s['ratio']['loop_fastest']:.3f}x | {s['ratio']['loop_paired']:.3f}x |"
            )
        costs = ", ".join(f"{k}: {v:+.1f} ms" for k, v in result["layer_ms"].items())
        lines += ["", f"Per-step cost of each layer (loop time): {costs}.", ""]
    lines += [
        "| group_by_length | batches | real tokens (mean per batch) | real tokens (all) |",
        "|---|---|---|---|",
    ]
    for key, p in payload["padding"].items():
        lines.append(
            f"| {key == 'grouped'} | {p['batches']} | {p['mean_batch_share']:.3f} "
            f"| {p['overall_share']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run(mode: str = "default") -> dict[str, Any]:
    """Runs the benchmark in ``mode`` (``smoke``, ``default`` or ``full``); returns the payload."""
    cfg = SETTINGS[mode]
    start = time.perf_counter()
    grouped, config_model = quickstart(cfg)
    padding = {}
    padding["grouped"], epoch = padding_share(grouped)
    padding["ungrouped"], _ = padding_share(ungrouped(grouped))
    results = {}
    for spec in cfg["runs"]:
        # The first steps of a real training run, replayed by every side in every round.
        batches = epoch[: spec["warmup"] + spec["steps"]]
        results[spec["encoder"]] = measure(spec, batches, config_model)
    head = cfg["runs"][0]["encoder"]
    ratio = results[head]["sides"]["mtlkit"]["ratio"]
    headline = loop_ratio(results[head]["sides"])
    optimizer = config_model.optimizer_fn([nn.Parameter(torch.zeros(1))])  # its settings
    payload = {
        "mode": mode,
        "settings": {
            **cfg,
            "config": str(QUICKSTART.relative_to(CONFIGS.parent)),
            "tasks": grouped.task_names,
            "sampling": repr(grouped.sampling),
            "batch_mode": grouped.batch_mode,
            "group_by_length": grouped.group_by_length,
            "seed": grouped.seed,
            "optimizer": {
                "class": type(optimizer).__qualname__,
                **{k: optimizer.defaults[k] for k in ("lr", "weight_decay", "fused", "foreach")},
                "schedule": "constant",
            },
            "dropout": config_model.dropout,
            "pooling": config_model.pooling,
            "tiny_encoder": TINY,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_threads": torch.get_num_threads(),
        },
        "same_batches": True,  # measure() raises otherwise
        "headline": {
            "encoder": head,
            "target_ratio": TARGET,
            "estimate": "median over rounds of the per-round ratio to the plain loop",
            "step_time_ratio": ratio["step_paired"],
            "loop_time_ratio": ratio["loop_paired"],
            "loop_time_ratio_interval": [headline.low, headline.high],
            "rounds": headline.n,
            "target": stats.within(headline, TARGET),
            "within_target": stats.within(headline, TARGET) == "met",
        },
        "runs": results,
        "padding": padding,
        "seconds": time.perf_counter() - start,
    }
    write_result("throughput", payload, markdown(payload), for_readme=mode != "smoke")
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="seconds: tiny encoder, few steps")
    group.add_argument("--full", action="store_true", help="bigger batches, more steps (GPU)")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="run from uncommitted changes (not for README)"
    )
    args = parser.parse_args()
    require_clean(args.allow_dirty or args.smoke, "benchmarks.throughput")
    print(markdown(run("smoke" if args.smoke else "full" if args.full else "default")))


if __name__ == "__main__":
    main()
