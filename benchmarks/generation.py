"""Generation: headlines and replies, single-task vs multi-task, against simple baselines, and
decoding speed against transformers' ``generate``.

    python -m benchmarks.generation                # default CPU budget (3 seeds, 2 processes)
    python -m benchmarks.generation --smoke        # a few steps, tiny evaluation (tests)

Rows (each trained from ``configs/headlines.yaml`` or ``configs/dialogue.yaml`` with the tasks it
names, the same steps per generation task, scored on the test split):

- ``headlines/single``: BBC headline generation alone (article body -> title);
  ``headlines/multi``: with BBC topic classification on the same articles.
- ``replies/single``: Cornell reply generation from the dialogue context;
  ``replies/multi``: with response selection on the same conversations.
- Baselines on the same test examples: ``headlines/lead`` (the body's first k words, k the
  median training title length: LEAD-k) and ``replies/frequent`` (the most frequent training
  reply).

Reported: ROUGE-1/2/L F and BLEU, mean ± std over seeds, and multi - single per seed with a 95 %
t interval (:mod:`benchmarks.stats`); decoding speed (generated tokens per second, greedy and
beam 4) of mtlkit's generation as a ratio to transformers' ``generate`` on the same model and
batch, paired rounds. Writes ``results/generation.{json,md}``.

The row-seed jobs train in ``--workers`` new processes (default 2, one torch thread each,
:func:`benchmarks.common.train_in_workers`); the decoding speed is measured afterwards in the
calling process with nothing else running, on the last seed's ``headlines/multi`` model rebuilt
from the weights its job saved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import CONFIGS, require_clean, train_in_workers, write_result
from benchmarks.stats import paired
from mtlkit.callbacks import metric_rows
from mtlkit.cli import cli_main
from mtlkit.metrics.generation import generation_metrics
from mtlkit.testing.trainer import quiet_cli_args

METRICS = ("rouge1", "rouge2", "rougeL", "bleu")
ROWS: dict[str, dict[str, Any]] = {
    "headlines/single": {"config": "headlines.yaml", "tasks": ["headline"]},
    "headlines/multi": {"config": "headlines.yaml", "tasks": ["headline", "topic"]},
    "replies/single": {"config": "dialogue.yaml", "tasks": ["reply"]},
    "replies/multi": {"config": "dialogue.yaml", "tasks": ["reply", "select"]},
}
GENERATOR = {"headlines": "headline", "replies": "reply"}
MODES: dict[str, dict[str, Any]] = {
    "default": {"seeds": 3, "steps": 300, "max_eval": 200, "limit": 8000},
    "full": {"seeds": 5, "steps": 1000, "max_eval": None, "limit": None},
    "smoke": {"seeds": 1, "steps": 2, "max_eval": 4, "limit": 64},
}


def _tasks_override(row: dict[str, Any], limit: int, tmp: Path) -> str:
    config = yaml.safe_load((CONFIGS / row["config"]).read_text())
    tasks = [
        t for t in config["data"]["init_args"]["tasks"] if t["init_args"]["name"] in row["tasks"]
    ]
    for task in tasks:
        source = task["init_args"]["source"]["init_args"]
        source["kwargs"] = {**source.get("kwargs", {}), "limit": limit}
    path = tmp / "tasks.yaml"
    path.write_text(yaml.safe_dump({"data": {"init_args": {"tasks": tasks}}}))
    return str(path)


def _row_args(name: str, seed: int, settings: dict[str, Any], tmp: Path) -> list[str]:
    """``mtlkit fit`` arguments of row ``name`` and ``seed``, without its step budget."""
    row = ROWS[name]
    max_eval = settings["max_eval"]
    return [
        "fit",
        *("--config", str(CONFIGS / row["config"])),
        *("--config", _tasks_override(row, settings["limit"], tmp)),
        *quiet_cli_args(),
        "--trainer.callbacks=[]",
        f"--seed_everything={seed}",
        f"--data.init_args.max_eval_examples={'null' if max_eval is None else max_eval}",
        f"--data.init_args.seed={seed}",
        f"--trainer.default_root_dir={tmp}",
    ]


def run_row(name: str, seed: int, settings: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Trains one row with one seed; its test metrics and the trained CLI objects."""
    row = ROWS[name]
    steps = settings["steps"] * len(row["tasks"])  # every task gets the single-task budget
    with tempfile.TemporaryDirectory() as tmp:
        args = _row_args(name, seed, settings, Path(tmp))
        args += [f"--trainer.max_steps={steps}", f"--data.init_args.steps_per_epoch={steps}"]
        start = time.perf_counter()
        cli = cli_main(args)
        metrics: dict[str, float] = {}
        for per_loader in cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False):
            metrics.update(per_loader)
        seconds = time.perf_counter() - start
    test = metric_rows(metrics, "test")
    return {"seed": seed, "steps": steps, "seconds": round(seconds, 1), "test": test}, cli


def baselines(cli_by_kind: dict[str, Any]) -> dict[str, dict[str, float]]:
    """LEAD-k headlines and the most frequent training reply, scored on the test examples the
    trained rows were scored on (the data modules' test splits)."""
    out: dict[str, dict[str, float]] = {}
    for kind, cli in cli_by_kind.items():
        task = next(t for t in cli.datamodule.tasks if t.name == GENERATOR[kind])
        train = cli.datamodule.raw_split(task.name, "train")
        test = cli.datamodule.raw_split(task.name, "test")
        targets = [str(t) for t in test[task.target_column]]
        if kind == "headlines":
            k = int(statistics.median(len(str(t).split()) for t in train[task.target_column]))
            preds = [" ".join(str(s).split()[:k]) for s in test[task.text_column]]
            name = f"{kind}/lead"
        else:
            reply = Counter(str(t) for t in train[task.target_column]).most_common(1)[0][0]
            preds = [reply] * len(targets)
            name = f"{kind}/frequent"
        metrics = generation_metrics(task.bleu_tokenize)
        metrics.update(preds, targets)
        out[name] = {k: float(v) for k, v in metrics.compute().items()}
    return out


def decoding_speed(cli: Any, rounds: int = 5, batch_size: int = 16) -> dict[str, Any]:
    """Generated tokens per second of mtlkit's ``generate`` and of transformers' ``generate`` on
    the same encoder-decoder model and batch (greedy and beam 4), paired interleaved rounds."""
    module = cli.model.eval()
    name = next(n for n in module.tasks if n in GENERATOR.values())
    head = module.model.heads[name]
    loader = cli.datamodule.test_dataloader()
    loaders = loader if isinstance(loader, list | tuple) else [loader]
    batch = next(b["tasks"][name] for dl in loaders for b in dl if name in b.get("tasks", {}))
    batch = {k: v[:batch_size] for k, v in batch.items() if torch.is_tensor(v)}
    out: dict[str, Any] = {}
    for label, beams in (("greedy", 1), ("beam4", 4)):
        settings = {**module.tasks[name].generation, "num_beams": beams, "do_sample": False}
        ratios, rates = [], []
        with torch.no_grad():
            for _ in range(rounds):
                start = time.perf_counter()
                ours = module.model.generate(name, batch, **settings)
                mid = time.perf_counter()
                theirs = head.seq2seq.generate(  # the encoder runs inside, as in ours
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    **head.tokens,
                    **settings,
                )[:, 1:]  # mtlkit returns the generated ids without the start token
                end = time.perf_counter()
                ratios.append((mid - start) / (end - mid))
                rates.append(int((ours != head.tokens["pad_token_id"]).sum()) / (mid - start))
        out[label] = {
            "same_tokens": bool(torch.equal(ours, theirs)),
            "time_ratio_rounds": ratios,
            "tokens_per_second_rounds": rates,
        }
    return out


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per row and metric: mean ± std over seeds; per kind: multi - single, paired by seed."""
    summary: dict[str, Any] = {}
    for name, row_runs in runs.items():
        task = GENERATOR[name.split("/")[0]]
        summary[name] = {m: _mean_std([r["test"][task][m] for r in row_runs]) for m in METRICS}
    for kind, task in GENERATOR.items():
        single, multi = runs.get(f"{kind}/single"), runs.get(f"{kind}/multi")
        if single and multi:
            summary[f"{kind}/multi - single"] = {
                m: paired(
                    {r["seed"]: r["test"][task][m] for r in multi},
                    {r["seed"]: r["test"][task][m] for r in single},
                ).as_dict()
                for m in METRICS
            }
    return summary


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def markdown(summary: dict[str, Any], base: dict[str, dict[str, float]], speed: dict) -> str:
    lines = ["| row | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name, entry in summary.items():
        if "single" in name and "multi" in name:
            cells = []
            for m in METRICS:
                c = entry[m]
                ci = f" [{c['low']:+.3f}, {c['high']:+.3f}]" if c["low"] is not None else ""
                cells.append(f"{c['mean']:+.3f}{ci} {c['verdict']}")
        else:
            cells = [f"{entry[m]['mean']:.3f} ± {entry[m]['std']:.3f}" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, values in base.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[m]:.3f}" for m in METRICS) + " |")
    for label, entry in speed.items():
        median = statistics.median(entry["time_ratio_rounds"])
        rate = statistics.median(entry["tokens_per_second_rounds"])
        lines.append(
            f"\nDecoding ({label}): mtlkit / transformers generate time, median {median:.2f} "
            f"over {len(entry['time_ratio_rounds'])} paired rounds "
            f"(range {min(entry['time_ratio_rounds']):.2f}-{max(entry['time_ratio_rounds']):.2f})"
            f"; {rate:.0f} generated tokens/s; same tokens: {entry['same_tokens']}."
        )
    return "\n".join(lines) + "\n"


def train_job(job: str, mode: str, out: Path) -> None:
    """Trains one ``<row>@<seed>`` job and writes its run to ``out/<job>.json``. The last seed's
    multi-task rows also write the baselines on their test examples, and the last seed's
    headline model writes its weights for :func:`decoding_speed` (measured afterwards, alone)."""
    name, seed = job.rsplit("@", 1)
    settings = MODES[mode]
    result, cli = run_row(name, int(seed), settings)
    payload: dict[str, Any] = {"run": result}
    kind = name.split("/")[0]
    if (name, int(seed)) in _last_jobs(settings):
        payload["baselines"] = baselines({kind: cli})
        if kind == "headlines":
            torch.save(cli.model.state_dict(), out / "headlines.pt")
    (out / f"{_file_name(job)}.json").write_text(json.dumps(payload, sort_keys=True))


def _last_jobs(settings: dict[str, Any]) -> set[tuple[str, int]]:
    last = settings["seeds"] - 1
    return {(f"{kind}/multi", last) for kind in GENERATOR}


def _file_name(job: str) -> str:
    return job.replace("/", "_").replace("@", "_seed")


def jobs(settings: dict[str, Any]) -> list[str]:
    """``<row>@<seed>`` for every row and seed, costliest first (headlines train on longer
    inputs and targets than replies; a multi-task row trains twice the steps)."""
    order = ["headlines/multi", "replies/multi", "headlines/single", "replies/single"]
    return [f"{name}@{seed}" for name in order for seed in range(settings["seeds"])]


def _trained_cli(name: str, seed: int, settings: dict[str, Any], weights: Path) -> Any:
    """The CLI objects of row ``name`` and ``seed`` as :func:`run_row` builds them (no training
    step: ``max_steps=0``), with the weights that job trained."""
    with tempfile.TemporaryDirectory() as tmp:
        args = _row_args(name, seed, settings, Path(tmp))
        cli = cli_main([*args, "--trainer.max_steps=0", "--trainer.num_sanity_val_steps=0"])
    cli.model.load_state_dict(torch.load(weights, weights_only=True))
    cli.datamodule.setup("test")
    return cli


def run(mode: str = "default", workers: int = 1) -> Path:
    """Every job of :func:`jobs` (in this process, or in ``workers`` new processes with one torch
    thread each), then the decoding speed on the last seed's headline model in this process,
    with nothing else running."""
    settings = MODES[mode]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        todo = jobs(settings)
        if workers > 1:
            train_in_workers(
                "benchmarks.generation", todo, workers, [f"--mode={mode}", f"--out={out}"]
            )
        else:
            for job in todo:
                train_job(job, mode, out)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ROWS}
        base: dict[str, dict[str, float]] = {}
        for job in todo:
            payload = json.loads((out / f"{_file_name(job)}.json").read_text())
            runs[job.rsplit("@", 1)[0]].append(payload["run"])
            base |= payload.get("baselines", {})
        last = settings["seeds"] - 1
        speed = decoding_speed(
            _trained_cli("headlines/multi", last, settings, out / "headlines.pt")
        )
    for row_runs in runs.values():
        row_runs.sort(key=lambda r: r["seed"])
    base = dict(sorted(base.items()))
    summary = summarise(runs)
    payload = {"mode": mode, "settings": settings, "runs": runs, "summary": summary}
    payload |= {"baselines": base, "decoding": speed, "workers": workers}
    text = markdown(summary, base, speed)
    return write_result("generation", payload, text, for_readme=mode != "smoke")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--allow-dirty", action="store_true", help="results not for the README")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes sharing the runs (1 torch thread each)"
    )
    # one job of a parent's run(): --rows=<row>@<seed> --mode=... --out=<folder>
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows:
        train_job(args.rows, args.mode, Path(args.out))
        return
    if not args.smoke:
        require_clean(args.allow_dirty, "benchmarks.generation")
    print(run("smoke" if args.smoke else "default", workers=args.workers))


if __name__ == "__main__":
    main()
