"""Distillation: a 3-layer student of the quickstart model, logits only vs with layer matching.

    python -m benchmarks.distillation              # default CPU budget (3 seeds)
    python -m benchmarks.distillation --smoke      # a stand-in teacher, 2 steps (tests)
    python -m benchmarks.distillation --teacher runs/quickstart/checkpoints/last.ckpt

The teacher is the multi-task model of ``configs/quickstart.yaml`` (6-layer MiniLM; trained first
if ``--teacher`` does not exist). Every student is ``configs/transfer/distill_minilm.yaml`` (MiniLM
layers 1, 3, 5 with the teacher's weights of those layers) in three variants: ``labels`` (no
teacher signal: ``alpha: 0``), ``logits`` (the config as shipped) and ``logits+layers`` (stacked
with ``configs/transfer/distill_layers.yaml``: hidden states of every layer and the last
attention map). Reported per task: the test metric as a fraction of the teacher's, mean ± std over
seeds; the student's parameters and its inference speed as a ratio to the teacher's (paired,
interleaved rounds of the same batches). Writes ``results/distillation.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import CONFIGS, ROOT, require_clean, write_result
from mtlkit.callbacks import metric_rows
from mtlkit.cli import cli_main

TEACHER = ROOT / "runs" / "quickstart" / "checkpoints" / "last.ckpt"
STUDENT = CONFIGS / "transfer" / "distill_minilm.yaml"
VARIANTS: dict[str, list[str]] = {
    "labels": ["--model.init_args.alpha=0.0"],
    "logits": [],
    "logits+layers": ["--config", str(CONFIGS / "transfer" / "distill_layers.yaml")],
}
MODES: dict[str, dict[str, Any]] = {
    "default": {"seeds": 3, "args": []},
    "full": {"seeds": 5, "args": []},
    "smoke": {
        "seeds": 1,
        "args": [
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1",
            "--data.init_args.max_train_examples=32",
            "--data.init_args.max_eval_examples=8",
            "--data.init_args.batch_size=4",
        ],
    },
}
QUIET = ["--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false"]
QUIET += ["--trainer.enable_progress_bar=false"]


def ensure_teacher(path: Path, smoke: bool, tmp: Path) -> Path:
    """The quickstart checkpoint (trained here if missing); a stand-in (untrained heads on
    MiniLM) in smoke mode."""
    if path.is_file():
        return path
    if smoke:
        cli = cli_main(["--config", str(CONFIGS / "quickstart.yaml")], run=False)
        cli.datamodule.setup("fit")
        cli.model.configure_model()
        ckpt = {"state_dict": cli.model.state_dict()}
        cli.model.on_save_checkpoint(ckpt)
        path = tmp / "teacher.ckpt"
        torch.save(ckpt, path)
        return path
    cli_main(["fit", "--config", str(CONFIGS / "quickstart.yaml")])
    return path


def _test(cli: Any) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for per_loader in cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False):
        metrics.update(per_loader)  # one dict per task's test loader
    primary = {t.name: t.primary_metric for t in cli.datamodule.tasks}
    rows = metric_rows(metrics, "test")
    return {task: float(rows[task][metric]) for task, metric in primary.items()}


def _speed_ratio(student: Any, teacher: Any, batches: list[dict], rounds: int = 5) -> list[float]:
    """Per round: student time / teacher time over the same batches (interleaved)."""
    ratios = []
    with torch.no_grad():
        for _ in range(rounds):
            times = []
            for model in (student, teacher):
                start = time.perf_counter()
                for subs in batches:
                    model(subs)
                times.append(time.perf_counter() - start)
            ratios.append(times[0] / times[1])
    return ratios


def run(mode: str = "default", teacher: Path = TEACHER) -> Path:
    settings = MODES[mode]
    with tempfile.TemporaryDirectory() as tmp:
        source = ensure_teacher(teacher, mode == "smoke", Path(tmp))
        common = [f"--model.init_args.teacher={source}", f"--model.init_args.init_from={source}"]
        runs: list[dict[str, Any]] = []
        speed: list[float] = []
        for seed in range(settings["seeds"]):
            for variant, extra in VARIANTS.items():
                start = time.perf_counter()
                args = ["--config", str(STUDENT), *extra, *common, *QUIET, *settings["args"]]
                cli = cli_main(["fit", *args, f"--seed_everything={seed}"])
                scores = _test(cli)
                runs.append(
                    {
                        "variant": variant,
                        "seed": seed,
                        "test": scores,
                        "steps": cli.trainer.global_step,
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
            student = cli.model.eval()
            if not speed:  # the teacher's own scores, and the speed ratio (same every seed)
                teacher_scores = _teacher_scores(cli, student)
                loader = cli.datamodule.test_dataloader()
                batches = [b["tasks"] for b in _take(loader, 8)]
                speed = _speed_ratio(student.model, student.teacher.model, batches)
        sizes = {
            "student_parameters": sum(p.numel() for p in student.encoder.parameters()),
            "teacher_parameters": sum(p.numel() for p in student.teacher.encoder.parameters()),
        }
    summary = summarise(runs, teacher_scores)
    payload = {
        "mode": mode,
        "teacher": str(teacher),
        "teacher_test": teacher_scores,
        "speed_ratio_rounds": speed,
        **sizes,
        "runs": runs,
        "summary": summary,
    }
    text = markdown(summary, teacher_scores, speed, sizes)
    return write_result("distillation", payload, text, for_readme=mode != "smoke")


def _take(loaders: Any, n: int) -> list[dict]:
    out = []
    for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
        for batch in loader:
            if not batch.get("padding"):
                out.append(batch)
            if len(out) >= n:
                return out
    return out


def _teacher_scores(cli: Any, student: Any) -> dict[str, float]:
    """The teacher's test metrics: the teacher's model evaluated by the student's module."""
    held = student.model
    teacher = student.teacher.model
    object.__setattr__(student, "model", teacher)
    try:
        return _test(cli)
    finally:
        object.__setattr__(student, "model", held)


def summarise(runs: list[dict[str, Any]], teacher: dict[str, float]) -> dict[str, Any]:
    """Per variant and task: the test metric as a fraction of the teacher's, over seeds."""
    out: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rows = [r for r in runs if r["variant"] == variant]
        out[variant] = {}
        for task, reference in teacher.items():
            values = [r["test"][task] / reference for r in rows if reference]
            out[variant][task] = {
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    return out


def markdown(
    summary: dict[str, Any], teacher: dict[str, float], speed: list[float], sizes: dict[str, int]
) -> str:
    tasks = list(teacher)
    lines = [
        "| student | " + " | ".join(f"{t} (of teacher)" for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for variant, per_task in summary.items():
        cells = [f"{per_task[t]['mean']:.3f} ± {per_task[t]['std']:.3f}" for t in tasks]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    median = statistics.median(speed) if speed else float("nan")
    lines.append(
        f"\nTeacher test metrics: {', '.join(f'{t} {v:.3f}' for t, v in teacher.items())}. "
        f"Encoder parameters: student {sizes['student_parameters'] / 1e6:.1f}M, teacher "
        f"{sizes['teacher_parameters'] / 1e6:.1f}M; student inference time / teacher's: "
        f"median {median:.2f} over {len(speed)} paired rounds "
        f"(range {min(speed, default=0):.2f}-{max(speed, default=0):.2f})."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--teacher", type=Path, default=TEACHER)
    parser.add_argument("--allow-dirty", action="store_true", help="results not for the README")
    args = parser.parse_args()
    if not args.smoke:
        require_clean(args.allow_dirty, "benchmarks.distillation")
    print(run("smoke" if args.smoke else "default", args.teacher))


if __name__ == "__main__":
    main()
