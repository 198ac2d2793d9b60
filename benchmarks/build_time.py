"""Wall time and peak RSS of `edgekit build` per device (example training included).

Target (issue 2): `edgekit build --device pixel8` under 90 s on a 2-core host,
after install. Each build runs in a fresh process; peak RSS is the child's
ru_maxrss. Writes benchmarks/results/build_time.{md,json}.

    .venv/bin/python benchmarks/build_time.py [--devices pixel8 raspberry-pi-5 ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
EDGEKIT = str(Path(sys.executable).parent / "edgekit")


def measure(device: str, out: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([EDGEKIT, "build", "-d", device, "--out", str(out), "--force"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children so far
    manifest = json.loads((out / "manifest.json").read_text())
    return {"device": device, "format": manifest["model"]["format"], "backend": manifest["model"]["backend"],
            "wall_s": round(wall, 1), "peak_rss_mb": round(max(rss, before) / 1024, 0),
            "stages_s": manifest["timings_s"], "under_90s": wall < 90}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=["pixel8"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(d, Path(tmp) / d) for d in args.devices]
    lines = ["| device | format/backend | wall (s) | peak RSS (MB, max so far) | stages (s) | < 90 s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['device']} | {r['format']}/{r['backend']} | {r['wall_s']} | {r['peak_rss_mb']:.0f} | "
              f"{', '.join(f'{k} {v}' for k, v in r['stages_s'].items())} | {'yes' if r['under_90s'] else 'NO'} |"
              for r in rows]
    table = "\n".join(lines)
    write_results("build_time", "edgekit build: wall time and peak RSS", table, rows)
    print(table)


if __name__ == "__main__":
    main()
