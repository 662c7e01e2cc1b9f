"""Sampling strategies and the multi-task batch sampler."""

import numpy as np
import pytest

from mtlkit.data.batching import MultiTaskBatchSampler, TaskStream
from mtlkit.data.sampling import Annealed, Proportional, Temperature, Uniform
from mtlkit.errors import ConfigError

SIZES = [1000, 100, 10]


def test_formulas_on_hand_made_sizes():
    np.testing.assert_allclose(
        Proportional().probabilities(SIZES, 0), [1000 / 1110, 100 / 1110, 10 / 1110]
    )
    np.testing.assert_allclose(Uniform().probabilities(SIZES, 0), [1 / 3] * 3)
    # T=2: weights sqrt(n) = 31.623, 10, 3.162
    w = np.sqrt(SIZES)
    np.testing.assert_allclose(Temperature(2).probabilities(SIZES, 0), w / w.sum())
    # size cap K=100 (T5): 1000 -> 100
    np.testing.assert_allclose(
        Proportional(size_cap=100).probabilities(SIZES, 0), [100 / 210, 100 / 210, 10 / 210]
    )
    np.testing.assert_allclose(Temperature(1e9).probabilities(SIZES, 0), [1 / 3] * 3, atol=1e-6)


def test_annealed_moves_from_proportional_toward_uniform():
    a = Annealed(1.0, 5.0)
    np.testing.assert_allclose(a.probabilities(SIZES, 0.0), Proportional().probabilities(SIZES, 0))
    np.testing.assert_allclose(a.probabilities(SIZES, 1.0), Temperature(5).probabilities(SIZES, 0))
    # alpha = 1/T moves linearly: halfway alpha = (1 + 0.2)/2 = 0.6
    assert a.temperature_at(0.5) == pytest.approx(1 / 0.6)
    assert (
        a.probabilities(SIZES, 1.0)[2]
        > a.probabilities(SIZES, 0.5)[2]
        > a.probabilities(SIZES, 0)[2]
    )


def test_bad_temperature_is_rejected():
    with pytest.raises(ConfigError, match="temperature"):
        Temperature(0)


def _sampler(mode="homogeneous", strategy=None, **kw):
    args = dict(
        task_names=["a", "b", "c"],
        sizes=SIZES,
        strategy=strategy or Temperature(2),
        batch_size=8,
        mode=mode,
        steps_per_epoch=2000,
        seed=1,
    )
    args.update(kw)
    return MultiTaskBatchSampler(**args)


def assert_binomial_frequencies(counts: np.ndarray, expected: np.ndarray, k: float = 4.5) -> None:
    """Each frequency within ``k`` binomial standard errors of its probability, and every task
    with a probability above 0 drawn: a bound that shrinks with ``p``, so a rare task that is
    never drawn fails (an absolute tolerance larger than ``p`` would let it pass)."""
    n = counts.sum()
    bound = k * np.sqrt(expected * (1 - expected) / n)
    assert np.all(bound < expected), f"n = {n} cannot tell p = {expected.min():.3g} from 0"
    freq = counts / n
    assert np.all(np.abs(freq - expected) <= bound), (freq, expected, bound)
    assert np.all(counts[expected > 0] > 0), counts


HOMOGENEOUS_STEPS = 10_000  # 4.5 standard errors of p = 10/1110 are 0.0042 < p


@pytest.mark.parametrize("strategy", [Proportional(), Uniform(), Temperature(2), Temperature(5)])
def test_homogeneous_task_frequencies_match_formula(strategy):
    sampler = _sampler(strategy=strategy, steps_per_epoch=HOMOGENEOUS_STEPS)
    counts = {"a": 0, "b": 0, "c": 0}
    for plan in sampler:
        (task,) = plan["indices"]
        counts[task] += 1
    assert_binomial_frequencies(
        np.array([counts[t] for t in "abc"]), strategy.probabilities(SIZES, 0)
    )


def test_mixed_example_frequencies_match_formula():
    sampler = _sampler(mode="mixed", batch_size=32, steps_per_epoch=500)
    totals = np.zeros(3)
    for plan in sampler:
        assert sum(len(v) for v in plan["indices"].values()) == 32
        for t, idx in plan["indices"].items():
            totals["abc".index(t)] += len(idx)
    np.testing.assert_allclose(
        totals / totals.sum(), Temperature(2).probabilities(SIZES, 0), atol=0.01
    )


def test_annealed_sampler_shifts_over_training():
    sampler = _sampler(strategy=Annealed(1.0, 5.0), steps_per_epoch=3000)
    plans = list(sampler)
    small_early = sum("c" in p["indices"] for p in plans[:1000])
    small_late = sum("c" in p["indices"] for p in plans[-1000:])
    assert small_late > 2 * small_early


def test_stream_visits_every_example_once_per_pass():
    stream = TaskStream(10, seed=3)
    first, second = stream.take(10), stream.take(10)
    assert sorted(first) == list(range(10)) == sorted(second)
    assert first != second


def test_length_grouping_sorts_windows():
    lengths = np.random.default_rng(0).integers(5, 100, size=64)
    stream = TaskStream(64, seed=0, lengths=lengths, group_size=16)
    order = stream.take(64)
    assert sorted(order) == list(range(64))
    for start in range(0, 64, 16):
        window = lengths[order[start : start + 16]]
        assert list(window) == sorted(window, reverse=True)


def test_state_round_trip_continues_same_sequence():
    reference = _sampler(steps_per_epoch=50)
    reference.set_epoch(0)
    ep0 = list(reference)
    reference.set_epoch(1)
    ep1 = list(reference)

    resumed = _sampler(steps_per_epoch=50)
    resumed.set_epoch(0)
    for plan in list(resumed)[:20]:
        resumed.mark_consumed(plan["epoch"], plan["step"])
    state = resumed.state_dict()

    fresh = _sampler(steps_per_epoch=50)
    fresh.load_state_dict(state)
    fresh.set_epoch(0)
    assert list(fresh) == ep0[20:]
    fresh.set_epoch(1)
    assert list(fresh) == ep1


def test_state_from_other_config_is_rejected():
    state = _sampler().state_dict()
    with pytest.raises(ConfigError, match="does not match"):
        _sampler(seed=2).load_state_dict(state)


@pytest.mark.parametrize("mode", ["homogeneous", "mixed"])
def test_ranks_get_disjoint_examples_of_the_same_tasks(mode):
    # sizes are multiples of the global batch (16), so one step never wraps into a new pass
    kw = dict(mode=mode, steps_per_epoch=30, sizes=[1024, 128, 16])
    plans = [list(_sampler(rank=r, world_size=2, **kw)) for r in (0, 1)]
    whole = list(_sampler(batch_size=16, **kw))  # one process holding the global batch
    for step, (p0, p1, p) in enumerate(zip(*plans, whole, strict=True)):
        i0, i1, i = p0["indices"], p1["indices"], p["indices"]
        assert sum(len(v) for v in (*i0.values(), *i1.values())) == 16, step
        # the two ranks' tasks together are the step's tasks, and a rank misses a task only
        # when the step holds a single example of it (mixed batches)
        assert i0.keys() | i1.keys() == i.keys(), step
        for task, rows in i.items():
            a, b = i0.get(task, []), i1.get(task, [])
            assert a and b or len(rows) < 2, (step, task)
            assert abs(len(a) - len(b)) <= 1, (step, task)
            assert not set(a) & set(b), (step, task)  # disjoint ...
            assert sorted(a + b) == sorted(rows), (step, task)  # ... and together the batch
        if mode == "homogeneous":
            assert i0.keys() == i1.keys() and len(i0) == 1, step
            assert all(len(v) == 8 for v in (*i0.values(), *i1.values())), step


def test_unknown_batch_mode():
    with pytest.raises(ConfigError, match="batch_mode"):
        _sampler(mode="interleaved")


@pytest.mark.parametrize(
    ("rows", "batch_size", "world"), [(1, 4, 2), (5, 2, 2), (7, 3, 3), (8, 4, 2)]
)
def test_eval_batches_are_as_many_on_every_process(rows, batch_size, world):
    """Each DDP forward broadcasts buffers, so every process must run the same number of eval
    batches (a 1-row split gave the second process none: Lightning refused it; 5 rows in
    batches of 2 gave 2 and 1 batches: the processes' collectives no longer matched). Padding
    batches make the counts equal, and the real rows are still each seen exactly once."""
    from mtlkit.data.batching import EvalBatchSampler

    lengths = np.arange(rows) + 3
    plans = [list(EvalBatchSampler("a", lengths, batch_size, r, world)) for r in range(world)]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) >= 1
    real = [i for p in plans for plan in p if not plan.get("padding") for i in plan["indices"]["a"]]
    assert sorted(real) == list(range(rows))
    single = list(EvalBatchSampler("a", lengths, batch_size))
    assert not any(plan.get("padding") for plan in single)


def test_every_sampling_strategy_is_discovered_and_gives_a_distribution():
    """The registry (the import path) lists every strategy; the DDP worker runs each of them
    (tests/test_ddp.py), so a new strategy's file is enough to be covered there."""
    from scripts.ddp_worker import SAMPLINGS

    from mtlkit.registry import sampling_classes

    classes = sampling_classes()
    assert {"Annealed", "Proportional", "Temperature", "Uniform"} <= set(classes)
    assert set(SAMPLINGS) == {name.lower() for name in classes}
    for cls in classes.values():
        p = np.asarray(cls().probabilities(SIZES, 0), dtype=float)
        assert p.shape == (len(SIZES),) and np.all(p > 0) and p.sum() == pytest.approx(1.0)
