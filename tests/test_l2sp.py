"""L2-SP: the encoder is pulled toward its starting weights, the heads toward 0."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import quiet_trainer, tiny_model, toy_datamodule, toy_task
from lightning.pytorch.callbacks import ModelCheckpoint

from mtlkit.cli import cli_main
from mtlkit.errors import ConfigError
from mtlkit.finetuning import FreezeLayers
from mtlkit.regularization import L2SP
from mtlkit.training import MultiTaskModule

ROOT = Path(__file__).resolve().parents[1]


def _sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def _fit(callbacks, lr=0.1, steps=1, model_cls=None, ckpt_path=None, **trainer_kw):
    """A fit from a fixed start (same weights, same batches) on SGD without a schedule."""
    torch.manual_seed(0)
    dm = toy_datamodule([toy_task("a")])
    kw = dict(optimizer=_sgd(lr), lr_scheduler=None, dropout=0.0)
    model = model_cls(**kw) if model_cls else tiny_model(dm.tasks, **kw)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = dict(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0)
    args.update(trainer_kw)
    trainer = quiet_trainer(tempfile.mkdtemp(), callbacks=callbacks, **args)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, start, trainer


def _encoder(named: dict) -> dict:
    return {n: v for n, v in named.items() if n.startswith("encoder.")}


def _shifted_reference(shift: float) -> dict:
    """The encoder's starting weights (as built by ``_fit``) plus ``shift``."""
    torch.manual_seed(0)
    model = tiny_model([toy_task("a")])
    return {n: p.detach() + shift for n, p in model.encoder.named_parameters()}


def test_one_sgd_step_matches_the_hand_computation():
    lr, alpha, beta, shift = 0.1, 0.3, 0.2, 0.5
    plain, start, _ = _fit([], lr=lr)
    l2sp = L2SP(alpha=alpha, beta=beta)
    # A reference away from the start, so the pull is not zero at the first step.
    l2sp.load_state_dict({"reference": _shifted_reference(shift)})
    pulled, start2, trainer = _fit([l2sp], lr=lr)
    for name, w0 in start.items():
        torch.testing.assert_close(start2[name], w0)  # same starting point
    got, want = dict(pulled.named_parameters()), dict(plain.named_parameters())
    for name, w0 in start.items():
        # SGD: w1 = w0 - lr * (g + alpha * (w0 - ref)) for the encoder, (g + beta * w0) heads.
        if name.startswith("encoder."):
            expected = want[name] - lr * alpha * (-shift)
        elif name.startswith("heads."):
            expected = want[name] - lr * beta * w0
        else:
            continue
        torch.testing.assert_close(got[name], expected, rtol=0, atol=1e-6, msg=name)
    n_encoder = sum(v.numel() for v in _encoder(start).values())
    heads_sq = sum(float(v.pow(2).sum()) for n, v in start.items() if n.startswith("heads."))
    penalty = 0.5 * alpha * shift**2 * n_encoder + 0.5 * beta * heads_sq
    assert float(trainer.callback_metrics["train/l2sp"]) == pytest.approx(penalty, rel=1e-5)


def _distance(model, start) -> float:
    now = _encoder({n: p.detach() for n, p in model.named_parameters()})
    return sum(float((now[n] - w).pow(2).sum()) for n, w in _encoder(start).items()) ** 0.5


def test_encoder_stays_closer_to_its_start():
    free, start, _ = _fit([], lr=0.5, steps=8)
    held, start2, _ = _fit([L2SP(alpha=1.5)], lr=0.5, steps=8)
    d_free, d_held = _distance(free, start), _distance(held, start2)
    assert d_free > 0
    assert d_held < 0.5 * d_free, (d_held, d_free)


def test_frozen_parameters_are_not_pulled():
    l2sp = L2SP(alpha=0.5)
    l2sp.load_state_dict({"reference": _shifted_reference(1.0)})  # pull everything by +1
    model, start, _ = _fit([FreezeLayers(1), l2sp], lr=0.1, steps=2)
    now = dict(model.named_parameters())
    for name, w0 in _encoder(start).items():
        moved = not torch.equal(now[name], w0)
        frozen = ".embeddings." in name or ".layer.0." in name
        assert moved != frozen, name


class LoadsInConfigureModel(MultiTaskModule):
    """Stands for ``init_from``: the encoder changes in ``configure_model``, once."""

    def __init__(self, **kw) -> None:
        from mtlkit.model import HFEncoder
        from mtlkit.testing import TINY_ENCODER

        self.loaded = False
        super().__init__(HFEncoder(config=dict(TINY_ENCODER)), [toy_task("a")], **kw)

    def configure_model(self) -> None:
        super().configure_model()
        if self._trainer is not None and not self.loaded:
            with torch.no_grad():
                for p in self.encoder.parameters():
                    p.add_(3.0)
            self.loaded = True


def test_reference_is_taken_after_the_model_loads_its_weights():
    l2sp = L2SP(alpha=0.1)
    model, start, _ = _fit([l2sp], model_cls=LoadsInConfigureModel, lr=0.0)
    assert model.loaded
    for name, w in l2sp.reference.items():
        torch.testing.assert_close(w, start[f"encoder.{name}"] + 3.0, msg=name)


def test_reference_is_saved_and_restored(tmp_path):
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = L2SP(alpha=0.1)
    model, start, _ = _fit([first, saver], lr=0.5, steps=2, enable_checkpointing=True)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)  # plain tensors only
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("L2SP")]
    assert set(state["reference"]) == {n[len("encoder.") :] for n in _encoder(start)}

    resumed = L2SP(alpha=0.1)
    _fit([resumed], lr=0.5, steps=4, ckpt_path=str(tmp_path / "last.ckpt"))
    trained = _encoder(dict(model.named_parameters()))
    for name, w in resumed.reference.items():
        torch.testing.assert_close(w, start[f"encoder.{name}"], msg=name)  # the first start
        assert not torch.equal(w, trained[f"encoder.{name}"])  # not where training resumed


def test_bad_arguments_and_a_mismatched_reference():
    with pytest.raises(ConfigError, match="alpha and beta"):
        L2SP(alpha=-1.0)
    l2sp = L2SP()
    l2sp.load_state_dict({"reference": {"not.a.parameter": torch.zeros(1)}})
    with pytest.raises(ConfigError, match="do not match"):
        _fit([l2sp])


def test_l2sp_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / "configs/tiny/tiny.yaml")]
    args += ["--config", str(ROOT / "configs/transfer/regimes/l2sp.yaml")]
    args += ["--trainer.max_steps=3", "--trainer.limit_val_batches=0"]
    start = cli_main(args, run=False).model.encoder.state_dict()
    cli = cli_main(["fit", *args])
    (l2sp,) = [c for c in cli.trainer.callbacks if isinstance(c, L2SP)]
    assert (l2sp.alpha, l2sp.beta) == (0.01, 0.0001)
    for name, w in l2sp.reference.items():
        torch.testing.assert_close(w, start[name], rtol=0, atol=0)
    assert float(cli.trainer.callback_metrics["train/l2sp"]) > 0


def test_l2sp_is_a_plain_callback():
    assert isinstance(L2SP(), L.Callback)
