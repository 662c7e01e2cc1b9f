"""Every weighting method under ``mtlkit.weighting`` honours the ``Weighting`` contract.

Methods are discovered automatically, so a new method cannot skip these checks: a class whose
constructor has required arguments must be listed in ``REQUIRED_ARGS``.
"""

from __future__ import annotations

import copy
import inspect
import io

import pytest
import torch
from torch import nn

from mtlkit.registry import weighting_classes
from mtlkit.weighting.base import StepContext, WeightedLoss, Weighting
from mtlkit.weighting.gradient import PCGrad

TASKS = ["a", "b", "c"]
#: Constructor arguments of methods that have required ones.
REQUIRED_ARGS: dict[str, dict] = {
    "StaticWeighting": {"weights": dict.fromkeys(TASKS, 2.0)},
    "GradientWeighting": {"aggregator": PCGrad},  # classes are called: a fresh one per build
}
#: Optional arguments that make a few steps exercise the method's state.
TEST_ARGS: dict[str, dict] = {"DynamicWeightAverage": {"window_steps": 1}}
#: Methods whose weights differ between identical tasks by design, with the reason.
NOT_SYMMETRIC: dict[str, str] = {"RandomLossWeighting": "weights are random draws"}
STEPS = 4


def discover() -> list[type[Weighting]]:
    """Every concrete ``Weighting`` subclass defined in a module of ``mtlkit.weighting``."""
    return list(weighting_classes().values())


METHODS = discover()


def required_args(cls: type[Weighting]) -> list[str]:
    signature = inspect.signature(cls.__init__)
    return [
        p.name
        for p in list(signature.parameters.values())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def build(cls: type[Weighting], tasks=TASKS) -> Weighting:
    missing = sorted(set(required_args(cls)) - set(REQUIRED_ARGS.get(cls.__name__, {})))
    if missing:
        pytest.fail(f"{cls.__name__} needs arguments {missing}: add them to REQUIRED_ARGS")
    kwargs = {**REQUIRED_ARGS.get(cls.__name__, {}), **TEST_ARGS.get(cls.__name__, {})}
    kwargs = {k: v() if isinstance(v, type) else v for k, v in kwargs.items()}
    method = cls(**kwargs)
    method.setup(list(tasks))
    return method


class TinyModel(nn.Module):
    """A shared encoder under one linear head per task, on per-task inputs."""

    def __init__(self, tasks=TASKS, identical: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in tasks})
        if identical:
            for head in self.heads.values():
                head.load_state_dict(self.heads[tasks[0]].state_dict())
        generator = torch.Generator().manual_seed(1)
        self.inputs = {t: torch.randn(6, 4, generator=generator) for t in tasks}
        self.targets = {t: torch.randn(6, 1, generator=generator) + i for i, t in enumerate(tasks)}
        if identical:
            self.inputs = dict.fromkeys(tasks, self.inputs[tasks[0]])
            self.targets = dict.fromkeys(tasks, self.targets[tasks[0]])

    def losses(self, step: int, tasks=None) -> tuple[dict[str, torch.Tensor], StepContext]:
        tasks = list(self.heads) if tasks is None else tasks
        features = {t: self.encoder(self.inputs[t]) for t in tasks}
        losses = {
            t: nn.functional.mse_loss(self.heads[t](features[t]), self.targets[t]) for t in tasks
        }
        ctx = StepContext(
            step=step,
            task_names=list(self.heads),
            shared_parameters=lambda: [p for p in self.encoder.parameters() if p.requires_grad],
            representations=features,
            named_shared_parameters=lambda: [
                (n, p) for n, p in self.encoder.named_parameters() if p.requires_grad
            ],
        )
        return losses, ctx


def train(method: Weighting, model: TinyModel, plan=None) -> list:
    """Real optimisation steps; returns each step's weights and checks the basics.

    ``plan`` lists the tasks present in each step (default: all tasks in ``STEPS`` steps).
    """
    plan = [None] * STEPS if plan is None else plan
    method_params = {id(p) for g in method.parameter_groups() for p in g["params"]}
    assert not method_params & {id(p) for p in model.parameters()}
    optimizer = torch.optim.Adam(
        [{"params": list(model.parameters())}, *method.parameter_groups()], lr=1e-2
    )
    history = []
    for step, tasks in enumerate(plan):
        optimizer.zero_grad()
        losses, ctx = model.losses(step, tasks)
        out = method(losses, ctx)
        assert isinstance(out, WeightedLoss)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        assert set(out.weights) == set(losses)
        assert all(torch.isfinite(w).all() for w in out.weights.values())
        out.loss.backward()
        for name in losses:
            grad = model.heads[name].weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"head {name} got no gradient"
        optimizer.step()
        history.append({t: w.detach().clone() for t, w in out.weights.items()})
    return history


def test_discovery_finds_the_known_methods():
    names = {cls.__name__ for cls in METHODS}
    known = {"EqualWeighting", "StaticWeighting", "UncertaintyWeighting"}
    known |= {"DynamicWeightAverage", "RandomLossWeighting", "FAMO"}
    assert known <= names


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_required_arguments_are_listed(cls):
    missing = sorted(set(required_args(cls)) - set(REQUIRED_ARGS.get(cls.__name__, {})))
    assert not missing, f"{cls.__name__} needs arguments {missing}: add them to REQUIRED_ARGS"


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_training_steps_and_state_round_trip(cls):
    model, method = TinyModel(), build(cls)
    train(method, model)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(cls)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    twin = copy.deepcopy(model)
    for step in range(STEPS, STEPS + 2):  # the same next steps on both
        losses, ctx = model.losses(step)
        twin_losses, twin_ctx = twin.losses(step)
        expected, got = method(losses, ctx), fresh(twin_losses, twin_ctx)
        for name in losses:
            torch.testing.assert_close(got.weights[name], expected.weights[name], rtol=0, atol=0)
        torch.testing.assert_close(got.loss, expected.loss)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_equal_tasks_get_equal_weights(cls):
    if cls.__name__ in NOT_SYMMETRIC:
        pytest.skip(NOT_SYMMETRIC[cls.__name__])
    for step, weights in enumerate(train(build(cls), TinyModel(identical=True))):
        values = torch.stack([weights[t] for t in TASKS])
        torch.testing.assert_close(values, values[:1].expand(3), msg=f"step {step}: {weights}")


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_single_present_task(cls):
    if cls.needs_all_tasks:
        pytest.skip("needs every task in every step (mixed batches)")
    train(build(cls), TinyModel(), plan=[["b"]] * STEPS)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_tasks_missing_from_some_steps(cls):
    """Mixed batches draw per-task counts, so even ``needs_all_tasks`` methods can miss a task."""
    plan = [None, ["a", "c"], None, ["b", "c"], ["a", "c"], None]
    train(build(cls), TinyModel(), plan=plan)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_low_precision_losses(cls):
    model, method = TinyModel(), build(cls)
    for step in range(2):
        losses, ctx = model.losses(step)
        out = method({t: loss.bfloat16() for t, loss in losses.items()}, ctx)
        assert torch.isfinite(out.loss)
        assert all(w.dtype == torch.float32 for w in out.weights.values())
