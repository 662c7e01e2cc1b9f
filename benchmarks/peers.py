"""mtlkit against its peers on one shared workload: tasknet (Hugging Face Trainer) and LibMTL.

    bash benchmarks/peers_setup.sh           # once: an environment with tasknet and LibMTL
    .mtlkit_cache/peers-venv/bin/python -m benchmarks.peers
    python -m benchmarks.peers --smoke       # seconds; the peers only where installed

The workload (issue 12): three classification tasks (2, 4 and 6 labels), the tiny random
2-layer BERT of :mod:`mtlkit.testing.tiny` saved as a Hugging Face folder (every side loads the
same weights from it), one torch thread, 200 measured steps after 10 warm-up steps. Every text
has the same number of words and every word is one token of the tiny vocabulary, so no side pads
and no side gains from its padding policy: the times are the frameworks' own. Learning rate
5e-5 everywhere; everything else is each framework's default.

Sides, in two groups that do the same work per step:

* one task per step, batches of 16 (``homogeneous``): ``plain`` (a hand-written loop over
  tensors tokenized beforehand: ``AutoModel``, mean pooling, a linear head, cross-entropy, fused
  AdamW), ``mtlkit`` (``MultiTaskDataModule`` + ``MultiTaskModule`` under ``lightning.Trainer``,
  uniform sampling, its defaults: fused AdamW, linear warm-up/decay), ``tasknet``
  (``tasknet.Model_Trainer``: one ``AutoModelForSequenceClassification`` per task around a shared
  encoder, ``transformers.Trainer``);
* every task in every step, 16 examples each (``mixed``): ``plain_mixed`` (the same loop, the
  sum of the three losses), ``mtlkit_mixed`` (``batch_mode: mixed``, 48 examples per step drawn
  by a multinomial over the tasks), ``libmtl`` (``LibMTL.Trainer``, ``multi_input=True``, equal
  weighting ``EW``, hard parameter sharing ``HPS``, Adam as its ``optim_param`` builds it).

Time per step: a global optimizer step hook (``torch.optim.optimizer.
register_optimizer_step_post_hook``, public torch API) stamps the end of every optimizer step of
whatever framework runs; a side's time per step is the span from the end of its last warm-up
step to the end of its last step, divided by the measured steps. So it covers data loading,
forward, backward, the optimizer and each framework's own bookkeeping, and not set-up. Each side
must take exactly ``warmup + steps`` optimizer steps (checked). Sides run in interleaved rounds
(a new order every round); the headline is examples per second (median over rounds), and each
framework is compared with mtlkit as the median over rounds of the per-round time ratio with a
95 % bootstrap interval (:func:`benchmarks.stats.paired_ratio`). The optimizer each side used
(class, fused / foreach) is recorded, since it is a large part of a tiny encoder's step.

Two changes to LibMTL 1.1.5 (the PyPI release), made in a subclass and nothing else: it
hard-codes ``torch.device('cuda:0')``, and it calls the Python 2 iterator method ``.next()``
(``next(iterator)`` here). Its ``import`` of ``torchvision.models.utils`` (removed from torchvision
years ago; only its ResNet backbones use it) is given torch.hub's ``load_state_dict_from_url``.
tasknet's task classes call ``evaluate.load`` (a hub download) when they are defined; offline,
the benchmark hands them a placeholder, as no side evaluates. Writes
``benchmarks/results/peers.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import random
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from benchmarks import stats
from benchmarks.common import require_clean, write_result
from mtlkit.testing.tiny import TINY_WORDS, save_tiny_encoder

LABELS = {"two": 2, "four": 4, "six": 6}
LR = 5e-5
MODES: dict[str, dict[str, int]] = {
    "default": {"steps": 200, "warmup": 10, "rounds": 5, "batch": 16, "words": 30},
    "smoke": {"steps": 3, "warmup": 2, "rounds": 2, "batch": 4, "words": 6},
}
HOMOGENEOUS = ["plain", "mtlkit", "tasknet"]
MIXED = ["plain_mixed", "mtlkit_mixed", "libmtl"]
PEERS = {"tasknet": "tasknet", "libmtl": "LibMTL"}


# ----------------------------------------------------------------------------- the workload
def workload(cfg: dict[str, int], seed: int = 0) -> dict[str, dict[str, list[Any]]]:
    """Per task: ``text`` (``words`` one-token words) and ``label``; ``warmup + steps`` batches of
    each task, so that the mixed sides never run out within one pass."""
    rng = random.Random(seed)
    size = (cfg["warmup"] + cfg["steps"]) * cfg["batch"]
    return {
        name: {
            "text": [" ".join(rng.choices(TINY_WORDS, k=cfg["words"])) for _ in range(size)],
            "label": [rng.randrange(k) for _ in range(size)],
        }
        for name, k in LABELS.items()
    }


def held_out(cfg: dict[str, int]) -> dict[str, list[Any]]:
    """A few validation/test rows (another seed: none repeats a training text); no side
    evaluates during the timed steps, but the frameworks want the splits."""
    rows = workload({**cfg, "warmup": 1, "steps": 0}, seed=1)
    return next(iter(rows.values()))


class StepClock:
    """Stamps the end of every optimizer step taken while it is active, and the optimizers."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.optimizers: set[str] = set()

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.times.append(time.perf_counter())
        d = optimizer.defaults
        self.optimizers.add(
            f"{type(optimizer).__name__}(fused={d.get('fused')}, foreach={d.get('foreach')})"
        )

    def __enter__(self) -> StepClock:
        self.handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def per_step(self, warmup: int, steps: int, side: str) -> float:
        if len(self.times) != warmup + steps:
            raise RuntimeError(
                f"{side} took {len(self.times)} optimizer steps, not {warmup + steps}"
            )
        return (self.times[-1] - self.times[warmup - 1]) / steps


# ----------------------------------------------------------------------------- the sides
def _tokenized(data: dict[str, dict[str, list[Any]]], folder: Path) -> dict[str, dict[str, Tensor]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    out = {}
    for name, cols in data.items():
        enc = tok(cols["text"], return_tensors="pt")
        if enc["attention_mask"].min() < 1:
            raise RuntimeError("the workload's texts must not need padding")
        out[name] = {**enc, "labels": torch.tensor(cols["label"])}
    return out


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """The mask-weighted mean of token states, as mtlkit's ``pooling: mean`` (the plain loop and
    the LibMTL encoder use it, so every side pools alike)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def plain_side(
    data: dict[str, dict[str, list[Any]]], folder: Path, cfg: dict[str, int], mixed: bool
) -> None:
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    heads = nn.ModuleDict({n: nn.Linear(encoder.config.hidden_size, k) for n, k in LABELS.items()})
    model = nn.ModuleDict({"encoder": encoder, "heads": heads}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    tensors, names, b = _tokenized(data, folder), list(LABELS), cfg["batch"]

    def loss(name: str, step: int) -> Tensor:
        sub = {k: v[step * b : (step + 1) * b] for k, v in tensors[name].items()}
        labels, mask = sub.pop("labels"), sub["attention_mask"]
        pooled = mean_pool(encoder(**sub).last_hidden_state, mask)
        return F.cross_entropy(heads[name](pooled), labels)

    for step in range(cfg["warmup"] + cfg["steps"]):
        chosen = names if mixed else [names[step % len(names)]]
        sum(loss(n, step) for n in chosen).backward()  # type: ignore[union-attr]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def mtlkit_side(
    data: dict[str, dict[str, list[Any]]], folder: Path, cfg: dict[str, int], mixed: bool
) -> None:
    from mtlkit.data import InMemory, MultiTaskDataModule
    from mtlkit.data.sampling import Uniform
    from mtlkit.model import HFEncoder
    from mtlkit.optim import AdamW
    from mtlkit.tasks import SequenceClassification
    from mtlkit.testing.trainer import quiet_trainer
    from mtlkit.training import MultiTaskModule

    few = held_out(cfg)
    tasks = [
        SequenceClassification(
            name,
            InMemory({"train": data[name], "validation": few, "test": few}),
            num_labels=k,
        )
        for name, k in LABELS.items()
    ]
    batch = cfg["batch"] * (len(tasks) if mixed else 1)
    dm = MultiTaskDataModule(
        tasks,
        str(folder),
        sampling=Uniform(),
        batch_mode="mixed" if mixed else "homogeneous",
        batch_size=batch,
        cache_dir=None,
    )
    model = MultiTaskModule(
        HFEncoder(str(folder)), tasks, optimizer=lambda p: AdamW(p, lr=LR, weight_decay=0.01)
    )
    trainer = quiet_trainer(
        accelerator="cpu",
        devices=1,
        max_steps=cfg["warmup"] + cfg["steps"],
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)


def tasknet_side(
    data: dict[str, dict[str, list[Any]]], folder: Path, cfg: dict[str, int], mixed: bool
) -> None:
    import datasets

    tn = import_tasknet()
    few = held_out(cfg)
    tasks = []
    for name, k in LABELS.items():
        splits = {"train": data[name], "validation": few, "test": few}
        features = datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(num_classes=k)}
        )
        dsd = datasets.DatasetDict(
            {s: datasets.Dataset.from_dict(c, features=features) for s, c in splits.items()}
        )
        tasks.append(tn.Classification(dataset=dsd, name=name, s1="text", y="label"))
    with tempfile.TemporaryDirectory(prefix="mtlkit-peers-tasknet-") as out:
        hparams = {
            "model_name": str(folder),
            "learning_rate": LR,
            "max_steps": cfg["warmup"] + cfg["steps"],
            "per_device_train_batch_size": cfg["batch"],
            "max_length": cfg["words"] + 2,
            "output_dir": out,
            "report_to": "none",
            "eval_strategy": "no",
            "save_strategy": "no",
            "logging_strategy": "no",
            "disable_tqdm": True,
            "use_cpu": True,
            "dataloader_num_workers": 0,
        }
        _, trainer = tn.Model_Trainer(tasks, hparams)
        trainer.train()


def libmtl_side(
    data: dict[str, dict[str, list[Any]]], folder: Path, cfg: dict[str, int], mixed: bool
) -> None:
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import AutoModel

    libmtl = import_libmtl()
    hidden = AutoModel.from_pretrained(folder).config.hidden_size

    class Encoder(nn.Module):
        """The tiny BERT, mean-pooled; its input packs ``input_ids`` and ``attention_mask``."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(folder, add_pooling_layer=False)

        def forward(self, packed: Tensor) -> Tensor:
            ids, mask = packed.unbind(1)
            return mean_pool(self.bert(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    class CPUTrainer(libmtl.Trainer):
        """LibMTL's Trainer on this machine's device and with Python 3's ``next``."""

        def _prepare_model(self, *args: Any) -> None:
            self.device = torch.device("cpu")  # LibMTL 1.1.5 hard-codes cuda:0
            super()._prepare_model(*args)

        def _process_data(self, loader: list[Any]) -> tuple[Tensor, Tensor]:
            try:
                x, y = next(loader[1])
            except StopIteration:
                loader[1] = iter(loader[0])
                x, y = next(loader[1])
            return x.to(self.device), y.to(self.device)

    tensors = _tokenized(data, folder)
    loaders, tests = {}, {}
    for name, t in tensors.items():
        packed = torch.stack([t["input_ids"], t["attention_mask"]], dim=1)
        dataset = TensorDataset(packed, t["labels"])
        loaders[name] = DataLoader(dataset, batch_size=cfg["batch"], shuffle=True)
        tests[name] = DataLoader(TensorDataset(packed[:4], t["labels"][:4]), batch_size=4)
    task_dict = {
        name: {
            "metrics": ["Acc"],
            "metrics_fn": libmtl.metrics.AccMetric(),
            "loss_fn": libmtl.loss.CELoss(),
            "weight": [1],
        }
        for name in LABELS
    }
    trainer = CPUTrainer(
        task_dict=task_dict,
        weighting=libmtl.weighting.EW,
        architecture=libmtl.architecture.HPS,
        encoder_class=Encoder,
        decoders=nn.ModuleDict({n: nn.Linear(hidden, k) for n, k in LABELS.items()}),
        rep_grad=False,
        multi_input=True,
        optim_param={"optim": "adam", "lr": LR},
        scheduler_param=None,
        weight_args={},
        arch_args={},
    )
    trainer.train(loaders, tests, epochs=1)


SIDES: dict[str, Callable[..., None]] = {
    "plain": plain_side,
    "mtlkit": mtlkit_side,
    "tasknet": tasknet_side,
    "plain_mixed": plain_side,
    "mtlkit_mixed": mtlkit_side,
    "libmtl": libmtl_side,
}


# ----------------------------------------------------------------------------- importing peers
def import_tasknet() -> types.ModuleType:
    """tasknet, with ``evaluate.load`` answered by a placeholder while its task classes are
    defined (they download metric scripts from the hub at import; no side here evaluates)."""
    import evaluate

    real = evaluate.load
    evaluate.load = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        import tasknet
    finally:
        evaluate.load = real
    return tasknet


def import_libmtl() -> types.ModuleType:
    """LibMTL, whose ResNet module imports ``torchvision.models.utils.load_state_dict_from_url``
    (moved to ``torch.hub`` in torchvision 0.13); given here when torchvision lacks it."""
    try:
        from torchvision.models.utils import load_state_dict_from_url  # noqa: F401
    except ImportError:
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
        tv = sys.modules.get("torchvision") or types.ModuleType("torchvision")
        models = getattr(tv, "models", None) or types.ModuleType("torchvision.models")
        models.utils = shim  # type: ignore[attr-defined]
        tv.models = models  # type: ignore[attr-defined]
        sys.modules.update(
            {"torchvision": tv, "torchvision.models": models, "torchvision.models.utils": shim}
        )
    import LibMTL

    return LibMTL


def available(side: str) -> str | None:
    """The installed version of a peer side's package (torch's for the plain loop); ``None``
    when the peer is not installed."""
    package = PEERS.get(side)
    if side.startswith("plain"):
        return f"torch {torch.__version__}"
    if package is None:
        return "mtlkit (this commit)"
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- measuring
def measure(cfg: dict[str, int], sides: list[str]) -> dict[str, Any]:
    """Interleaved rounds of ``sides``; per side: seconds per step of each round, optimizers."""
    data = workload(cfg)
    seconds: dict[str, list[float]] = {s: [] for s in sides}
    optimizers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="mtlkit-peers-") as tmp:
        folder = save_tiny_encoder(Path(tmp) / "tiny")
        for r in range(cfg["rounds"]):
            for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                torch.manual_seed(r)
                with StepClock() as clock:
                    SIDES[side](data, folder, cfg, side.endswith("mixed") or side == "libmtl")
                seconds[side].append(clock.per_step(cfg["warmup"], cfg["steps"], side))
                optimizers[side] = sorted(clock.optimizers)
    return {"seconds_per_step": seconds, "optimizers": optimizers}


def summarise(measured: dict[str, Any], cfg: dict[str, int]) -> dict[str, Any]:
    """Examples per second per side and each side's paired time ratio to mtlkit's (its group)."""
    rows = {}
    for group, names in (("homogeneous", HOMOGENEOUS), ("mixed", MIXED)):
        examples = cfg["batch"] * (1 if group == "homogeneous" else len(LABELS))
        ours = "mtlkit" if group == "homogeneous" else "mtlkit_mixed"
        for side in names:
            per_round = measured["seconds_per_step"].get(side)
            if not per_round:
                continue
            row: dict[str, Any] = {
                "group": group,
                "examples_per_step": examples,
                "examples_per_second": examples / statistics.median(per_round),
                "ms_per_step": 1000 * statistics.median(per_round),
                "optimizer": measured["optimizers"][side],
            }
            if side != ours and measured["seconds_per_step"].get(ours):
                a = dict(enumerate(per_round))
                b = dict(enumerate(measured["seconds_per_step"][ours]))
                row["time_vs_mtlkit"] = stats.paired_ratio(a, b).as_dict()
            rows[side] = row
    return rows


def markdown(payload: dict[str, Any]) -> str:
    cfg = payload["settings"]
    lines = [
        "| steps per batch | side | version | examples/s | ms/step | time vs mtlkit [95 % interval]"
        " | optimizer |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, row in payload["rows"].items():
        ratio = row.get("time_vs_mtlkit")
        shown = "1.00x (reference)" if side.startswith("mtlkit") else ""
        if ratio:
            if ratio["low"] is None:
                shown = f"{ratio['mean']:.2f}x"
            else:
                shown = f"{ratio['mean']:.2f}x [{ratio['low']:.2f}, {ratio['high']:.2f}]"
        lines.append(
            f"| {row['group']} | {side} | {payload['versions'][side]} | "
            f"{row['examples_per_second']:.0f} | {row['ms_per_step']:.1f} | {shown} | "
            f"{', '.join(row['optimizer'])} |"
        )
    missing = [s for s, v in payload["versions"].items() if v is None]
    lines.append("")
    lines.append(
        f"Tiny random 2-layer BERT, 3 classification tasks, {cfg['words'] + 2} tokens per text "
        f"(no padding), batches of {cfg['batch']} per task, 1 torch thread, {cfg['steps']} "
        f"steps after {cfg['warmup']} warm-up steps, median over {cfg['rounds']} interleaved "
        "rounds; time vs mtlkit: median per-round ratio of seconds per step to mtlkit's in the "
        "same group (above 1: slower than mtlkit), 95 % bootstrap interval."
        + (f" Not installed, not measured: {', '.join(missing)}." if missing else "")
    )
    return "\n".join(lines) + "\n"


def run(mode: str = "default") -> dict[str, Any]:
    cfg = MODES[mode]
    torch.set_num_threads(1)
    versions = {s: available(s) for s in HOMOGENEOUS + MIXED}
    sides = [s for s in HOMOGENEOUS + MIXED if versions[s] is not None]
    start = time.perf_counter()
    measured = measure(cfg, sides)
    payload = {
        "settings": {**cfg, "mode": mode, "lr": LR, "labels": LABELS, "threads": 1},
        "versions": versions,
        **measured,
        "rows": summarise(measured, cfg),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    # The README shows only a default run with both peers installed.
    complete = mode == "default" and None not in versions.values()
    name = "peers" if mode == "default" else f"peers_{mode}"
    write_result(name, payload, markdown(payload), for_readme=complete)
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="run from uncommitted changes (not for README)"
    )
    args = parser.parse_args()
    require_clean(args.allow_dirty or args.smoke, "benchmarks.peers")
    payload = run("smoke" if args.smoke else "default")
    print(markdown(payload))


if __name__ == "__main__":
    main()
