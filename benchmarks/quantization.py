"""fp32 vs int8 per format: host latency, size and accuracy, measured in one run.

For the digits student (real data: accuracy on the 360-image eval split) and a
MobileNetV2-shaped network at 224x224 (seeded random weights, random calibration
images: "accuracy" there is top-1 agreement with the fp32 PyTorch model). Each
artifact runs in its real runtime. Latency: the fp32 and int8 artifacts are loaded
side by side and timed in alternating rounds (the order flips each round, so drift
on this shared host hits both); each round is about 0.25 s of single-batch runs of
the slower model, latency is the median over rounds of the round medians, and the
speed ratio is the median of the per-round fp32/int8 ratios (its range in the JSON
and in brackets). Compare ratios, not absolute numbers. Writes
benchmarks/results/quantization.{md,json}.

    .venv/bin/python benchmarks/quantization.py [--models digits mobilenet-v2] [--threads 1] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _results import write_results
from _timing import interleaved_latency

ROOT = Path(__file__).resolve().parents[1]
CASES = [("executorch", "xnnpack"), ("onnx", "cpu"), ("tflite", "xnnpack")]


def _load(path: Path, name: str):
    """Import an example's file by path (both examples have a model.py)."""
    import importlib.util

    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digits():
    load_splits = _load(ROOT / "examples" / "digits" / "data.py", "digits_data").load_splits
    student = _load(ROOT / "examples" / "digits" / "model.py", "digits_model").student

    s = load_splits()
    return student(), np.array(s["calib"][0], order="C"), np.array(s["eval"][0], order="C"), s["eval"][1]


def mobilenet():
    mobilenet_v2 = _load(ROOT / "examples" / "mobilenet_v2" / "model.py", "mnv2_model").mobilenet_v2

    rng = np.random.default_rng(0)
    model = mobilenet_v2()
    calib = rng.standard_normal((32, 3, 224, 224), dtype=np.float32)
    ev = rng.standard_normal((16, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(ev)).argmax(1).numpy()  # agreement with fp32
    return model, calib, ev, labels


MODELS = {"digits": digits, "mobilenet-v2": mobilenet}


def measure(name: str, fmt: str, backend: str, model, calib, ev, labels, work: Path, threads: int,
            rounds: int) -> dict:
    from edgekit.export import EXPORTERS
    from edgekit.quantize.schemes import Int8Static
    from edgekit.validate import validate

    exporter = EXPORTERS[fmt]
    example = (torch.from_numpy(ev[:1]).clone(),)
    with torch.no_grad():
        reference = [model(torch.from_numpy(ev)).numpy()]
    row = {"model": name, "format": f"{fmt}/{backend}"}
    for precision, kwargs in (("fp32", {}), ("int8", {"quant": Int8Static(calib_samples=len(calib)), "calib": calib})):
        out = work / f"{name}-{fmt}-{precision}"
        out.mkdir()
        t0 = time.perf_counter()
        result = exporter.export(model, example, backend, out, **kwargs)
        build_s = time.perf_counter() - t0
        v = validate(result.model_path, exporter.runtime, ev, labels, reference, ["logits"], None, "target-runtime",
                     timing_runs=1)
        row[precision] = {"bytes": result.model_path.stat().st_size, "path": result.model_path,
                          "accuracy": v.value, "agreement": v.top1_agreement, "build_s": round(build_s, 1)}
    rounds_ms = interleaved_latency({p: row[p].pop("path") for p in ("fp32", "int8")}, exporter.runtime, ev[:1],
                                    threads, rounds, eager=model)
    eager_ms = rounds_ms.pop("eager")
    ratios = [a / b for a, b in zip(rounds_ms["fp32"], rounds_ms["int8"])]
    row["eager"] = {"latency_ms": statistics.median(eager_ms), "round_medians_ms": eager_ms}
    for precision in ("fp32", "int8"):  # speed against torch eager fp32, per round, median
        row[f"{precision}_vs_eager"] = statistics.median(e / m for e, m in zip(eager_ms, rounds_ms[precision]))
    for precision, ms in rounds_ms.items():
        row[precision].update(latency_ms=statistics.median(ms), round_medians_ms=ms)
        print(f"  {name} {fmt} {precision}: {row[precision]}", flush=True)
    f, q = row["fp32"], row["int8"]
    row.update(speedup=statistics.median(ratios), speedup_range=[min(ratios), max(ratios)],
               size_ratio=q["bytes"] / f["bytes"], accuracy_delta_points=(q["accuracy"] - f["accuracy"]) * 100,
               threads=threads)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--threads", type=int, default=1, help="runtime threads (1: steadiest on a shared host)")
    ap.add_argument("--rounds", type=int, default=7, help="alternating timing rounds per artifact pair")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, calib, ev, labels = MODELS[name]()
            for fmt, backend in CASES:
                rows.append(measure(name, fmt, backend, model, calib, ev, labels, Path(tmp), args.threads,
                                    args.rounds))
    lines = ["| model | format | eager ms | fp32 ms | int8 ms | fp32/int8 speed | fp32 KiB | int8 KiB | size ratio | "
             "fp32 acc | int8 acc | delta (points) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, q = r["fp32"], r["int8"]
        lines.append(f"| {r['model']} | {r['format']} | {r['eager']['latency_ms']:.3f} | {f['latency_ms']:.3f} | "
                     f"{q['latency_ms']:.3f} | "
                     f"{r['speedup']:.2f}x ({r['speedup_range'][0]:.2f}–{r['speedup_range'][1]:.2f}) | {f['bytes'] / 1024:.0f} | {q['bytes'] / 1024:.0f} | {r['size_ratio']:.4f} | "
                     f"{f['accuracy']:.2%} | {q['accuracy']:.2%} | {r['accuracy_delta_points']:+.2f} |")
    table = "\n".join(lines)
    note = ("digits: accuracy on the real eval split. mobilenet-v2 (random weights, random inputs): "
            "'acc' is top-1 agreement with PyTorch fp32. Latency: batch 1, "
            f"{args.threads} runtime thread(s), torch eager fp32, fp32 and int8 timed in {args.rounds} alternating "
            "rounds on this 2-core shared host; speed = median of the per-round fp32/int8 ratios (range in "
            "brackets).")
    write_results("quantization", "fp32 vs int8 per format", f"{table}\n\n{note}", rows, threads=args.threads)
    print(table)


if __name__ == "__main__":
    main()
