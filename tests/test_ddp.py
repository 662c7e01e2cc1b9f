"""DDP with 2 CPU processes (gloo) gives the single-process update on the same global batch.

Every weighting method of ``configs/weighting/`` (``RUNS`` of the worker: each in its config's
batch mode, and those that allow homogeneous batches in mixed batches too) trains 3 SGD steps
(lr 0.5) with a global batch of 16 over 3 tasks: once in one process, once as 2 processes of 8
(Lightning's ``ddp`` strategy launched by torchrun; one worker run covers all methods). Measured
relative L2 error of the 2-process encoder update against the 1-process one (2-core x86 CPU):

==================  ======  ==================  ======
run                 error   run                 error
==================  ======  ==================  ======
aligned_mtl         4.1e-7  nash_mtl            7.9e-7
cagrad              3.6e-7  pcgrad              3.0e-7
dwa                 3.8e-7  rlw                 3.9e-7
equal               3.2e-7  static              3.2e-7
famo                3.1e-7  uncertainty         3.2e-7
gradnorm            3.7e-7  upgrad              3.6e-7
imtl_g              4.7e-7  equal/mixed         3.1e-7
mgda                4.4e-7  static/mixed        3.9e-7
mgda_ub             3.7e-7  uncertainty/mixed   3.5e-7
==================  ======  ==================  ======

All are float32 rounding of the all-reduce, of one size for every method, so one tolerance,
``UPDATE_TOLERANCE`` = 3x the largest measured error, holds for each (a wrong loss rescaling or
per-process weights give errors of 1e-3 and more).

The trajectory runs (every batch mode x sampler, 8 steps, with AdamW and with SGD: Adam's
normalised steps cannot see gradients of the wrong scale, SGD's can) agree step by step to a
relative 2.3e-7 at most (measured); ``TRAJECTORY_RTOL`` is 3x that, rounded up.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scripts.ddp_worker import OPTIMIZERS, RUNS, SAMPLINGS

WORKER = Path(__file__).resolve().parent / "scripts" / "ddp_worker.py"
UPDATE_TOLERANCE = 2.5e-6
TRAJECTORY_RTOL = 1e-6


def _run_single_and_double(tmp, *args, port):
    """The worker once in one process and once as 2 gloo processes under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[2])}
    single, double = tmp / "single.pt", tmp / "double.pt"
    subprocess.run(
        [sys.executable, str(WORKER), str(single), *args],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    launch += [f"--master_port={port}", str(WORKER), str(double), *args]
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    # each worker's exception line first (the first failing rank's is otherwise buried)
    errors = re.findall(r"^\[rank\d+\]: \w+(?:Error|Exception)\b.*$", proc.stderr, re.M)
    assert proc.returncode == 0, "\n".join(errors) + "\n" + proc.stderr[-2000:]
    return single, double


@pytest.fixture(scope="module")
def updates(tmp_path_factory):
    single, double = _run_single_and_double(tmp_path_factory.mktemp("ddp"), port=29537)
    return torch.load(single), torch.load(double)


def test_worker_ran_every_method(updates):
    single, double = updates
    assert set(single) == set(double) == set(RUNS)


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_match_one(updates, name):
    single, double = updates
    assert single[name].norm() > 0
    error = ((single[name] - double[name]).norm() / single[name].norm()).item()
    print(f"[ddp] {name}: relative error {error:.3g}")
    assert error < UPDATE_TOLERANCE, f"{name}: relative error {error:.3g}"


# ---------------------------------------------------------------- every batch mode and sampler
@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    """8 steps (2 epochs) + validation, per batch mode, sampler and optimizer, on 1 and on 2
    processes."""
    tmp = tmp_path_factory.mktemp("ddp_trajectory")
    single, double = _run_single_and_double(tmp, "trajectory", port=29538)
    load = torch.load
    return (
        load(single.with_suffix(".rank0.pt")),
        load(double.with_suffix(".rank0.pt")),
        load(double.with_suffix(".rank1.pt")),
    )


TRAJECTORIES = [
    f"{mode}/{sampling}/{optimizer}"
    for mode in ("homogeneous", "mixed")
    for sampling in SAMPLINGS
    for optimizer in OPTIMIZERS
]


@pytest.mark.parametrize("run", TRAJECTORIES)
def test_loss_trajectory_matches_single_process(trajectories, run):
    """Same global batches, same losses step after step."""
    single, rank0, rank1 = (t[run] for t in trajectories)
    one, two = torch.tensor(single["losses"]), torch.tensor(rank0["losses"])
    assert len(one) == len(two) == 8
    error = ((one - two).abs() / one.abs()).max().item()
    print(f"[ddp] {run}: largest relative loss error {error:.3g}")
    assert error < TRAJECTORY_RTOL, (one, two)
    assert rank0["losses"] == rank1["losses"]  # every process logs the global loss


@pytest.mark.parametrize("run", TRAJECTORIES)
def test_ranks_split_the_global_batch(trajectories, run):
    single, rank0, rank1 = (t[run] for t in trajectories)
    for step, (whole, a, b) in enumerate(
        zip(single["examples"], rank0["examples"], rank1["examples"], strict=True)
    ):
        if run.startswith("homogeneous"):
            # one task per step, the same task on every process: its gradients average together
            assert len(a) == len(b) == 1 and set(a) == set(b), (step, a.keys(), b.keys())
        for task in set(a) | set(b):
            # the two processes' rows, put together, are exactly the single process's batch (as
            # multisets: a task smaller than a batch wraps around into its next shuffled pass)
            rows = a.get(task, []) + b.get(task, [])
            assert sorted(rows) == sorted(whole[task]), f"step {step}, task {task}"
            assert a.get(task) and b.get(task) or len(whole[task]) < 2, (step, task)


@pytest.mark.parametrize("run", ["homogeneous/proportional/adamw", "mixed/temperature/sgd"])
def test_validation_metrics_are_synchronised(trajectories, run):
    """Each process sees half of the validation split; the logged metrics are the full split's
    (equal on both processes and equal to the single-process values)."""
    single, rank0, rank1 = (t[run] for t in trajectories)
    assert {"val/a/accuracy", "val/b/loss", "val/mean"} <= set(single["validation"])
    assert set(rank0["validation"]) == set(single["validation"])
    for key, value in single["validation"].items():
        assert rank0["validation"][key] == pytest.approx(rank1["validation"][key], abs=1e-6), key
        assert rank0["validation"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
