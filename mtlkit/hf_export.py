"""One task of an mtlkit export as a standalone Hugging Face model folder.

``transformers.pipeline(...)`` and ``AutoModelFor...from_pretrained`` load the folder as it is,
with the task's labels (``id2label``, ``label2id``, ``problem_type``)::

    sequence_classification  AutoModelForSequenceClassification  single_label_classification
    multi_label              AutoModelForSequenceClassification  multi_label_classification
    regression               AutoModelForSequenceClassification  regression (num_labels 1)
    token_classification     AutoModelForTokenClassification

The mapping is faithful, and checked on a probe input after writing:

* Token classification: transformers' head is dropout and one linear layer on every token
  state, which is mtlkit's head: the weights are copied.
* Sequence-level tasks read one vector. transformers' heads read the first token's state, so
  only mtlkit's ``cls`` pooling maps; a model trained with ``mean`` pooling (an average over the
  tokens, which no standard head computes) raises :class:`~mtlkit.errors.ConfigError`. The
  standard heads put a ``tanh`` layer before the classifier: BERT's pooler (``tanh(W_p h + b_p)``)
  and RoBERTa's ``classifier.dense``. mtlkit's head is linear in ``h``; the export makes that
  layer near-identity, ``W_p = eps * I``, ``b_p = 0``, and divides the classifier's weight by
  ``eps``: ``W / eps * tanh(eps * h) = W h - W (eps^2 h^3) / 3 + ...``, a relative change of
  ``(eps |h|)^2 / 3`` per coordinate, 3e-7 for ``eps = 1e-5`` and ``|h| = 17``.
* Regression: the head predicts the normalised target; its ``target_scale`` and
  ``target_shift`` are folded into the classifier, so the logit is the value on the data's
  scale (and the text-classification pipeline applies no function to a regression's output).

A ``README.md`` model card lists the task, its labels, metrics, training data and the git commit.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)

from mtlkit.errors import ConfigError
from mtlkit.inference import ExportedModel
from mtlkit.model.source import quiet_transformers

__all__ = ["CARD_FILE", "EPS", "export_hf_task", "git_commit", "model_card", "push_to_hub"]

#: The scale of the near-identity ``tanh`` layer before a sequence-level classifier.
EPS = 1e-5
#: Model-card facts stored next to an mtlkit export (metrics, data, commit), read for each card.
CARD_FILE = "card.json"
#: mtlkit output kind -> (transformers auto class, problem_type).
KINDS: dict[str, tuple[Any, str | None]] = {
    "sequence_classification": (AutoModelForSequenceClassification, "single_label_classification"),
    "multi_label": (AutoModelForSequenceClassification, "multi_label_classification"),
    "regression": (AutoModelForSequenceClassification, "regression"),
    "token_classification": (AutoModelForTokenClassification, None),
}


def export_hf_task(
    source: str | Path | ExportedModel,
    task: str,
    output: str | Path,
    atol: float = 1e-4,
    card_facts: str | Path | None = None,
) -> Path:
    """Writes ``task`` of the mtlkit export ``source`` as a Hugging Face folder ``output``.

    Args:
        source: A folder written by ``mtlkit export`` (or the loaded model).
        task: The task to export.
        output: The folder to write (model, tokenizer, ``README.md``).
        atol: Largest difference allowed between mtlkit's and transformers' logits on a probe.
        card_facts: The export folder whose ``card.json`` the model card reads (default:
            ``source`` when it is a folder).

    Returns:
        The folder.

    Raises:
        ConfigError: An unknown task, a task type without a standard transformers head, mean
            pooling for a sequence-level task, an encoder whose classification head has no
            faithful mapping, or outputs that differ after the export.
    """
    model = source if isinstance(source, ExportedModel) else ExportedModel.from_folder(source)
    if task not in model.tasks:
        raise ConfigError(
            f"cannot export task {task!r} to transformers: the model has {model.task_names}"
        )
    spec = model.tasks[task].spec
    kind = spec["kind"]
    if kind not in KINDS:
        raise ConfigError(
            f"cannot export task {task!r} to transformers: its kind {kind!r} has no standard "
            f"transformers head (exportable: {sorted(KINDS)})"
        )
    if spec["level"] == "sequence" and model.pooling != "cls":
        raise ConfigError(
            f"cannot export task {task!r} to transformers: the model pools the tokens by "
            f"{model.pooling!r}, and transformers' sequence classification heads read the first "
            "token's state; train with `model.init_args.pooling: cls` to export it (the "
            "multi-task export serves mean pooling with mtlkit.inference.ExportedModel)"
        )
    auto, problem_type = KINDS[kind]
    labels = model.model.decoders[task].labels if kind != "regression" else [task]
    encoder = model.encoder.model
    config = AutoConfig.for_model(**encoder.config.to_dict())
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.problem_type = problem_type
    with quiet_transformers():
        hf = auto.from_config(config)
    _copy_encoder(hf, encoder, task)
    weight, bias = _head_weights(model, task, spec)
    with torch.no_grad():
        if spec["level"] == "token":
            _linear(hf, "classifier", task).weight.copy_(weight)
            _linear(hf, "classifier", task).bias.copy_(bias)
        else:
            _set_sequence_head(hf, weight, bias, task)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    hf.eval().save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    _check_same_outputs(model, task, auto, folder, atol)
    facts = _card_facts(card_facts if card_facts is not None else source)
    (folder / "README.md").write_text(model_card(model, [task], facts, hf_kind=type(hf).__name__))
    return folder


def _copy_encoder(hf: PreTrainedModel, encoder: PreTrainedModel, task: str) -> None:
    base = hf.base_model
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = base.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing or unexpected:
        raise ConfigError(
            f"cannot export task {task!r}: the encoder's weights do not fit "
            f"{type(hf).__name__} (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def _head_weights(model: ExportedModel, task: str, spec: dict[str, Any]) -> tuple[Any, Any]:
    linear = model.tasks[task]
    weight = linear.weight.detach().float().clone()
    bias = linear.bias
    bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float().clone()
    if spec["kind"] == "regression":  # the value on the data's scale: z * scale + shift
        state = spec.get("head_state") or {}
        scale, shift = float(state.get("target_scale", 1.0)), float(state.get("target_shift", 0.0))
        weight, bias = weight * scale, bias * scale + shift
    return weight, bias


def _linear(module: nn.Module, name: str, task: str) -> nn.Linear:
    layer = getattr(module, name, None)
    if not isinstance(layer, nn.Linear):
        raise ConfigError(
            f"cannot export task {task!r}: {type(module).__name__}.{name} is not one linear "
            "layer, so mtlkit's head has no faithful place in it"
        )
    return layer


def _set_sequence_head(hf: PreTrainedModel, weight: Any, bias: Any, task: str) -> None:
    """The near-identity ``tanh`` layer and the rescaled classifier (see the module docstring)."""
    pooler = getattr(hf.base_model, "pooler", None)
    head = getattr(hf, "classifier", None)
    if pooler is not None and isinstance(getattr(pooler, "activation", None), nn.Tanh):
        inner, outer = _linear(pooler, "dense", task), _linear(hf, "classifier", task)  # BERT
    elif head is not None and hasattr(head, "dense") and hasattr(head, "out_proj"):
        # RoBERTa: tanh between the two (another activation fails the check after writing)
        inner, outer = _linear(head, "dense", task), _linear(head, "out_proj", task)
    else:
        raise ConfigError(
            f"cannot export task {task!r}: {type(hf).__name__} ({hf.config.model_type}) has no "
            "tanh pooler to make near-identity (supported: BERT-style pooler + classifier, "
            "RoBERTa-style classifier.dense + out_proj)"
        )
    size = inner.in_features
    inner.weight.copy_(torch.eye(size) * EPS)
    inner.bias.zero_()
    outer.weight.copy_(weight / EPS)
    outer.bias.copy_(bias)


def _check_same_outputs(
    model: ExportedModel, task: str, auto: Any, folder: Path, atol: float
) -> None:
    """Reloads the folder as a user would and compares its logits with mtlkit's on a probe."""
    probe = ["a short probe sentence", "another one that is a little bit longer than the first"]
    spec = model.tasks[task].spec
    pair = spec.get("text_pair_column") is not None
    inputs = [(t, t) for t in probe] if pair else probe
    ours = model.logits(inputs, tasks=[task])[task]
    with quiet_transformers():
        hf = auto.from_pretrained(str(folder)).eval()
    level = spec["level"]
    for item, expected in zip(inputs, ours, strict=True):
        text, second = item if pair else (item, None)
        if level == "token":
            enc = model.tokenizer(text.split(), is_split_into_words=True, return_tensors="pt")
        else:
            enc = model.tokenizer(text, second, return_tensors="pt")
        with torch.no_grad():
            got = hf(**enc).logits[0].float()
        if level != "token" and spec["kind"] == "regression":
            expected = _as_value(expected, spec)
        diff = float((got.reshape(expected.shape) - expected).abs().max())
        if diff > atol:
            raise ConfigError(
                f"exported task {task!r} gives other outputs in transformers than in mtlkit "
                f"(max |difference| {diff:.2e} > {atol})"
            )


def _as_value(logits: Any, spec: dict[str, Any]) -> Any:
    state = spec.get("head_state") or {}
    return logits * float(state.get("target_scale", 1.0)) + float(state.get("target_shift", 0.0))


def _card_facts(source: Any) -> dict[str, Any]:
    if isinstance(source, ExportedModel):
        return {}
    path = Path(source) / CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: mtlkit's source), with
    ``-dirty`` when it has uncommitted changes; ``None`` outside a checkout."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def model_card(
    model: ExportedModel, tasks: list[str], facts: dict[str, Any], hf_kind: str | None = None
) -> str:
    """A ``README.md`` model card: tasks, labels, metrics, training data and the git commit.

    Args:
        model: The exported model.
        tasks: The tasks the folder serves.
        facts: ``metrics`` (``{"val/<task>/<metric>": value}``), ``data`` (``{task:
            description}``) and ``commit``, as :data:`CARD_FILE` stores them.
        hf_kind: The transformers class of a single-task folder (``None``: an mtlkit export).
    """
    metrics, data = facts.get("metrics") or {}, facts.get("data") or {}
    base = (
        getattr(model.encoder.model.config, "_name_or_path", "")
        or model.encoder.model.config.model_type
    )
    lines = ["---", "library_name: " + ("transformers" if hf_kind else "mtlkit")]
    if hf_kind:
        tag = "token-classification" if "Token" in hf_kind else "text-classification"
        lines.append(f"pipeline_tag: {tag}")
    lines += ["tags:", "- mtlkit", "---", ""]
    title = tasks[0] if hf_kind else "multi-task model"
    lines += [f"# {title}", ""]
    if hf_kind:
        lines += [
            f"Task `{tasks[0]}` of a multi-task model trained with mtlkit, as a plain "
            f"`{hf_kind}` (load it with `transformers.pipeline` or "
            f"`{_auto_name(hf_kind)}.from_pretrained`).",
            "",
        ]
    else:
        lines += ["An mtlkit export: `mtlkit.inference.ExportedModel.from_folder(path)`.", ""]
    lines += [
        f"- Encoder: `{base}` ({model.encoder.model.config.model_type}), pooling `{model.pooling}`"
    ]
    lines += [f"- Git commit: `{facts.get('commit') or 'unknown'}`", "", "## Tasks", ""]
    lines += ["| task | kind | labels | training data |", "|---|---|---|---|"]
    for name in tasks:
        spec = model.tasks[name].spec
        labels = (
            "-" if spec["kind"] == "regression" else ", ".join(model.model.decoders[name].labels)
        )
        lines.append(f"| {name} | {spec['kind']} | {labels} | {data.get(name, 'unknown')} |")
    lines += ["", "## Metrics", ""]
    rows = [(k, v) for k, v in sorted(metrics.items()) if k.count("/") == 2]
    rows = [(k, v) for k, v in rows if k.split("/")[1] in tasks]
    if rows:
        lines += ["| split | task | metric | value |", "|---|---|---|---|"]
        for key, value in rows:
            split, name, metric = key.split("/", 2)
            lines.append(f"| {split} | {name} | {metric} | {value:.4f} |")
    else:
        lines.append("No evaluation metrics were stored with the checkpoint.")
    return "\n".join(lines) + "\n"


def _auto_name(hf_kind: str) -> str:
    return (
        "AutoModelForTokenClassification"
        if "Token" in hf_kind
        else ("AutoModelForSequenceClassification")
    )


def push_to_hub(
    folder: str | Path, repo_id: str, token: str | None = None, private: bool = True
) -> str:
    """Uploads ``folder`` to the Hugging Face Hub repository ``repo_id`` (created if needed).

    Returns:
        The repository's URL.

    Raises:
        ConfigError: No token, offline mode, or the Hub refused (the reason in the message).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    token = token or get_token()
    if not token:
        raise ConfigError("push_to_hub needs a Hugging Face token: `hf auth login` or HF_TOKEN")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as err:  # noqa: BLE001 - offline, network or permission: one line
        raise ConfigError(f"push_to_hub {repo_id!r} failed: {type(err).__name__}: {err}") from err
    return str(url)
