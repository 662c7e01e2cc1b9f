"""The private attributes of other libraries that :mod:`mtlkit._compat` uses: each test fails
if an upgrade removes one or changes what mtlkit relies on."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from datasets import Dataset
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, LambdaLR, SequentialLR
from torchjd.aggregation import NashMTL
from torchjd.autogram import Engine

from mtlkit import _compat
from mtlkit.cli import MtlkitCLI


def test_dataset_fingerprint_is_the_same_for_the_same_data_and_transforms():
    def make() -> Dataset:
        return Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0]})

    a, b = make(), make()
    fp = _compat.dataset_fingerprint(a)
    assert isinstance(fp, str) and fp
    assert fp == _compat.dataset_fingerprint(b)
    assert _compat.dataset_fingerprint(a.select([0, 2])) == _compat.dataset_fingerprint(
        b.select([0, 2])
    )
    assert _compat.dataset_fingerprint(a.select([0, 1])) != _compat.dataset_fingerprint(
        a.select([0, 2])
    )
    other = Dataset.from_dict({"text": ["a", "b", "d"], "label": [0, 1, 0]})
    assert _compat.dataset_fingerprint(other) != fp


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)


def test_chained_schedulers_are_the_children_in_order():
    opt = _optimizer()
    first, second = LambdaLR(opt, lambda s: 1.0), LambdaLR(opt, lambda s: 0.5)
    assert _compat.chained_schedulers(SequentialLR(opt, [first, second], milestones=[2])) == [
        first,
        second,
    ]
    opt = _optimizer()
    a, b = LambdaLR(opt, lambda s: 1.0), LambdaLR(opt, lambda s: 1.0)
    assert _compat.chained_schedulers(ChainedScheduler([a, b])) == [a, b]
    assert _compat.chained_schedulers(a) == []


def test_last_lrs_is_the_list_get_last_lr_reads():
    opt = _optimizer()
    scheduler = LambdaLR(opt, lambda s: 0.5**s)
    opt.step()
    scheduler.step()
    values = _compat.last_lrs(scheduler)
    assert values == scheduler.get_last_lr() == [0.5]
    values.append(0.25)  # a parameter group added later (extend_schedulers)
    assert scheduler.get_last_lr() == [0.5, 0.25]


def test_rebuild_nash_problem_starts_from_the_restored_alpha():
    weighting = NashMTL(n_tasks=2).weighting
    weighting.prvs_alpha = np.array([0.3, 0.7])
    _compat.rebuild_nash_problem(weighting)
    assert np.allclose(weighting.prvs_alpha_param.value, [0.3, 0.7])
    assert weighting.prob is not None


def test_reset_engine_forgets_a_recorded_forward():
    model = nn.Linear(3, 2)
    engine = Engine(model, batch_dim=None)
    model(torch.ones(3))  # recorded, never used
    _compat.reset_engine(engine)
    losses = model(torch.ones(3))
    gramian = engine.compute_gramian(losses)
    assert gramian.shape == (2, 2)


def test_lightning_still_reparses_checkpoint_hparams_through_the_hook_mtlkit_overrides():
    # mtlkit.cli overrides LightningCLI._parse_ckpt_path (no public switch turns the re-parse
    # off); a renamed hook would silently bring the re-parse back.
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__)
    assert "_parse_ckpt_path" in vars(MtlkitCLI)


def test_fused_or_foreach_picks_fused_for_cpu_floats():
    import torch

    from mtlkit._compat import fused_or_foreach

    assert fused_or_foreach([torch.zeros(3, requires_grad=True)])[0] is True
    assert fused_or_foreach([torch.zeros(3, dtype=torch.float64)])[0] is True


def test_disable_fused_amp_unscaling_sets_the_attribute_torch_and_lightning_read():
    import torch

    from mtlkit._compat import disable_fused_amp_unscaling

    optimizer = torch.optim.AdamW([torch.zeros(2, requires_grad=True)], fused=True)
    assert optimizer._step_supports_amp_scaling is True  # torch's fused kernel unscales itself
    disable_fused_amp_unscaling(optimizer)
    assert optimizer._step_supports_amp_scaling is False


def test_has_causal_attention_reads_the_attention_modules_flag():
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    small = dict(vocab_size=99, num_hidden_layers=1, num_attention_heads=2, hidden_size=8)
    assert _compat.has_causal_attention(GPT2Model(GPT2Config(**small)))
    assert not _compat.has_causal_attention(BertModel(BertConfig(**small, intermediate_size=8)))
