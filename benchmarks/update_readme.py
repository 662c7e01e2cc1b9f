"""Copies benchmark tables from ``benchmarks/results/*.md`` into the README's marked blocks.

A block ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->`` receives ``results/NAME.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.common import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"


def update(text: str) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        path = RESULTS / f"{name}.md"
        if not path.exists():
            return match.group(0)
        return f"<!-- results:{name} -->\n{path.read_text().strip()}\n<!-- /results:{name} -->"

    return re.sub(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", fill, text, flags=re.S)


def main() -> None:
    README.write_text(update(README.read_text()))


if __name__ == "__main__":
    main()
