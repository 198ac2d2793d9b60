"""Write a benchmark's table atomically to benchmarks/results/NAME.{md,json}, with the machine it ran on.

The JSON is ``{"machine": {...}, "rows": [...]}``; tables written before the machine was recorded are a bare
list of rows (:func:`read_rows` reads both).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sme")


def machine(threads: int | None = None) -> dict:
    """CPU model and the ISA extensions that pick kernels, torch's build, CPUs, threads, time."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "CPU part") and cpu in ("", platform.machine()):
                cpu = value.strip()
            if key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return {"cpu": cpu, "arch": platform.machine(), "isa": [f for f in ISA if f in flags], "cpus": os.cpu_count(),
            "torch": torch, "threads": threads, "python": platform.python_version(),
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}


def describe(m: dict) -> str:
    return (f"{m['cpu']} ({m['arch']}; {', '.join(m['isa']) or 'no listed ISA extension'}), {m['cpus']} CPUs, "
            f"torch {m['torch']}" + (f", {m['threads']} thread(s)" if m.get("threads") else "")
            + f", Python {m['python']}, {m['measured_at']}")


def read_rows(path: Path) -> tuple[dict | None, list[dict]]:
    data = json.loads(Path(path).read_text())
    return (data.get("machine"), data["rows"]) if isinstance(data, dict) else (None, data)


def write_results(name: str, title: str, markdown_table: str, rows: list[dict], threads: int | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    m = machine(threads)
    for path, text in ((RESULTS / f"{name}.md", f"# {title}\n\n{markdown_table}\n\nMachine: {describe(m)}.\n"),
                       (RESULTS / f"{name}.json", json.dumps({"machine": m, "rows": rows}, indent=2,
                                                             default=str) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=RESULTS, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
