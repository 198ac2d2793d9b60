"""Runner overhead and repeatability: the runner's median latency against a bare loop over the runtime's own call.

For each runtime (ExecuTorch/XNNPACK from ``--device pixel8``, ONNX Runtime from
``jetson-orin-nano``, LiteRT from ``raspberry-pi-5``), on the same artifact and thread count, in
one process: the runner's path (``edgekit_runner.runtimes.load`` + ``measure.measure`` with its
stop rules) and a bare loop written against the runtime's public API (its own session /
interpreter / method, ``perf_counter_ns`` around each call, the same number of runs) alternate
for several rounds, the order flipping each round so drift hits both. Ratio = runner median /
bare median, per round; the table gives the median ratio and its range. Target: within 5%.

Repeatability: the runner CLI twice in a row on the same bundle (fresh processes, default
settings), ``--pairs`` times; target: medians within 10%. The host's load average is recorded:
on a shared 2-CPU host the neighbours' load, not the runner, decides how far medians move.
Writes benchmarks/results/runner_overhead.{md,json}.

    .venv/bin/python benchmarks/runner_overhead.py [--bundles build/pixel8 ...] [--threads 1] [--rounds 9] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import write_results
from edgekit_runner import measure, runtimes
from edgekit_runner.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]

DEVICES = ("pixel8", "jetson-orin-nano", "raspberry-pi-5")


def bare_loop(path: Path, runtime: str, x: np.ndarray, threads: int):
    """``runs -> ns samples``: the runtime's own inference call, inputs set once, nothing of the runner."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.x64quantprecision", "1")  # as the runner's sessions (exact int8)
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}

        def call():
            sess.run(None, feed)
    elif runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        if detail["dtype"] != np.float32:  # an int8-I/O model: quantize the input once, with the tensor's own step
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])
        interp.set_tensor(detail["index"], x)
        call = interp.invoke
    else:
        import torch
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(str(path)).load_method("forward")
        inputs = [torch.from_numpy(x).clone(memory_format=torch.contiguous_format)]

        def call():
            method.execute(inputs)

    def loop(runs: int) -> list[int]:
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            call()
            samples.append(time.perf_counter_ns() - t0)
        return samples

    return loop


def overhead(bundle: Path, threads: int, rounds: int, seconds: float) -> dict:
    manifest = read_manifest(bundle)
    info = manifest.data["model"]
    path, runtime = bundle / info["file"], info["runtime"]
    key = manifest.eval_inputs[manifest.forward.inputs[0].name]  # input.NAME (schema 2) or inputs (schema 1)
    x = np.ascontiguousarray(np.load(bundle / "eval.npz")[key][:1])
    model = runtimes.load(path, runtime, threads, info["runtime_target"])  # the runner's path
    call = model.bound([x])
    bare = bare_loop(path, runtime, x, threads)
    settings = measure.Settings(warmup_runs=10, warmup_seconds=0.2, min_runs=50, min_seconds=seconds)
    runner_p50, bare_p50, ratios, runs = [], [], [], []
    for r in range(rounds):  # round 0 starts with the runner, so the bare loop always knows how many runs to do
        for side in (("runner", "bare") if r % 2 == 0 else ("bare", "runner")):
            if side == "runner":
                timing, stats = measure.measure(call, settings)
                runner_p50.append(stats["p50"])
                runs.append(timing["timed_runs"])
            else:
                bare(max(10, runs[-1] // 5))  # warm-up, as the runner does
                bare_p50.append(float(np.median(bare(runs[-1]))) / 1e6)
        ratios.append(runner_p50[-1] / bare_p50[-1])
    ratio = statistics.median(ratios)
    return {"device": manifest.data["profile"]["id"], "runtime": f"{model.info['runtime']} {model.info['version']}",
            "threads": threads, "rounds": rounds, "runs_per_round": int(statistics.median(runs)),
            "runner_p50_ms": statistics.median(runner_p50), "bare_p50_ms": statistics.median(bare_p50),
            "ratio": ratio, "ratio_min": min(ratios), "ratio_max": max(ratios), "within_5pct": abs(ratio - 1) <= 0.05}


def repeatability(bundle: Path, threads: int, pairs: int) -> dict:
    """The runner CLI twice in a row (fresh processes, default settings), ``pairs`` times: how far apart are medians?"""
    def p50() -> float:
        proc = subprocess.run([sys.executable, "-m", "edgekit_runner", str(bundle), "--threads", str(threads),
                               "--no-accuracy"], capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
        return json.loads(proc.stdout)["latency_ms"]["p50"]

    runs = [(p50(), p50()) for _ in range(pairs)]
    diffs = [abs(b - a) / min(a, b) for a, b in runs]
    return {"cli_pairs_p50_ms": runs, "cli_pair_diffs": diffs,
            "pairs_within_10pct": sum(d <= 0.10 for d in diffs), "pairs": pairs}


def build(device: str, out: Path) -> Path:
    subprocess.run([str(Path(sys.executable).parent / "edgekit"), "build", "-d", device, "--out", str(out),
                    "--no-fail-on-budget"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", nargs="+", type=Path, help=f"existing bundles (default: build {', '.join(DEVICES)})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.5, help="minimum timed seconds per side per round")
    ap.add_argument("--pairs", type=int, default=3, help="pairs of consecutive runner CLI runs per bundle")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundles = args.bundles or [build(d, Path(tmp) / d) for d in DEVICES]
        load_before = os.getloadavg()[0]
        rows = [{**overhead(b, args.threads, args.rounds, args.seconds), **repeatability(b, args.threads, args.pairs)}
                for b in bundles]
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"
    lines = [("| device | runtime | threads | runner p50 (ms) | bare loop p50 (ms) | ratio (range over rounds) | "
              "within 5% | consecutive CLI runs: p50 (ms) and diff | pairs within 10% |"),
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['device']} | {r['runtime']} | {r['threads']} | {r['runner_p50_ms']:.4f} | {r['bare_p50_ms']:.4f} | "
              f"{r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) | {'yes' if r['within_5pct'] else 'NO'} | "
              + "; ".join(f"{a:.4f}/{b:.4f} {d:.1%}" for (a, b), d in zip(r["cli_pairs_p50_ms"], r["cli_pair_diffs"]))
              + f" | {r['pairs_within_10pct']}/{r['pairs']} |" for r in rows]
    table = "\n".join(lines) + (f"\n\n{args.rounds} interleaved rounds, each side at least 50 runs and "
                                f"{args.seconds:g} s; model: the digits student (batch 1); {load}.")
    write_results("runner_overhead", "Runner overhead against a bare loop, and repeatability", table, rows)
    print(table)


if __name__ == "__main__":
    main()
