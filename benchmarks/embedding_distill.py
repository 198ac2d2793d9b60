"""The distilled MiniLM encoder against its teacher: size, host latency and how closely it reproduces the
teacher's sentence embeddings, in fp32 and with the transformer int8 recipe, through ONNX Runtime (the
host-cpu path). One run: the student is distilled once with examples/minilm_l3's [distill] settings (the
build's distill stage), both networks are exported by edgekit's ONNX exporter, and the four files are timed
in alternating rounds in this process, through the runner's own adapters and timing. Fidelity is to the teacher in PyTorch on the 200 eval sentences
(the split the best epoch was not chosen on). Writes benchmarks/results/embedding_distill.{md,json}.

    .venv/bin/python benchmarks/embedding_distill.py [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results
from _timing import interleaved_latency

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="alternating timing rounds")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = ap.parse_args()

    import torch

    from edgekit.distill.project import distill_for_build
    from edgekit.export import EXPORTERS
    from edgekit.export.base import subdir
    from edgekit.project import load_data, load_project
    from edgekit.quantize.schemes import SCHEMES
    from edgekit_runner.tasks.embedding import EMBEDDING

    project = load_project(ROOT / "examples" / "minilm_l3")
    names = [i.name for i in project.inputs]
    splits = load_data(project)
    t0 = time.perf_counter()
    student, teacher, record = distill_for_build(project, splits, None, lambda msg: print(f"  distill: {msg}",
                                                                                           file=sys.stderr))
    distill_s = time.perf_counter() - t0
    ev = splits["eval"].named(project)
    with torch.no_grad():
        reference = teacher(*(torch.from_numpy(ev[n]) for n in names)).numpy()
    example = tuple(torch.from_numpy(ev[n][:1]).clone() for n in names)
    calib = splits["calib"].named(project)
    exporter = EXPORTERS["onnx"]
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as work:
        for who, model in (("teacher", teacher), ("student", student)):
            for precision, scheme in (("fp32", None), ("int8", SCHEMES["int8-dynamic"](embeddings=True))):
                print(f"exporting {who} {precision} ...", file=sys.stderr)
                result = exporter.export(model, example, "cpu", subdir(work, f"{who}-{precision}"), input_names=names,
                                         output_names=["embedding"], quant=scheme,
                                         calib=calib if scheme is not None else None)
                files[f"{who} {precision}"] = result.model_path
        from edgekit_runner import evaluate, runtimes

        rows = []
        for key, path in files.items():
            out = evaluate.run_dataset(runtimes.load(path, "onnxruntime", threads=args.threads), ev)[0]
            m = EMBEDDING.score({"e": out}, {}, {"e": reference})
            rows.append({"model": key, "bytes": path.stat().st_size, "cosine_mean": m["cosine_mean"],
                         "cosine_min": m["cosine_min"], "retrieval_agreement": m["retrieval_agreement"]})
        medians = interleaved_latency(files, "onnxruntime", {n: ev[n][:1] for n in names}, args.threads, args.rounds)
        ratios = {k: [t / m for t, m in zip(medians["teacher fp32"], v)] for k, v in medians.items()}
    base = next(r for r in rows if r["model"] == "teacher fp32")
    params = {"teacher": record["teacher_parameters"], "student": record["student_parameters"]}
    for row in rows:
        who = row["model"].split()[0]
        row.update(parameters=params[who], layers=6 if who == "teacher" else len(record["student_layers"]),
                   size_ratio=row["bytes"] / base["bytes"], speedup=statistics.median(ratios[row["model"]]),
                   speedup_range=[min(ratios[row["model"]]), max(ratios[row["model"]])],
                   latency_ms=statistics.median(medians[row["model"]]))
    table = ["| model | layers | parameters | ONNX size vs teacher fp32 | host speed vs teacher fp32 | latency ms "
             "| cosine to teacher mean / min | retrieval agreement with teacher |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['layers']} | {r['parameters'] / 1e6:.1f}M | {r['size_ratio']:.3f} | "
                     f"{r['speedup']:.2f}× ({r['speedup_range'][0]:.2f}–{r['speedup_range'][1]:.2f}) | "
                     f"{r['latency_ms']:.2f} | {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | "
                     f"{r['retrieval_agreement']:.1%} |")
    init = record["initial_student"]
    note = (f"\n\nStudent: layers {', '.join(map(str, record['student_layers']))} of all-MiniLM-L6-v2, "
            f"{record['method']} loss, {record['epochs']} epochs (best {record['best_epoch']}, chosen on calib), "
            f"lr {record['lr']:g}, on {len(splits['train'].x)} train sentences; distillation took {distill_s:.0f} s on "
            f"this host. Before training (the teacher's layers alone) it had cosine {init['cosine_mean']:.4f} / "
            f"{init['cosine_min']:.4f} and retrieval agreement {init['retrieval_agreement']:.1%}. Figures on the 200 "
            f"eval sentences (sequence length 64, batch 1); the teacher's rows are its own exports against itself in "
            f"PyTorch. Latency: ONNX Runtime CPU, {args.threads} thread(s), the runner's timing, {args.rounds} "
            f"alternating rounds on this {os.cpu_count()}-CPU host (speed: median of the per-round ratios, range in "
            f"brackets). The word-embedding table (30522 × 384, 11.7M parameters) is shared by both and is most of "
            f"the student's size. Command: `.venv/bin/python benchmarks/embedding_distill.py`.")
    write_results("embedding_distill", "Distilled MiniLM (3 of 6 layers) against its teacher", "\n".join(table) + note,
                  [{**r, "distill": {k: v for k, v in record.items() if k != "history"}} for r in rows])
    print("\n".join(table))


if __name__ == "__main__":
    main()
