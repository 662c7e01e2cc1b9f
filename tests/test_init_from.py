"""Model-based transfer: ``init_from`` loads a trained model's encoder (and chosen heads)."""

from __future__ import annotations

import pytest
import torch
from helpers import quiet_trainer, tiny_model, toy_datamodule, toy_task, toy_texts
from torch import nn

from mtlkit.data import InMemory
from mtlkit.errors import ConfigError
from mtlkit.export import export_model
from mtlkit.model import HFEncoder
from mtlkit.tasks import SequenceClassification
from mtlkit.testing import TINY_ENCODER
from mtlkit.training import MultiTaskModule
from mtlkit.transfer.init import initialise_from


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A checkpoint written by a real (3-step) fit, the fitted model and its export."""
    tmp = tmp_path_factory.mktemp("source")
    torch.manual_seed(0)
    dm = toy_datamodule([toy_task("a"), toy_task("b", seed=1)])
    model = tiny_model(dm.tasks)
    trainer = quiet_trainer(tmp, max_steps=3, limit_val_batches=0, enable_model_summary=False)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp / "source.ckpt")
    export_model(model, dm.tokenizer, tmp / "exported")
    return {"ckpt": str(tmp / "source.ckpt"), "folder": str(tmp / "exported"), "model": model}


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def built(module: MultiTaskModule) -> MultiTaskModule:
    """The module's model built as a Trainer builds it (``configure_model``: init_from is read)."""
    module.configure_model()
    return module


def three_label_task(name: str) -> SequenceClassification:
    texts, _ = toy_texts(12)
    source = InMemory({"train": {"text": texts, "label": [i % 3 for i in range(12)]}})
    return SequenceClassification(name=name, source=source, num_labels=3)


def test_encoder_loaded_new_head_stays_fresh(source):
    torch.manual_seed(7)
    fresh = tiny_model([toy_task("a"), toy_task("c")])
    torch.manual_seed(7)
    model = built(tiny_model([toy_task("a"), toy_task("c")], init_from=source["ckpt"]))
    assert_same(state(model.encoder.model), state(source["model"].encoder.model))
    # The heads are exactly what the same seed gives without init_from: untouched.
    assert_same(state(model.heads), state(fresh.heads))
    assert not torch.equal(model.heads["a"][1].weight, source["model"].heads["a"][1].weight)
    report = model.init_report
    assert report.loaded == ["encoder"]
    assert report.encoder_tensors == len(state(source["model"].encoder.model)) == 37
    assert report.new == ["heads.a", "heads.c"]
    assert report.skipped == ["heads.a", "heads.b"]


def test_init_heads_list_and_mapping(source):
    model = built(
        tiny_model([toy_task("a"), toy_task("x")], init_from=source["ckpt"], init_heads=["a"])
    )
    assert_same(state(model.heads["a"]), state(source["model"].heads["a"]))
    assert model.init_report.new == ["heads.x"] and "heads.a" in model.init_report.loaded
    mapped = built(tiny_model([toy_task("x")], init_from=source["ckpt"], init_heads={"x": "b"}))
    assert_same(state(mapped.heads["x"]), state(source["model"].heads["b"]))
    assert mapped.init_report.heads == {"x": "b"}
    assert mapped.init_report.skipped == ["heads.a"]


def test_from_exported_folder(source):
    model = built(tiny_model([toy_task("b")], init_from=source["folder"], init_heads=["b"]))
    assert_same(state(model.encoder.model), state(source["model"].encoder.model))
    assert_same(state(model.heads["b"]), state(source["model"].heads["b"]))


def test_keeps_requires_grad_and_is_called_directly(source):
    model = tiny_model([toy_task("a")])
    for p in model.encoder.embeddings.parameters():
        p.requires_grad_(False)
    report = initialise_from(model, source["ckpt"], None)
    assert report is model.init_report
    assert not any(p.requires_grad for p in model.encoder.embeddings.parameters())
    assert all(p.requires_grad for p in model.encoder.layers.parameters())
    assert_same(state(model.encoder.model), state(source["model"].encoder.model))


def test_keep_layers_student_takes_the_chosen_source_layer(source):
    encoder = HFEncoder(config=dict(TINY_ENCODER), keep_layers=[1])
    student = built(MultiTaskModule(encoder, [toy_task("a")], init_from=source["ckpt"]))
    teacher = source["model"].encoder
    assert len(student.encoder.layers) == 1
    assert_same(state(student.encoder.layers[0]), state(teacher.layers[1]))
    assert_same(state(student.encoder.embeddings), state(teacher.embeddings))
    skipped = student.init_report.skipped
    assert "encoder.model.encoder.layer.0.attention.self.query.weight" in skipped
    assert not any(".layer.1." in s for s in skipped)


def test_keep_layers_that_the_source_lacks(source):
    config = dict(TINY_ENCODER, num_hidden_layers=3)
    encoder = HFEncoder(config=config, keep_layers=[2])
    with pytest.raises(ConfigError, match=r"keep_layers \[2\] does not fit the source's 2 layers"):
        built(MultiTaskModule(encoder, [toy_task("a")], init_from=source["ckpt"]))


class PerTaskBias(HFEncoder):
    """A per-task encoder: one learned offset per task on top of the shared states."""

    per_task = True

    def prepare_tasks(self, task_names: list[str]) -> None:
        self.task_bias = nn.ParameterDict(
            {n: nn.Parameter(torch.zeros(self.hidden_size)) for n in task_names}
        )

    def forward(self, input_ids, attention_mask, token_type_ids=None, task=None):
        return super().forward(input_ids, attention_mask, token_type_ids) + self.task_bias[task]


def test_per_task_parameters_stay_new(source):
    model = MultiTaskModule(PerTaskBias(config=dict(TINY_ENCODER)), [toy_task("a")])
    initialise_from(model, source["ckpt"])
    assert_same(state(model.encoder.model), state(source["model"].encoder.model))
    assert "encoder.task_bias.a" in model.init_report.new


def test_lora_encoder_loads_base_weights_and_keeps_adapters_new(source):
    adapters = pytest.importorskip("mtlkit.model.adapters")
    encoder = adapters.LoRAEncoder(config=dict(TINY_ENCODER), r=2)
    model = built(MultiTaskModule(encoder, [toy_task("sst")], init_from=source["ckpt"]))
    own = state(model.encoder.model)  # Hugging Face keys for the frozen weights, plus adapters
    for key, value in state(source["model"].encoder.model).items():
        assert torch.equal(own[key], value), key
    assert any("lora_A.sst" in n for n in model.init_report.new)
    frozen = model.encoder.model.encoder.layer[0].attention.self.query.base_layer.weight
    assert not frozen.requires_grad  # still frozen after loading


def test_soft_sharing_copies_follow_the_loaded_weights(source):
    soft = pytest.importorskip("mtlkit.model.soft_sharing")
    encoder = soft.SoftSharedEncoder(top_layers=1, config=dict(TINY_ENCODER))
    model = built(
        MultiTaskModule(encoder, [toy_task("a"), toy_task("b")], init_from=source["ckpt"])
    )
    loaded = source["model"].encoder.layers[1].parameters()
    for p, q in zip(model.encoder.task_parameters("b"), loaded, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda p: built(
                MultiTaskModule(
                    HFEncoder(config=dict(TINY_ENCODER, vocab_size=200)),
                    [toy_task("a")],
                    init_from=p,
                )
            ),
            r"'embeddings.word_embeddings.weight' has shape \(200, 32\) here but \(155, 32\) in "
            r"the source.*architectures differ.*vocab_size=155",
        ),
        (
            lambda p: built(
                MultiTaskModule(
                    HFEncoder(config=dict(TINY_ENCODER, num_hidden_layers=1)),
                    [toy_task("a")],
                    init_from=p,
                )
            ),
            r"source encoder has 2 layers but this model's has 1; the architectures differ.*"
            r"keep_layers",
        ),
        (
            lambda p: built(tiny_model([toy_task("a")], init_from=p, init_heads={"a": "nope"})),
            r"has no head 'nope' \(for task 'a'\); it has heads \['a', 'b'\]",
        ),
        (
            lambda p: built(tiny_model([three_label_task("a")], init_from=p, init_heads=["a"])),
            r"head 'a' of the source was trained with \{'num_labels': 2\} but task 'a' has "
            r"\{'num_labels': 3\}",
        ),
        (
            lambda p: tiny_model([toy_task("a")], init_heads=["a"]),
            r"init_heads needs init_from",
        ),
        (
            lambda p: built(tiny_model([toy_task("a")], init_from=p + ".missing")),
            r"does not exist",
        ),
    ],
    ids=["shape", "layers", "missing-head", "labels", "no-init-from", "missing-file"],
)
def test_errors_name_the_problem(source, build, message):
    with pytest.raises(ConfigError, match=message):
        build(source["ckpt"])


def test_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "mtlkit.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"is not an exported mtlkit model: it has no heads"):
        built(tiny_model([toy_task("a")], init_from=str(tmp_path)))


def test_failed_init_leaves_the_model_unchanged(source):
    model = tiny_model([three_label_task("a")])
    before = state(model)
    with pytest.raises(ConfigError, match="label set"):
        initialise_from(model, source["ckpt"], ["a"])
    assert_same(state(model), before)  # the encoder was not half-loaded


def test_constructing_the_module_reads_no_file(tmp_path):
    # init_from is a step of building the model (configure_model), not of construction: an
    # export or a resume builds the module from a config whose source may be gone.
    module = tiny_model([toy_task("a")], init_from=str(tmp_path / "gone.ckpt"))
    assert module.heads["a"] is not None and not hasattr(module, "init_report")
    with pytest.raises(ConfigError, match="does not exist"):
        module.configure_model()
