"""Copies benchmark tables from ``benchmarks/results/*.md`` into the README's marked blocks.

A block ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` receives ``results/NAME.md``.
Before anything is written every block's results JSON (``NAME.json``, or its :data:`SOURCES`
entry) is checked: it must exist, come from a clean tree (``dirty: false``), be marked
``for_readme: true``, and every table (and every row inside a table) must come from the same
commit; otherwise one ``SystemExit`` names the file and the README is left as it was.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", flags=re.S)
#: README blocks whose markdown is a part of another benchmark's results.
SOURCES = {"weighting_overhead_8tasks": "weighting_overhead", "findings": "mtl_suite"}


def _commits(payload: dict[str, Any]) -> set[str]:
    """The commit of the file and of each run it holds (rows cached by earlier calls)."""
    runs = payload.get("runs")
    rows = runs.values() if isinstance(runs, dict) else []
    found = {
        str(r["commit"]) for row in rows if isinstance(row, list) for r in row if "commit" in r
    }
    return {str(payload.get("commit")), *found}


def check(names: list[str], results: Path = RESULTS) -> str:
    """The one commit that every block's results come from; ``SystemExit`` naming the file
    when one is missing, dirty, not for the README or from another commit."""
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
    if len(set(seen.values())) > 1:
        listed = ", ".join(f"{p} at {c[:10]}" for p, c in seen.items())
        raise SystemExit(f"results from different commits, re-run them at one commit: {listed}")
    return next(iter(seen.values()), "")


def update(text: str, results: Path = RESULTS) -> str:
    """``text`` with every block filled from ``results`` (after :func:`check`)."""
    check([m.group(1) for m in BLOCK.finditer(text)], results)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        body = (results / f"{name}.md").read_text().strip()
        return f"<!-- results:{name} -->\n{body}\n<!-- /results:{name} -->"

    return BLOCK.sub(fill, text)


def main() -> None:
    README.write_text(update(README.read_text()))


if __name__ == "__main__":
    main()
