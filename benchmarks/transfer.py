"""Does multi-task pre-training help a new task? SMS spam from plain MiniLM vs the MTL checkpoint.

    python -m benchmarks.transfer                 # default CPU budget (58 min on 2 cores)
    python -m benchmarks.transfer --smoke         # tiny encoder, toy data, seconds (tests)
    python -m benchmarks.transfer --source runs/quickstart/checkpoints/last.ckpt

The results record the source checkpoint by SHA-256 (and whether it was trained by this call);
the multi-task start is compared with the pretrained start seed by seed (same training subset
and data order), with a 95 % t interval and a verdict only where the interval excludes 0.

The held-out task is SMS spam (``mtlkit.packaged.sms_spam``; the quickstart mixture of TREC, BBC
topic and sentiment ratings never saw it), trained on 100, 500 and all 4,128 training messages
(a different random subset per seed), from (a) the pretrained all-MiniLM-L6-v2 and (b) the
multi-task checkpoint of ``configs/quickstart.yaml`` (its encoder, loaded by ``init_from``; trained
first if ``--source`` does not exist), with four regimes: full fine-tuning, frozen encoder
(``FreezeEncoder``: heads only), gradual unfreezing (``GradualUnfreeze``, one layer more every
1/8 of the run), per-task LoRA (``LoRAEncoder``, r=8) and the parameter-efficient regimes of
``configs/transfer/regimes/`` (Houlsby and Pfeiffer bottleneck adapters, prefix tuning, AdaLoRA
with its rank schedule over the run, IA3; encoder and learning rate as shipped). Each run also
records its trainable parameters, time per step and peak memory (CUDA's peak allocation on a
GPU; on a CPU the growth of resident memory, sampled every 20 ms). Metric: macro-F1 on the
516-message test split (spam is 12% of the messages, so accuracy flatters), mean ± std over 3
seeds. Writes
``results/transfer.{json,md,png}``.

Each finished run of a clean tree is cached in ``.mtlkit_cache/transfer_runs/`` under a key of
the commit, the run's coordinates, the source checkpoint's hash and the regime's settings
(:func:`run_key`): a stopped call resumes where it stopped, and calls with ``--regimes`` subsets
add up to the whole table (only a call over every regime writes results for the README).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L

from benchmarks import stats
from benchmarks.common import (
    RESULTS,
    digest,
    file_sha256,
    git_state,
    require_clean,
    write_json_atomic,
    write_result,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "runs" / "quickstart" / "checkpoints" / "last.ckpt"
CACHE = ROOT / ".mtlkit_cache"
#: Finished runs of a clean tree, one JSON each, so an interrupted call resumes where it stopped.
RUNS_CACHE = CACHE / "transfer_runs"
#: Parameter-efficient regimes: their encoder and learning rate come from the shipped override
#: ``configs/transfer/regimes/<file>.yaml`` (one set of task parameters on the frozen encoder).
PEFT_CONFIGS = {
    "houlsby": "bottleneck_houlsby",
    "pfeiffer": "bottleneck_pfeiffer",
    "prefix": "prefix_tuning",
    "adalora": "adalora",
    "ia3": "ia3",
}
REGIMES = ["full", "frozen", "gradual", "lora", *PEFT_CONFIGS]
INITS = ["pretrained", "multitask"]
MODES: dict[str, dict[str, Any]] = {
    # steps per training-set size: about 8 epochs of 100, 3 of 500, 0.6 of all (CPU budget)
    "default": {"sizes": [100, 500, None], "steps": [50, 100, 150], "seeds": 3},
    "full": {"sizes": [100, 500, None], "steps": [100, 300, 1000], "seeds": 5},
    "smoke": {"sizes": [16], "steps": [3], "seeds": 2},
}
# Encoder (or adapter) and head learning rates per regime: one sensible value each, not tuned.
# A frozen encoder or LoRA trains few parameters and needs a larger step to learn in 50 steps.
LR = {"full": 1e-4, "frozen": 1e-4, "gradual": 1e-4, "lora": 2e-3}
HEAD_LR = {"full": 1e-3, "frozen": 1e-2, "gradual": 1e-3, "lora": 1e-2}
HEAD_LR |= dict.fromkeys(PEFT_CONFIGS, 1e-2)


def _regime_config(regime: str) -> dict[str, Any]:
    """``model.init_args`` of a parameter-efficient regime's shipped override."""
    import yaml

    path = ROOT / "configs" / "transfer" / "regimes" / f"{PEFT_CONFIGS[regime]}.yaml"
    return yaml.safe_load(path.read_text())["model"]["init_args"]


LR |= {r: float(_regime_config(r)["optimizer"]["init_args"]["lr"]) for r in PEFT_CONFIGS}


def _task(smoke: bool):
    from mtlkit.data import InMemory, PythonCallable
    from mtlkit.tasks import SequenceClassification

    if not smoke:
        source = PythonCallable(target="mtlkit.packaged.sms_spam")
        return SequenceClassification(name="sms_spam", max_length=64, source=source)
    from mtlkit.testing import TINY_WORDS

    words = [w for w in TINY_WORDS if w.isalpha()]
    texts = [f"{'good' if i % 2 else 'bad'} {words[i % len(words)]} {i}" for i in range(80)]
    labels = [i % 2 for i in range(80)]
    splits = {s: {"text": texts, "label": labels} for s in ("train", "validation", "test")}
    return SequenceClassification(name="sms_spam", num_labels=2, source=InMemory(splits))


def _encoder(regime: str, smoke: bool, steps: int):
    import importlib

    from mtlkit.model import HFEncoder
    from mtlkit.paths import MINILM
    from mtlkit.testing import TINY_ENCODER

    where = {"config": dict(TINY_ENCODER)} if smoke else {"name_or_path": MINILM}
    if regime in PEFT_CONFIGS:
        spec = _regime_config(regime)["encoder"]
        module, _, name = spec["class_path"].rpartition(".")
        args = dict(spec.get("init_args", {}))
        if "total_step" in args:  # AdaLoRA's rank schedule spans the run
            args |= {"total_step": steps, "tinit": steps // 10, "tfinal": steps // 5}
            args["delta_t"] = max(1, min(int(args.get("delta_t", 10)), steps // 10))
        return getattr(importlib.import_module(module), name)(**where, **args)
    if regime == "lora":
        from mtlkit.model.adapters import LoRAEncoder

        return LoRAEncoder(**where, r=8, alpha=16)
    return HFEncoder(**where)


def _callbacks(regime: str, steps: int) -> list[L.Callback]:
    from mtlkit.finetuning import FreezeEncoder, GradualUnfreeze

    if regime == "frozen":
        return [FreezeEncoder()]
    if regime == "gradual":  # 6 layers + embeddings unfrozen over the first 7/8 of the run
        return [GradualUnfreeze(every=max(1, steps // 8), unit="steps", lr_ratio=1.0)]
    return []


def run_one(
    init: str, regime: str, size: int | None, steps: int, seed: int, source: Path, smoke: bool
) -> dict[str, Any]:
    from mtlkit.data import MultiTaskDataModule
    from mtlkit.optim import AdamW
    from mtlkit.paths import MINILM
    from mtlkit.testing.trainer import quiet_trainer
    from mtlkit.training import MultiTaskModule

    L.seed_everything(seed, verbose=False)
    tokenizer = "pkg:mtlkit/testing/tiny_tokenizer" if smoke else MINILM
    dm = MultiTaskDataModule(
        [_task(smoke)],
        tokenizer=tokenizer,
        batch_size=16 if not smoke else 4,
        steps_per_epoch=steps,
        group_by_length=True,
        max_train_examples=size,
        seed=seed,
        cache_dir=None if smoke else str(CACHE),
    )
    model = MultiTaskModule(
        _encoder(regime, smoke, steps),
        dm.tasks,
        head_lr=HEAD_LR[regime],
        init_from=str(source) if init == "multitask" else None,
        optimizer=lambda p, lr=LR[regime]: AdamW(p, lr=lr, weight_decay=0.01),
    )
    trainer = quiet_trainer(
        max_steps=steps,
        max_epochs=1,
        accelerator="cpu",
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=_callbacks(regime, steps),
    )
    start = time.perf_counter()
    with PeakMemory() as memory:
        trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    # At the end of training, before testing: by then the frozen regime's callback has frozen
    # the encoder and gradual unfreezing has unfrozen every layer; trainer.test would run
    # BaseFinetuning.setup again, which re-freezes what gradual unfreezing had opened.
    trainable = model.trainable_parameter_counts()["total"]
    (metrics,) = trainer.test(model, dm, verbose=False)
    return {
        "init": init,
        "regime": regime,
        "size": size,
        "train_examples": len(dm.splits["sms_spam"]["train"]),
        "steps": steps,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(trainer.global_step, 1), 4),
        "trainable_parameters": trainable,
        "peak_memory_mb": memory.peak_mb,
        "macro_f1": float(metrics["test/sms_spam/macro_f1"]),
        "accuracy": float(metrics["test/sms_spam/accuracy"]),
    }


class PeakMemory:
    """Peak memory of the block: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the
    process's resident memory sampled every 20 ms, as growth over its value at the start."""

    def __enter__(self) -> PeakMemory:
        import threading

        import psutil
        import torch

        self.peak_mb = 0.0
        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        process = psutil.Process()
        start = process.memory_info().rss
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.02):
                self.peak_mb = max(self.peak_mb, (process.memory_info().rss - start) / 2**20)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self._cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mb = round(self.peak_mb, 1)


def ensure_source(source: Path, smoke: bool, tmp: Path) -> Path:
    """The multi-task checkpoint: the given one, or trained now from the quickstart config."""
    from mtlkit.cli import cli_main

    if source.exists():
        return source
    if smoke:
        args = ["fit", "--config", str(ROOT / "configs" / "tiny" / "tiny.yaml")]
        args += ["--trainer.max_steps=2", f"--trainer.default_root_dir={tmp}"]
        cli = cli_main(args)
        path = tmp / "source.ckpt"
        cli.trainer.save_checkpoint(path)
        return path
    print(f"[transfer] {source} not found: training configs/quickstart.yaml first (~4 min)")
    cli_main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml")])
    return source


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{"init/regime": {"size": [mean, std]}}`` of the test macro-F1."""
    out: dict[str, dict[str, list[float]]] = {}
    keys = sorted({(r["init"], r["regime"], str(r["size"])) for r in runs})
    for init, regime, size in keys:
        values = [
            r["macro_f1"]
            for r in runs
            if (r["init"], r["regime"], str(r["size"])) == (init, regime, size)
        ]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out.setdefault(f"{init}/{regime}", {})[size] = [statistics.fmean(values), std]
    return out


def _label(size: str) -> str:
    return "all" if size == "None" else size


def paired_effects(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Multi-task start minus pretrained start, per regime and size, paired by seed (the same
    seed draws the same training subset and data order for both starts): mean difference of
    the test macro-F1 with its 95 % interval and verdict (:mod:`benchmarks.stats`)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for regime in REGIMES:
        for size in sorted({str(r["size"]) for r in runs if r["regime"] == regime}):
            by = {
                init: {
                    r["seed"]: r["macro_f1"]
                    for r in runs
                    if (r["init"], r["regime"], str(r["size"])) == (init, regime, size)
                }
                for init in INITS
            }
            if by["pretrained"] and by["multitask"]:
                effect = stats.paired(by["multitask"], by["pretrained"]).as_dict()
                out.setdefault(regime, {})[size] = effect
    return out


def verdict(effects: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Where the multi-task start helps, per regime and size: the paired difference with its
    interval; ``better``/``worse`` only when the interval excludes 0."""
    lines = []
    for regime, sizes in effects.items():
        cells = []
        for size, e in sizes.items():
            interval = "" if e["low"] is None else f" [{e['low']:+.3f}, {e['high']:+.3f}]"
            cells.append(f"{_label(size)}: {e['mean']:+.3f}{interval} ({e['verdict']})")
        lines.append(f"- {regime}: " + ", ".join(cells))
    return "\n".join(lines)


def markdown(summary: dict[str, dict[str, list[float]]], runs: list[dict[str, Any]]) -> str:
    sizes = list(next(iter(summary.values())))
    counts = {str(r["size"]): r["train_examples"] for r in runs}
    steps = {str(r["size"]): r["steps"] for r in runs}
    head = " | ".join(f"{_label(s)} ({counts[s]} ex., {steps[s]} steps)" for s in sizes)
    lines = [f"| start / regime | {head} |", "|---|" + "---|" * len(sizes)]
    for name, row in summary.items():
        cells = " | ".join(f"{row[s][0]:.3f} ± {row[s][1]:.3f}" for s in sizes)
        lines.append(f"| {name} | {cells} |")
    seeds = len({r["seed"] for r in runs})
    lines.append(
        f"\nSMS spam test macro-F1 (516 messages), mean ± std over {seeds} seeds; batch 16. "
        "`pretrained`: all-MiniLM-L6-v2; `multitask`: its encoder after the quickstart "
        "multi-task run (TREC, BBC topic, sentiment). Multi-task start minus pretrained start, "
        "paired by seed, with its 95 % t interval:"
    )
    lines.append(verdict(paired_effects(runs)))
    lines.append("\n" + cost_table(runs))
    return "\n".join(lines) + "\n"


def cost_table(runs: list[dict[str, Any]]) -> str:
    """Per regime: trainable parameters, time per step and peak memory (mean ± std over runs)."""

    def cell(values: list[float], digits: int) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"

    lines = [
        "| regime | trainable parameters | s / step | peak memory (MB) |",
        "|---|---|---|---|",
    ]
    for regime in dict.fromkeys(r["regime"] for r in runs):
        own = [r for r in runs if r["regime"] == regime and "seconds_per_step" in r]
        if not own:
            continue
        params = int(statistics.median(r["trainable_parameters"] for r in own))
        step = cell([r["seconds_per_step"] for r in own], 3)
        memory = cell([r["peak_memory_mb"] for r in own], 0)
        lines.append(f"| {regime} | {params:,} | {step} | {memory} |")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, list[float]]], runs: list[dict[str, Any]], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = {str(r["size"]): r["train_examples"] for r in runs}
    palette = plt.get_cmap("tab10")
    colors = {regime: palette(i % 10) for i, regime in enumerate(REGIMES)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in summary.items():
        init, regime = name.split("/")
        xs = [counts[s] for s in row]
        ax.errorbar(
            xs,
            [row[s][0] for s in row],
            yerr=[row[s][1] for s in row],
            label=name,
            color=colors[regime],
            linestyle="-" if init == "multitask" else "--",
            marker="o",
            capsize=3,
        )
    ax.set_xscale("log")
    ax.set_xlabel("training messages")
    ax.set_ylabel("test macro-F1")
    ax.set_title("SMS spam: multi-task start (solid) vs pretrained start (dashed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_key(commit: str, mode: str, run: dict[str, Any], source_sha256: str) -> str:
    """Cache key of one run: the commit, the mode, the run's coordinates (start, regime, size,
    steps, seed), the source checkpoint's hash, and the regime's learning rates and config."""
    regime = run["regime"]
    spec = {
        "commit": commit,
        "mode": mode,
        **run,
        "source": source_sha256,
        "lr": LR[regime],
        "head_lr": HEAD_LR[regime],
        "regime_config": _regime_config(regime) if regime in PEFT_CONFIGS else None,
    }
    return digest(spec)


def cached_run(
    cache: Path | None, key: str, compute: Any, commit: str
) -> tuple[dict[str, Any], bool]:
    """The run cached under ``key`` in ``cache``, or ``compute()`` (then cached, written
    atomically, with ``commit``); and whether it came from the cache. ``cache=None``: no cache."""
    path = cache / f"{key}.json" if cache is not None else None
    if path is not None and path.exists():
        return json.loads(path.read_text()), True
    result = {**compute(), "commit": commit}
    if path is not None:
        write_json_atomic(path, result)
    return result, False


def run(
    mode: str = "default",
    source: Path = SOURCE,
    regimes: list[str] | None = None,
    cache: Path | None = RUNS_CACHE,
) -> Path:
    """Every run of ``mode`` (or of ``regimes``), then the results files. Finished runs of a
    clean tree are cached under ``cache`` keyed by :func:`run_key`, so a stopped call resumes and
    calls on subsets of the regimes add up; a dirty tree or a smoke run caches nothing."""
    import tempfile

    settings = MODES[mode]
    smoke = mode == "smoke"
    state = git_state()
    if smoke or state["dirty"]:
        cache = None
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        trained_now = not source.exists()
        source = ensure_source(source, smoke, Path(tmp))
        source_sha256 = file_sha256(source)  # before the temporary folder goes
        for seed in range(settings["seeds"]):
            for size, steps in zip(settings["sizes"], settings["steps"], strict=True):
                for init in INITS:
                    for regime in regimes or REGIMES:
                        where = {"init": init, "regime": regime, "size": size, "steps": steps}
                        key = run_key(state["commit"], mode, {**where, "seed": seed}, source_sha256)
                        r, hit = cached_run(
                            cache,
                            key,
                            lambda w=where, s=seed: run_one(
                                **w, seed=s, source=source, smoke=smoke
                            ),
                            state["commit"],
                        )
                        runs.append(r)
                        print(
                            f"[transfer] seed {seed} n={size} {init}/{regime}: "
                            f"F1 {r['macro_f1']:.3f} ({r['train_seconds']} s"
                            f"{', cached' if hit else ''})",
                            flush=True,
                        )
    summary = summarise(runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not smoke:
        plot(summary, runs, RESULTS / "transfer.png")
    payload = {
        "mode": mode,
        "settings": settings,
        "learning_rates": LR,
        "head_learning_rates": HEAD_LR,
        "source": {
            "path": str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source),
            "sha256": source_sha256,
            "trained_now": trained_now,
        },
        "runs": runs,
        "summary": summary,
        "effects": paired_effects(runs),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "train_seconds_total": round(sum(r["train_seconds"] for r in runs), 1),
    }
    name = "transfer" if not smoke else "transfer_smoke"
    # A smoke run or a subset of the regimes is never for the README.
    for_readme = not smoke and regimes is None
    return write_result(name, payload, markdown(summary, runs), for_readme=for_readme)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--regimes", help=f"comma-separated subset of {REGIMES}")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="run from uncommitted changes (not for README)"
    )
    args = parser.parse_args()
    require_clean(args.allow_dirty or args.smoke, "benchmarks.transfer")
    mode = "smoke" if args.smoke else "full" if args.full else "default"
    regimes = args.regimes.split(",") if args.regimes else None
    print(run(mode, args.source, regimes))


if __name__ == "__main__":
    main()
