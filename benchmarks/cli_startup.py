"""CLI start-up time, as ratios to a bare `python -c pass` measured in the same run.

`edgekit --help` and `edgekit profiles list` must answer in under a second; that
holds because no runtime (torch, ExecuTorch, onnxruntime, LiteRT) is imported at
start-up (tests/unit/test_import_light.py guards the imports). This benchmark
measures the time and writes benchmarks/results/cli_startup.{md,json}.

    make bench        # or: .venv/bin/python benchmarks/cli_startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
EDGEKIT = str(Path(sys.executable).parent / "edgekit")

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
    "edgekit --help": [EDGEKIT, "--help"],
    "edgekit profiles list": [EDGEKIT, "profiles", "list"],
    "edgekit build -d pixel8 --dry-run": [EDGEKIT, "build", "-d", "pixel8", "--dry-run"],
}


def median_seconds(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=11)
    args = ap.parse_args()
    rows = []
    base = None
    for name, cmd in COMMANDS.items():
        s = median_seconds(cmd, args.repeat)
        base = base or s
        rows.append({"command": name, "median_s": round(s, 4), "ratio_to_python": round(s / base, 2),
                     "under_1s": s < 1.0})
    lines = ["| command | median (s) | × bare python | < 1 s |", "|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['median_s']:.3f} | {r['ratio_to_python']:.1f} | "
              f"{'yes' if r['under_1s'] else 'NO'} |" for r in rows]
    table = "\n".join(lines)
    write_results("cli_startup", f"CLI start-up ({args.repeat} runs each, median)", table, rows)
    print(table)


if __name__ == "__main__":
    main()
