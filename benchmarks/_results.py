"""Write a benchmark's table atomically to benchmarks/results/NAME.{md,json}."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, title: str, markdown_table: str, rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for path, text in ((RESULTS / f"{name}.md", f"# {title}\n\n{markdown_table}\n"),
                       (RESULTS / f"{name}.json", json.dumps(rows, indent=2) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
