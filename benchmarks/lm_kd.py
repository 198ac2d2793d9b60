"""Token-level Hinton KD on examples/tiny_lm: the student alone against the student distilled from the teacher,
3 seeds each, eval perplexity (the best epoch chosen on calib), the teacher beside them. Needs the cached
teacher (`make tiny-lm`). Writes benchmarks/results/lm_kd.{md,json}.

    .venv/bin/python benchmarks/lm_kd.py [--seeds 0 1 2] [--temperature 2] [--alpha 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "tiny_lm"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args()

    import data
    import model as lm
    import train

    splits = data.load_splits(train.SEQ_LEN)
    teacher = lm.teacher()
    teacher_ppl = train.perplexity(teacher, splits["eval"]["tokens"])
    settings = train.RECIPES["student"][1]
    rows = []
    for method in ("alone", "kd"):
        for seed in args.seeds:
            t0 = time.perf_counter()
            print(f"student {method}, seed {seed} ...", file=sys.stderr)
            _, report = train.train(lm.STUDENT, splits, epochs=settings["epochs"], lr=settings["lr"],
                                    batch_size=settings["batch_size"], seed=seed, say=lambda _: None,
                                    teacher=teacher if method == "kd" else None, temperature=args.temperature,
                                    alpha=args.alpha)
            rows.append({"method": method, "seed": seed, "eval_perplexity": report["eval_perplexity"],
                         "best_epoch": report["best_epoch"], "seconds": round(time.perf_counter() - t0, 1)})
    summary = {}
    for method in ("alone", "kd"):
        ppl = [r["eval_perplexity"] for r in rows if r["method"] == method]
        summary[method] = (statistics.mean(ppl), statistics.stdev(ppl) if len(ppl) > 1 else 0.0, min(ppl), max(ppl))
    gap = summary["alone"][2] - summary["kd"][3]  # worst KD seed against best alone seed
    table = ["| model | eval perplexity (mean ± sd over seeds) | range | seeds |", "|---|---|---|---|",
             f"| teacher ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters) | {teacher_ppl:.2f} | | |"]
    for method, label in (("alone", "student alone"), ("kd", f"student + KD (T={args.temperature:g}, "
                                                             f"α={args.alpha:g})")):
        mean, sd, lo, hi = summary[method]
        table.append(f"| {label} | {mean:.2f} ± {sd:.2f} | {lo:.2f}–{hi:.2f} | {len(args.seeds)} |")
    note = (f"\n\nStudent: {lm.STUDENT.hidden_size} wide, {lm.STUDENT.num_hidden_layers} layers; {settings['epochs']} epochs, lr "
            f"{settings['lr']:g}, batch {settings['batch_size']} windows of {train.SEQ_LEN} tokens; the same recipe "
            f"with and without the teacher. KD is edgekit's Hinton loss per token (T² KL to the teacher's "
            f"next-token distribution, weight α, plus (1−α) cross-entropy). Worst KD seed vs best seed alone: "
            f"{gap:+.2f} perplexity ({'KD better on every seed' if gap > 0 else 'the ranges overlap'}). "
            f"Command: `.venv/bin/python benchmarks/lm_kd.py`.")
    write_results("lm_kd", "tiny_lm: token-level KD against the student alone", "\n".join(table) + note,
                  [*rows, {"teacher_perplexity": teacher_ppl}])
    print("\n".join(table))


if __name__ == "__main__":
    main()
