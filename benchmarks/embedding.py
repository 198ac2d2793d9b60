"""MiniLM (sentence-transformers all-MiniLM-L6-v2) through `edgekit build` with each profile's default
quantization: fidelity to PyTorch on the 200 eval sentences, artifact size and host latency against the fp32
export of the same build. A path whose export misses the task's thresholds is listed with its figures
(the build refuses to write it). Writes benchmarks/results/embedding.{md,json}.

    .venv/bin/python benchmarks/embedding.py [--devices pixel8 raspberry-pi-5 jetson-orin-nano host-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {"pixel8": [], "raspberry-pi-5": [], "jetson-orin-nano": [], "host-cpu": ["--format", "onnx"]}


def build(device: str, extra: list[str], out: Path) -> dict:
    """One build in a subprocess (its own memory); the manifest, or the refusal's figures."""
    import subprocess

    cmd = [sys.executable, "-m", "edgekit.cli", "build", "-d", device, "--project", str(ROOT / "examples" / "minilm"),
           "--out", str(out), "--json", "--no-fail-on-budget", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if proc.returncode == 0:
        return json.loads(proc.stdout)
    return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}


def eager_latency_ms() -> float:
    """torch eager fp32 MiniLM on one eval sentence, timed as the build's validation times the exports (median
    of 50 runs after 5 warm-up, torch's default threads)."""
    import torch
    from _timing import Eager
    from edgekit_runner import evaluate

    from edgekit.project import load_data, load_model, load_project

    project = load_project(ROOT / "examples" / "minilm")
    model, ev = load_model(project), load_data(project)["eval"].named(project)
    sample = [ev[i.name][:1] for i in project.inputs]
    return float(evaluate.time_model(Eager(model, torch.get_num_threads()), sample, runs=50, warmup=5)["median"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", nargs="+", default=list(DEFAULTS))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for device in args.devices:
            print(f"building {device} ...", file=sys.stderr)
            m = build(device, DEFAULTS.get(device, []), Path(tmp) / device)
            if "error" in m:
                rows.append({"device": device, "error": m["error"]})
                continue
            eager = eager_latency_ms()  # right after the build's own timings, on the same host
            v, base = m["validation"], m["baseline"]
            rows.append({
                "device": device, "path": f"{m['model']['format']}/{m['model']['backend']}",
                "precision": m["model"]["precision"], "recipe": m["model"]["export_details"].get(
                    "quantization", {}).get("tool", "-"),
                "cosine_mean": v["metrics"]["cosine_mean"], "cosine_min": v["metrics"]["cosine_min"],
                "retrieval_agreement": v["metrics"]["retrieval_agreement"],
                "size_ratio": m["model"]["bytes"] / base["bytes"] if base else 1.0,
                "latency_ratio": (base["validation"]["host_latency_ms"]["median"] / v["host_latency_ms"]["median"]
                                  if base else 1.0),
                "eager_ms": eager, "latency_ms": v["host_latency_ms"]["median"],
                "fp32_ms": base["validation"]["host_latency_ms"]["median"] if base else v["host_latency_ms"]["median"],
                "vs_eager": eager / v["host_latency_ms"]["median"],
                "where": v["where"]})
    table = ["| device | path | precision | cosine mean / min | retrieval agreement | size vs fp32 | host speed vs fp32 "
             "| host speed vs torch eager | validated |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            table.append(f"| {r['device']} | | | | | | | | refused: {r['error'].removeprefix('error: ')} |")
        else:
            table.append(f"| {r['device']} | {r['path']} | {r['precision']} | {r['cosine_mean']:.5f} / "
                         f"{r['cosine_min']:.5f} | {r['retrieval_agreement']:.1%} | {r['size_ratio']:.3f} | "
                         f"{r['latency_ratio']:.2f}× | {r['vs_eager']:.2f}× | {r['where']} |")
    note = (f"\n\n200 eval sentences of `pydoc_data.topics`, sequence length 64, batch 1; latency is this "
            f"{os.cpu_count()}-CPU host's (median of 50 runs), as a ratio to the fp32 export of the same build and to "
            "torch eager fp32 timed the same way right after it (not interleaved). "
            "Command: `.venv/bin/python benchmarks/embedding.py`.")
    write_results("embedding", "MiniLM with each profile's default quantization", "\n".join(table) + note, rows)
    print("\n".join(table))


if __name__ == "__main__":
    main()
