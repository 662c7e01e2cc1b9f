"""Copies benchmark tables from ``benchmarks/results/*.md`` into the README's marked blocks.

A block ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` receives ``results/NAME.md``.
Before anything is written every block's results JSON (``NAME.json``, or its :data:`SOURCES`
entry) is checked: it must exist, come from a clean tree (``dirty: false``), be marked
``for_readme: true``, and every table (and every row inside a table) must come from one commit;
otherwise one ``SystemExit`` names the file and the README is left as it was.

Tables of different files may come from different clean commits only when the library, the
shipped configs and the dependency pins (:data:`LIBRARY`) are byte-identical between those
commits (``git diff``): a benchmark added later (e.g. the peer comparison) then measures the same
mtlkit as the tables before it. Any change there, or commits git cannot compare, is refused;
so is a library at ``HEAD`` that differs from the results' (:func:`main`): the tables must
reproduce from the checked-out commit.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", flags=re.S)
#: README blocks whose markdown is a part of another benchmark's results.
SOURCES = {"weighting_overhead_8tasks": "weighting_overhead", "findings": "mtl_suite"}
#: What results depend on besides the benchmark scripts: the library, configs and pins.
LIBRARY = ["mtlkit", "configs", "pyproject.toml", "constraints.txt"]


def library_changes(a: str, b: str, repo: Path = ROOT) -> list[str]:
    """Files of :data:`LIBRARY` that differ between commits ``a`` and ``b``; ``SystemExit`` when
    git cannot compare them (an unknown commit)."""
    out = subprocess.run(
        ["git", "diff", "--name-only", a, b, "--", *LIBRARY],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(
            f"results from different commits {a[:10]} and {b[:10]} that git cannot compare here "
            f"({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'git failed'}); "
            "re-run them at one commit"
        )
    return out.stdout.split()


def _commits(payload: dict[str, Any]) -> set[str]:
    """The commit of the file and of each run it holds (rows cached by earlier calls)."""
    runs = payload.get("runs")
    rows = runs.values() if isinstance(runs, dict) else [runs] if isinstance(runs, list) else []
    found = {
        str(r["commit"])
        for row in rows
        if isinstance(row, list)
        for r in row
        if isinstance(r, dict) and "commit" in r
    }
    return {str(payload.get("commit")), *found}


def check(
    names: list[str], results: Path = RESULTS, repo: Path = ROOT, head: bool = False
) -> list[str]:
    """The commits the blocks' results come from (sorted); ``SystemExit`` naming the file when
    one is missing, dirty, not for the README, mixes commits, or when two files come from commits
    whose library differs; with ``head``, also when the library at ``HEAD`` differs from the
    results' (the tables would not reproduce from the checked-out commit)."""
    seen: dict[str, str] = {}
    for name in names:
        path = results / f"{SOURCES.get(name, name)}.json"
        if not path.exists():
            raise SystemExit(f"{path}: no results file for README block {name!r}")
        payload = json.loads(path.read_text())
        commits = _commits(payload)
        if "dirty" not in payload or "for_readme" not in payload:
            raise SystemExit(f"{path}: records no provenance (made before results recorded it)")
        rows = payload.get("rows") if isinstance(payload.get("rows"), dict) else {}
        dirty_rows = any(isinstance(r, dict) and r.get("dirty") for r in rows.values())
        if payload["dirty"] or dirty_rows or any(c.endswith("-dirty") for c in commits):
            raise SystemExit(f"{path}: made from a dirty tree (commit {payload.get('commit')})")
        if payload.get("for_readme") is not True:
            raise SystemExit(f"{path}: marked for_readme: false (a partial, smoke or dirty run)")
        if len(commits) > 1:
            raise SystemExit(f"{path}: rows from several commits {sorted(commits)}")
        seen[str(path)] = commits.pop()
    commits = sorted(set(seen.values()))
    for other in commits[1:]:
        changed = library_changes(commits[0], other, repo)
        if changed:
            listed = ", ".join(f"{p} at {c[:10]}" for p, c in seen.items())
            raise SystemExit(
                f"results from different commits whose library differs ({', '.join(changed[:5])}"
                f"{', ...' if len(changed) > 5 else ''}); re-run them at one commit: {listed}"
            )
    if head and commits:
        changed = library_changes(commits[0], "HEAD", repo)
        if changed:
            raise SystemExit(
                f"the library changed since the results' commit {commits[0][:10]} "
                f"({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''}): the tables "
                "would not reproduce from HEAD; re-run the benchmarks"
            )
    return commits


def update(text: str, results: Path = RESULTS, repo: Path = ROOT, head: bool = False) -> str:
    """``text`` with every block filled from ``results`` (after :func:`check`)."""
    check([m.group(1) for m in BLOCK.finditer(text)], results, repo, head)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        body = (results / f"{name}.md").read_text().strip()
        return f"<!-- results:{name} -->\n{body}\n<!-- /results:{name} -->"

    return BLOCK.sub(fill, text)


def main() -> None:
    README.write_text(update(README.read_text(), head=True))


if __name__ == "__main__":
    main()
