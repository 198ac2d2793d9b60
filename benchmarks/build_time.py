"""Wall time and peak RSS of `edgekit build` per device (example training included).

Target (issue 2): `edgekit build --device pixel8` under 90 s on a 2-core host,
after install. Each build runs in a fresh process; peak RSS is that process's
ru_maxrss (os.wait4). Writes benchmarks/results/build_time.{md,json}.

    .venv/bin/python benchmarks/build_time.py [--devices pixel8 raspberry-pi-5 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
EDGEKIT = str(Path(sys.executable).parent / "edgekit")


STAGES = ("load", "export", "validate", "quantize", "validate-quantized", "bundle")


def measure(device: str, out: Path, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([EDGEKIT, "build", "-d", device, "--out", str(out), "--force", "--no-fail-on-budget", *extra], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"edgekit build -d {device} {' '.join(extra)} failed")
    manifest = json.loads((out / "manifest.json").read_text())
    stages = manifest["timings_s"]
    return {"device": device, "format": manifest["model"]["format"], "backend": manifest["model"]["backend"],
            "precision": manifest["model"]["precision"], "wall_s": round(wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "stages_s": {k: stages[k] for k in STAGES if k in stages},
            "under_90s": wall < 90}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=["pixel8"])
    ap.add_argument("--quant", choices=["none", "int8"], nargs="+", default=["none"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(d, Path(tmp) / f"{d}-{q}", ["--quant", q]) for d in args.devices for q in args.quant]
    lines = ["| device | format/backend | precision | wall (s) | peak RSS (MB) | stages (s) | < 90 s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['device']} | {r['format']}/{r['backend']} | {r['precision']} | {r['wall_s']} | {r['peak_rss_mb']} | "
              f"{', '.join(f'{k} {v}' for k, v in r['stages_s'].items())} | {'yes' if r['under_90s'] else 'NO'} |"
              for r in rows]
    table = "\n".join(lines)
    write_results("build_time", "edgekit build: wall time and peak RSS", table, rows)
    print(table)


if __name__ == "__main__":
    main()
