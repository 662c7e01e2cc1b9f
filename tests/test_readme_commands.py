"""The README's commands run as written, in order, in one working directory.

Every ``mtlkit`` line of the README's ```bash blocks runs (continuation lines joined, comments
dropped), rewritten only by :data:`SUBSTITUTIONS`: the quickstart and SMS spam configs read
MiniLM and the packaged data (minutes on this CPU), so each is replaced by a config written
here with the same trainer section (run folders, checkpoints, callbacks) and the data settings,
and the tiny encoder, tokenizer and toy tasks of ``configs/tiny/tiny.yaml``. Files a user writes
themselves (:data:`USER_FILES`) are written first; what a command writes (checkpoints, the
export) is read by the commands after it. Lines that are not run are listed in :data:`NOT_RUN`
with the reason; any other line fails the test, so a new command needs a row here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MTLKIT = str(Path(sys.executable).with_name("mtlkit"))

#: README path -> the file written by :func:`_tiny_configs` in the working directory.
SUBSTITUTIONS = {
    "configs/quickstart.yaml": "quickstart_tiny.yaml",
    "configs/transfer/sms_spam.yaml": "sms_spam_tiny.yaml",
}
#: Files the README's commands read that a user writes.
USER_FILES = {
    "my_override.yaml": "trainer:\n  max_epochs: 1\n",
    "texts.txt": "who wrote hamlet?\n\nwhat is a movie\n",
}
#: Lines of the bash blocks that are not run, by their start, and why.
NOT_RUN = {
    "make demo": "creates .venv and trains MiniLM for minutes; the `mtlkit fit --config "
    "configs/quickstart.yaml` it runs is run here on the tiny substitute",
    "make test": "runs the test suite (this test included)",
    "make bench": "the benchmark suite: hours of CPU",
}


def bash_lines(text: str) -> list[str]:
    """The commands of the ```bash blocks of ``text``: continuations joined, comments dropped."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(" ".join(line.split()))
    return lines


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _tiny_configs(cwd: Path) -> None:
    tiny = yaml.safe_load((ROOT / "configs/tiny/tiny.yaml").read_text())
    for original, substitute in SUBSTITUTIONS.items():
        config = yaml.safe_load((ROOT / original).read_text())
        config["model"]["init_args"]["encoder"] = copy.deepcopy(
            tiny["model"]["init_args"]["encoder"]
        )
        data, tiny_data = config["data"]["init_args"], tiny["data"]["init_args"]
        names = [t["init_args"]["name"] for t in data["tasks"]]
        tasks = copy.deepcopy(tiny_data["tasks"])
        if "trec" not in names:  # a transfer target: one toy task under the config's name
            tasks = tasks[:1]
            tasks[0]["init_args"]["name"] = names[0]
        data.update(tokenizer=tiny_data["tokenizer"], tasks=tasks, cache_dir=None)
        (cwd / substitute).write_text(yaml.safe_dump(config, sort_keys=False))


def _rewrite(line: str) -> list[str]:
    for original, substitute in SUBSTITUTIONS.items():
        line = re.sub(rf"(?<![\w/.]){re.escape(original)}(?![\w/])", substitute, line)
    return shlex.split(line)


def _run(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MTLKIT_DEBUG"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_every_readme_command_runs(tmp_path):
    text = README.read_text()
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the commands run from the checkout
    _tiny_configs(tmp_path)
    for name, content in USER_FILES.items():
        (tmp_path / name).write_text(content)
    ran = []
    for line in bash_lines(text):
        if any(line.startswith(start) for start in NOT_RUN):
            continue
        assert line.startswith("mtlkit "), f"README command without a row in NOT_RUN: {line}"
        args = _rewrite(line)
        result = _run(tmp_path, [MTLKIT, *args[1:]])
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        ran.append(line)
        if args[1:2] == ["fit"] and len(ran) == 1:  # the paths the README names after training
            assert (tmp_path / "runs/quickstart/checkpoints/last.ckpt").is_file()
            assert (tmp_path / "runs/quickstart/version_0/config.yaml").is_file()
    assert any(" --ckpt_path " in line for line in ran) and any("export" in line for line in ran)

    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == USER_FILES["texts.txt"].splitlines()

    # The inference example, on the folder the export command wrote.
    example = next(b for b in python_blocks(text) if "ExportedModel.from_folder" in b)
    code, _, shown = example.strip().rpartition("\n")
    call, _, comment = shown.partition("#")
    script = f"import json\n{code}\nprint(json.dumps({call.strip()}))"
    result = _run(tmp_path, [sys.executable, "-c", script])
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = json.loads(result.stdout.strip().splitlines()[-1])
    trec = predicted["trec"][0]
    assert set(trec) == {"label", "probabilities"} and isinstance(trec["probabilities"], dict)
    assert '"probabilities": {' in comment and '"label": ' in comment, comment
    assert isinstance(predicted["sentiment"][0]["value"], float) and '"value": ' in comment


def test_readme_lines_are_all_accounted_for():
    lines = bash_lines(README.read_text())
    assert lines, "no ```bash block found"
    for line in lines:
        assert line.startswith("mtlkit ") or any(line.startswith(s) for s in NOT_RUN), line


def test_config_example_names_real_arguments():
    """The README's YAML example: every task argument exists, and the columns are named."""
    import inspect

    from mtlkit.tasks import SequenceClassification, TokenClassification

    block = re.search(r"^```yaml\n(model:.*?)^```", README.read_text(), flags=re.S | re.M)
    config = yaml.safe_load(block.group(1))
    classes = {
        "mtlkit.tasks.SequenceClassification": SequenceClassification,
        "mtlkit.tasks.TokenClassification": TokenClassification,
    }
    for task in config["data"]["init_args"]["tasks"]:
        accepted = inspect.signature(classes[task["class_path"]]).parameters
        assert set(task["init_args"]) <= set(accepted), task
    pairs = config["data"]["init_args"]["tasks"][0]["init_args"]
    assert {"text_column", "text_pair_column", "label_column"} <= set(pairs)


def test_logging_statements_match_the_quickstart():
    """Task weights are logged every ``log_every_n_steps`` steps (not every step), and gradient
    diagnostics need steps with several tasks, which the quickstart's batches are not."""
    text = " ".join(README.read_text().split())
    quickstart = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
    every = quickstart["trainer"]["log_every_n_steps"]
    assert "task weights are logged every step" not in text.lower()
    assert f"every `trainer.log_every_n_steps` steps (Lightning's default 50; {every} in" in text
    assert quickstart["data"]["init_args"]["batch_mode"] == "homogeneous"
    assert (
        "with the quickstart's `batch_mode: homogeneous` (one task per step) it logs nothing"
        in (text)
    )
