"""Token-level Hinton KD on examples/tiny_lm: the student alone against the student distilled from the teacher
on its top-k next-token logits (edgekit's default, 3 seeds) and on its full logits (1 seed), eval perplexity
(the best epoch chosen on calib), the teacher beside them; then each student quantized to int4 by ONNX
Runtime's own tool (MatMulNBits, group 32, accuracy level 4, as the build does) and its perplexity measured
through ONNX Runtime: what KD is worth once the model is int4. Needs the cached teacher (`make tiny-lm`).
Writes benchmarks/results/lm_kd.{md,json}.

    .venv/bin/python benchmarks/lm_kd.py [--seeds 0 1 2] [--full-seeds 0] [--top-k 64] [--temperature 2]
                                         [--alpha 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "tiny_lm"))


def onnx_perplexities(model, windows, max_context: int) -> dict[str, float]:
    """Perplexity on ``windows`` through ONNX Runtime of the fp32 export and of its int4 quantization."""
    from edgekit_runner import lm as runner_lm

    from edgekit.lm import quantize as lq
    from edgekit.lm.export import onnx as export_onnx
    from edgekit.quantize.schemes import LMWeights

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int4 = Path(tmp) / "fp32.onnx", Path(tmp) / "int4.onnx"
        details = export_onnx(model, fp32, max_context)
        lq.onnx(fp32, int4, LMWeights(bits=4, group_size=32), model.config.vocab_size)
        for name, path in (("onnx_fp32", fp32), ("onnx_int4", int4)):
            session = runner_lm.open_session(path, "onnxruntime", details["cache"])
            out[name] = runner_lm.perplexity(session, windows)["perplexity"]
    return out


def summarise(values: list[float]) -> tuple[float, float, float, float]:
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, min(values), max(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full-seeds", type=int, nargs="*", default=[0], help="seeds of KD on the full logits")
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args()

    import data
    import model as lm
    import train

    splits = data.load_splits(train.SEQ_LEN)
    teacher = lm.teacher()
    evals = splits["eval"]["tokens"]
    teacher_ppl = train.perplexity(teacher, evals)
    settings = train.RECIPES["student"][1]
    runs = [("alone", s, None) for s in args.seeds] + [("kd", s, args.top_k) for s in args.seeds] + \
        [("kd-full", s, None) for s in args.full_seeds]
    rows = []
    for method, seed, top_k in runs:
        t0 = time.perf_counter()
        print(f"student {method}, seed {seed} ...", file=sys.stderr)
        model, report = train.train(lm.STUDENT, splits, epochs=settings["epochs"], lr=settings["lr"],
                                    batch_size=settings["batch_size"], seed=seed, say=lambda _: None,
                                    teacher=None if method == "alone" else teacher, temperature=args.temperature,
                                    alpha=args.alpha, top_k=top_k)
        seconds = round(time.perf_counter() - t0, 1)
        ppl = onnx_perplexities(model, evals, train.SEQ_LEN + 1)
        rows.append({"method": method, "seed": seed, "top_k": top_k, "eval_perplexity": report["eval_perplexity"],
                     **ppl, "best_epoch": report["best_epoch"], "teacher_top_k_mass": report.get("teacher_top_k_mass"),
                     "train_seconds": seconds})
        print(f"  {rows[-1]}", file=sys.stderr)
    labels = {"alone": "student alone", "kd": f"student + KD, teacher's top {args.top_k} logits",
              "kd-full": "student + KD, teacher's full logits"}
    table = ["| model | seeds | eval perplexity, PyTorch fp32 (mean ± sd) | range | ONNX Runtime int4 g32 (mean) | "
             "int4 vs fp32 |", "|---|---|---|---|---|---|",
             f"| teacher ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters) | | {teacher_ppl:.2f} "
             "| | | |"]
    summary = {}
    for method in ("alone", "kd", "kd-full"):
        got = [r for r in rows if r["method"] == method]
        if not got:
            continue
        summary[method] = summarise([r["eval_perplexity"] for r in got])
        mean, sd, lo, hi = summary[method]
        q = statistics.mean(r["onnx_int4"] for r in got)
        f = statistics.mean(r["onnx_fp32"] for r in got)
        table.append(f"| {labels[method]} | {len(got)} | {mean:.2f} ± {sd:.2f} | {lo:.2f}–{hi:.2f} | {q:.2f} | "
                     f"{q / f - 1:+.1%} |")
    gap = summary["alone"][2] - summary["kd"][3]  # worst KD seed against best alone seed
    spread = max(summary["alone"][3] - summary["alone"][2], summary["kd"][3] - summary["kd"][2])
    mass = statistics.mean(r["teacher_top_k_mass"] for r in rows if r["method"] == "kd")
    student = lm.STUDENT
    note = (f"\n\nStudent: {student.hidden_size} wide, {student.num_hidden_layers} layers; {settings['epochs']} epochs, "
            f"lr {settings['lr']:g}, batch {settings['batch_size']} windows of {train.SEQ_LEN} tokens; the same recipe "
            f"with and without the teacher. KD is edgekit's Hinton loss per token (T² KL to the teacher's "
            f"next-token distribution, weight α, plus (1−α) cross-entropy), T={args.temperature:g}, α={args.alpha:g}. "
            f"Top-k: the teacher's {args.top_k} largest logits per token, cached once (fp16 values, int32 indices); "
            f"they hold {mass:.1%} of its probability at T, the rest is one outcome of the loss. Mean gap, alone − top-k "
            f"KD: {summary['alone'][0] - summary['kd'][0]:.2f} perplexity, against a largest seed range of {spread:.2f} "
            f"and standard deviations {summary['alone'][1]:.2f} / {summary['kd'][1]:.2f}. Worst KD seed vs best seed "
            f"alone: {gap:+.2f} "
            f"({'KD better on every seed, by more than the spread' if gap > spread else 'KD better on every seed' if gap > 0 else 'the ranges overlap'}). "
            f"int4: each student exported to ONNX and quantized as `edgekit build --quant int4-weight-only` does "
            f"(MatMulNBits, symmetric, group 32, accuracy level 4; embedding and output int8), perplexity through "
            f"ONNX Runtime on the same eval windows; 'int4 vs fp32' against the same model's ONNX fp32. "
            f"Command: `.venv/bin/python benchmarks/lm_kd.py`.")
    write_results("lm_kd", "tiny_lm: token-level KD against the student alone, in fp32 and int4",
                  "\n".join(table) + note, [*rows, {"teacher_perplexity": teacher_ppl}])
    print("\n".join(table))


if __name__ == "__main__":
    main()
