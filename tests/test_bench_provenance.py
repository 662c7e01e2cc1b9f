"""Provenance of benchmark results: git state on a real repository, the dirty-tree refusal,
what ``write_result`` records, hashes against published test vectors, and the README guard."""

import json
import subprocess

import pytest

from benchmarks import common, update_readme

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_git_state_of_a_real_repository(tmp_path, tmp_path_factory):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    state = common.git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "a.txt").write_text("two")
    two = common.git_state(tmp_path)
    assert two["dirty"] is True and two["commit"] == state["commit"]  # a changed tracked file
    (tmp_path / "a.txt").write_text("three")
    assert common.git_state(tmp_path)["changes"] != two["changes"]  # another dirty state
    _git(tmp_path, "checkout", "-q", "a.txt")
    (tmp_path / "new.py").write_text("x = 1")
    assert common.git_state(tmp_path)["dirty"] is True  # an untracked file
    (tmp_path / ".gitignore").write_text("new.py\n.gitignore\n")
    assert common.git_state(tmp_path) == state  # ignored files do not count
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "suite.json").write_text("{}")
    assert common.git_state(tmp_path) == state  # results written by a benchmark do not count
    (tmp_path / "benchmarks" / "run.py").write_text("x = 2")
    assert common.git_state(tmp_path)["dirty"] is True  # a benchmark's code does
    (tmp_path / "benchmarks" / "run.py").unlink()
    plain = tmp_path_factory.mktemp("plain")  # not a repository: untraceable, so "dirty"
    assert common.git_state(plain) == {"commit": "unknown", "dirty": True}


def test_thin_and_max_move_by_hand():
    from benchmarks.recorder import max_move, thin

    series = [(i, 1.0 + 0.01 * i) for i in range(11)]
    assert thin(series, 3) == [(0, 1.0), (5, 1.05), (10, 1.1)]  # first, middle, last
    assert thin(series, 20) == series
    weights = {"a": [(0, 1.0), (1, 1.2), (2, 0.7)], "b": [(0, 0.5), (1, 0.5)]}
    assert max_move(weights) == pytest.approx(0.3)  # |0.7 - 1.0|
    assert max_move({}) == 0.0


def test_require_clean(monkeypatch):
    monkeypatch.setattr(common, "git_state", lambda cwd=None: {"commit": "c" * 40, "dirty": True})
    with pytest.raises(SystemExit, match="uncommitted changes"):
        common.require_clean(False)
    assert common.require_clean(True) is False
    monkeypatch.setattr(common, "git_state", lambda cwd=None: {"commit": "c" * 40, "dirty": False})
    assert common.require_clean(False) is True


@pytest.mark.parametrize(
    "dirty,asked,expected", [(False, True, True), (True, True, False), (False, False, False)]
)
def test_write_result_records_provenance(tmp_path, monkeypatch, dirty, asked, expected):
    monkeypatch.setenv("MTLKIT_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(common, "git_state", lambda cwd=None: {"commit": "d" * 40, "dirty": dirty})
    path = common.write_result("x", {"for_readme": True, "value": 1}, "| x |\n", for_readme=asked)
    payload = json.loads(path.read_text())
    assert payload["for_readme"] is expected  # the payload cannot override it
    assert payload["commit"] == "d" * 40 and payload["dirty"] is dirty
    assert payload["machine"]["cpu_count"] and payload["value"] == 1
    assert (tmp_path / "x.md").read_text() == "| x |\n"


def test_hashes_against_test_vectors(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert common.file_sha256(tmp_path / "abc") == ABC_SHA256
    assert common.config_hash("abc") == ABC_SHA256[:16]


def _result(folder, name, commit="e" * 40, dirty=False, for_readme=True, **extra):
    payload = {"commit": commit, "dirty": dirty, "for_readme": for_readme, **extra}
    (folder / f"{name}.json").write_text(json.dumps(payload))
    (folder / f"{name}.md").write_text(f"table {name}\n")


README = (
    "a\n<!-- results:one -->\nold\n<!-- /results:one -->\n"
    "b\n<!-- results:two -->\n<!-- /results:two -->\n"
)


def test_readme_filled_from_clean_results_of_one_commit(tmp_path):
    _result(tmp_path, "one")
    _result(tmp_path, "two", runs={"row": [{"commit": "e" * 40}]})
    text = update_readme.update(README, tmp_path)
    assert "<!-- results:one -->\ntable one\n<!-- /results:one -->" in text
    assert "table two" in text and "old" not in text


@pytest.mark.parametrize(
    "two,message",
    [
        ({"dirty": True}, "two.json: made from a dirty tree"),
        ({"for_readme": False}, "two.json: marked for_readme: false"),
        ({"commit": "f" * 40}, "different commits"),
        ({"runs": {"row": [{"commit": "f" * 40}]}}, "two.json: rows from several commits"),
        ({"rows": {"row": {"dirty": True}}}, "two.json: made from a dirty tree"),
    ],
)
def test_readme_refuses_untraceable_results(tmp_path, two, message):
    _result(tmp_path, "one")
    _result(tmp_path, "two", **two)
    with pytest.raises(SystemExit, match=message):
        update_readme.update(README, tmp_path)


def test_readme_refuses_results_without_provenance(tmp_path):
    _result(tmp_path, "one")
    (tmp_path / "two.json").write_text(json.dumps({"commit": "e" * 40}))
    with pytest.raises(SystemExit, match="two.json: records no provenance"):
        update_readme.update(README, tmp_path)
    (tmp_path / "two.json").unlink()
    with pytest.raises(SystemExit, match="two.json: no results file"):
        update_readme.update(README, tmp_path)


def test_readme_combines_commits_only_with_the_same_library(tmp_path, tmp_path_factory):
    """Two files from different commits fill the README when mtlkit/, configs/ and the pins
    are identical between them (a benchmark added later), never when the library changed."""
    repo = tmp_path_factory.mktemp("repo")

    def commit(path, text):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
        _git(repo, "add", path)
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", path)
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True)
        return out.stdout.decode().strip()

    _git(repo, "init", "-q")
    first = commit("mtlkit/model.py", "x = 1")
    later = commit("benchmarks/peers.py", "y = 1")  # a new benchmark, same library
    commit("README.md", "words")
    _result(tmp_path, "one", commit=first)
    _result(tmp_path, "two", commit=later)
    assert update_readme.check(["one", "two"], tmp_path, repo) == sorted([first, later])
    assert "table two" in update_readme.update(README, tmp_path, repo, head=True)
    for path in ("mtlkit/model.py", "configs/quickstart.yaml", "constraints.txt"):
        changed = commit(path, "x = 2")
        _result(tmp_path, "two", commit=changed)
        with pytest.raises(SystemExit, match=f"library differs \\(.*{path}"):
            update_readme.update(README, tmp_path, repo)
    _result(tmp_path, "two", commit=later)  # both before the library changed: not from HEAD
    assert update_readme.check(["one", "two"], tmp_path, repo) == sorted([first, later])
    with pytest.raises(SystemExit, match="library changed since .* would not reproduce from HEAD"):
        update_readme.update(README, tmp_path, repo, head=True)
