"""What pruning buys per format: parameters, size (raw and deflated), host latency and accuracy, in one run.

For the digits student (real data, accuracy on the 360-image eval split) and the MobileNetV2-shaped network
(seeded random weights: latency and size only; its "accuracy" would be agreement with itself). Variants: dense,
structured 30% / 50% (of the parameters), unstructured 50% / 80% (of each layer's weights), 2:4; each fp32 and
int8 (PT2E / ORT static / LiteRT full-int8, per-channel), each without and (digits; MobileNetV2 structured 50%)
with KD recovery from the unpruned model (``edgekit.prune.prune_for_build``, the build's prune stage).

Latency: every artifact of one format is loaded by the runner's adapter and timed in alternating rounds (order
flipped each round); the ratio is the median over rounds of (variant / dense fp32 of the same format), and for
MobileNetV2 structured 50% + KD int8 also against dense int8. Compare ratios, not absolute numbers (shared host).
Language models: ``benchmarks/lm_pruning.py``. Writes benchmarks/results/pruning.{md,json}.

    .venv/bin/python benchmarks/pruning.py [--models digits mobilenet-v2] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _results import write_results
from _timing import interleaved_latency

ROOT = Path(__file__).resolve().parents[1]
FORMATS = [("executorch", "xnnpack"), ("onnx", "cpu"), ("tflite", "xnnpack")]
PRUNINGS = ["structured:0.3", "structured:0.5", "unstructured:0.5", "unstructured:0.8", "2:4"]
MODELS = {  # project folder, which prunings get a KD-recovered row too, recovery epochs, calibration samples
    "digits": (ROOT, set(PRUNINGS), 20, 128),
    "mobilenet-v2": (ROOT / "examples" / "mobilenet_v2", {"structured:0.5"}, 3, 32),
}


def variants(name: str) -> tuple[list[dict], dict]:
    from edgekit.distill.trainer import evaluate_classifier
    from edgekit.project import load_data, load_model, load_project
    from edgekit.prune import PruneSpec, prune_for_build

    folder, with_kd, epochs, _ = MODELS[name]
    project = load_project(folder)
    torch.manual_seed(project.seed)
    splits = load_data(project)
    model = load_model(project).eval()
    example = (torch.from_numpy(splits["eval"].x[:1]),)
    ev = splits["eval"]
    dense_acc = evaluate_classifier(model, torch.from_numpy(ev.x), torch.from_numpy(ev.y))["eval_accuracy"]
    n = sum(p.numel() for p in model.parameters())
    out = [{"pruning": "dense", "kd": False, "model": model, "parameters": n, "nonzero": n, "pytorch_accuracy": dense_acc}]
    settings = project.distill
    for label in PRUNINGS:
        for kd in (False, True) if label in with_kd else (False,):
            t0 = time.perf_counter()
            spec = PruneSpec.parse(label, epochs=epochs if kd else 0)
            pruned, rec = prune_for_build(model, example, splits, spec, settings.temperature if settings else 4.0,
                                          settings.alpha if settings else 0.9, project.seed, lambda msg: None)
            out.append({"pruning": label, "kd": kd, "model": pruned, "parameters": rec["parameters_after"],
                        "nonzero": rec["nonzero_after"], "pytorch_accuracy": rec["accuracy_after"],
                        "accuracy_before_recovery": rec["accuracy_pruned"], "seconds": round(time.perf_counter() - t0, 1)})
            print(f"  {name} {label} kd={kd}: {rec['parameters_after']:,} params, {rec['nonzero_after']:,} non-zero, "
                  f"accuracy {rec['accuracy_pruned']:.2%} -> {rec['accuracy_after']:.2%}", flush=True)
    return out, {"splits": splits, "example": example}


def measure(name: str, rows: list[dict], data: dict, work: Path, threads: int, rounds: int) -> None:
    from edgekit.export import EXPORTERS
    from edgekit.prune import compressed_bytes
    from edgekit.quantize.schemes import Int8Static
    from edgekit.validate import validate

    calib = data["splits"]["calib"].x[: MODELS[name][3]]
    ev = data["splits"]["eval"]
    scored = name == "digits"
    for fmt, backend in FORMATS:
        exporter = EXPORTERS[fmt]
        paths = {}
        for i, row in enumerate(rows):
            model = row["model"]
            with torch.no_grad():
                reference = [model(torch.from_numpy(ev.x)).numpy()]
            for precision, kwargs in (("fp32", {}), ("int8", {"quant": Int8Static(calib_samples=len(calib)),
                                                               "calib": calib})):
                out = work / f"{name}-{fmt}-{i}-{precision}"
                out.mkdir()
                result = exporter.export(model, data["example"], backend, out, **kwargs)
                cell = row.setdefault(precision, {}).setdefault(fmt, {})
                cell.update(bytes=result.model_path.stat().st_size, deflated=compressed_bytes(result.model_path))
                if scored:
                    v = validate(result.model_path, exporter.runtime, ev.x, ev.y, reference, ["logits"], None,
                                 "target-runtime", timing_runs=1)
                    cell["accuracy"] = v.value
                paths[(i, precision)] = result.model_path
            print(f"  {name} {fmt} {row['pruning']} kd={row['kd']}: "
                  f"{ {p: row[p][fmt] for p in ('fp32', 'int8')} }", flush=True)
        keyed = {f"{i}-{p}": path for (i, p), path in paths.items()}
        ms = interleaved_latency(keyed, exporter.runtime, ev.x[:1], threads, rounds)
        for (i, precision) in paths:
            cell = rows[i][precision][fmt]
            mine = ms[f"{i}-{precision}"]
            cell["latency_ms"] = statistics.median(mine)
            cell["vs_dense_fp32"] = statistics.median(a / b for a, b in zip(mine, ms["0-fp32"]))
            cell["vs_dense_same_precision"] = statistics.median(a / b for a, b in zip(mine, ms[f"0-{precision}"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--threads", type=int, default=1, help="runtime threads (1: steadiest on a shared host)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per format")
    args = ap.parse_args()
    table_rows, focus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows, data = variants(name)
            measure(name, rows, data, Path(tmp), args.threads, args.rounds)
            for r in rows:
                r.pop("model")
                for precision in ("fp32", "int8"):
                    table_rows.append({"model": name, **{k: v for k, v in r.items() if k not in ("fp32", "int8")},
                                       "precision": precision, "formats": r[precision]})
                if name == "mobilenet-v2" and r["pruning"] == "structured:0.5" and r["kd"]:
                    focus.append(r)
    fmts = [f for f, _ in FORMATS]
    lines = ["| model | pruning | KD | precision | parameters | non-zero | "
             + " | ".join(f"{f} KiB (deflated)" for f in fmts) + " | "
             + " | ".join(f"{f} latency / dense fp32" for f in fmts) + " | accuracy (PyTorch; per format) |",
             "|---|---|---|---|---|---|" + "---|" * (2 * len(fmts) + 1)]
    for r in table_rows:
        cells = r["formats"]
        acc = ""
        if "accuracy" in cells[fmts[0]]:
            acc = (f"{r['pytorch_accuracy']:.2%}; " if r["precision"] == "fp32" else "") + \
                  " / ".join(f"{cells[f]['accuracy']:.2%}" for f in fmts)
        lines.append(f"| {r['model']} | {r['pruning']} | {'yes' if r['kd'] else 'no'} | {r['precision']} | "
                     f"{r['parameters']:,} | {r['nonzero']:,} | "
                     + " | ".join(f"{cells[f]['bytes'] / 1024:.0f} ({cells[f]['deflated'] / 1024:.0f})" for f in fmts)
                     + " | " + " | ".join(f"{cells[f]['vs_dense_fp32']:.2f}" for f in fmts) + f" | {acc} |")
    if focus:
        r = focus[0]
        lines += ["", "MobileNetV2-shaped, structured 50% + KD + int8, latency as a ratio to dense int8 (same run): "
                  + ", ".join(f"{f} {r['int8'][f]['vs_dense_same_precision']:.2f}" for f in fmts) + "."]
    note = ("Accuracy: digits on its real eval split (PyTorch after pruning and recovery; then ExecuTorch / ONNX "
            "Runtime / LiteRT); MobileNetV2-shaped: latency and size only (seeded random weights). Unstructured and "
            "2:4 keep every tensor's shape: their raw size and latency stay the dense model's, and only the deflated "
            "size (zip, APK) shrinks. No runtime here has a sparse kernel on this host: XNNPACK's sparse inference "
            "(fp32/fp16 1x1 convolutions, >= 2/3 zeros, NCHW) is skipped on x86-64 CPUs with AVX, ExecuTorch never "
            "enables it, ONNX Runtime densifies sparse initializers, and litert-torch cannot write the sparse "
            "encoding LiteRT's XNNPACK delegate would use (see README, 'Pruning'). Latency: batch 1, "
            f"{args.threads} runtime thread(s), {args.rounds} alternating rounds on this 2-core shared host; "
            "ratio = median over rounds of variant / dense fp32 of the same format.")
    write_results("pruning", "Pruning: structured, unstructured, 2:4, with and without KD recovery",
                  "\n".join(lines) + f"\n\n{note}", table_rows, threads=args.threads)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
