"""Knowledge distillation on the digits data: does a distilled student beat the same student trained
alone, and does it survive int8? Modelled on Hinton et al. 2015's MNIST table and FitNets' hints.

Every row is trained by edgekit's own loop (``edgekit.distill.api.distill``: AdamW 3e-3, weight decay
1e-2, cosine schedule, batch 64, the same epochs for every row), once per seed; the seed fixes the
student's initial weights and the batch order, so "alone" and "KD" of one seed differ only in the loss.
The best epoch is chosen on the 180-image calib split; accuracy is measured on the 360-image eval split
(one eval image = 0.28 points), never used for any choice. The KD setting of the rows below the sweep
(FitNet, int8, tiny student, transfer set) is the sweep's best by mean calib accuracy.

int8 rows use the product's exporter: ExecuTorch + XNNPACK through PT2E (``EXPORTERS["executorch"]``),
post-training (128 calib images) or quantization-aware fine-tuning (3 epochs) with the KD loss against
the float teacher (``kd_loss_fn``) or with plain cross-entropy, and are evaluated by running the .pte
in the ExecuTorch runtime (``edgekit.validate``).

Transfer-set block: the labels of 10% of the train split are kept (a fixed random 126 of 1,257), the
rest are unlabeled (label -100: cross-entropy ignores them, the soft term does not). The teacher is the
one trained on all labels (a big model that already exists); the student sees 126 labels, plus the
teacher's soft labels on all 1,257 images when distilled.

One thread per run (the host is shared; results are deterministic per seed). Writes
benchmarks/results/kd_table.{md,json}.

    .venv/bin/python -m benchmarks.kd_table            # or: make kd-table
    .venv/bin/python benchmarks/kd_table.py --seeds 1 --epochs 3 --name kd_smoke   # a quick check
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
ARCH = "examples/digits/model.py:{}"
HINT = "features.5=features.3"  # teacher: ReLU after its 2nd conv [64, 8, 8]; student: the same [32, 8, 8]
LABELLED_FRACTION = 0.1


@dataclass
class Run:
    block: str
    row: str
    arch: str
    parameters: int
    seed: int
    accuracy: float  # on the eval split
    errors: int
    n_eval: int
    best_epoch: int | None = None
    select_accuracy: float | None = None  # calib split, at the best epoch
    select_loss: float | None = None
    seconds: float = 0.0
    temperature: float | None = None
    alpha: float | None = None


class Bench:
    """The project, its splits, the per-seed teachers, and the runs measured so far."""

    def __init__(self, epochs: int):
        from edgekit.project import load_data, load_project

        self.project = load_project(ROOT)
        self.splits = load_data(self.project)
        self.epochs = epochs
        self.runs: list[Run] = []
        self.models: dict[tuple[str, str, int], Any] = {}  # (block, row, seed) -> the trained model

    def train(self, block: str, row: str, arch: str, seed: int, teacher: Any = None, method: str = "ce",
              splits: dict | None = None, **kwargs: Any) -> Any:
        """Train a fresh ``arch`` with ``distill()``; record the run; return the trained model."""
        from edgekit.distill.api import distill
        from edgekit.distill.project import DistillSpec, load_student

        student = load_student(self.project, DistillSpec(student=ARCH.format(arch)), seed)
        t0 = time.perf_counter()
        r = distill(student, teacher, splits or self.splits, method=method, epochs=self.epochs, seed=seed,
                    select_split="calib", cache_teacher=teacher is not None, device="cpu", **kwargs)
        best = r.metrics["history"][r.best_epoch - 1]
        n = r.metrics["n_eval"]
        kd = method != "ce"
        run = Run(block, row, arch, r.metrics["student_parameters"], seed, r.student_accuracy,
                  round((1 - r.student_accuracy) * n), n, r.best_epoch, best["eval_accuracy"], best["eval_loss"],
                  round(time.perf_counter() - t0, 1), kwargs.get("temperature") if kd else None,
                  kwargs.get("alpha") if kd else None)
        self.runs.append(run)
        self.models[block, row, seed] = r.student
        print(f"  {block} | {row} | seed {seed}: {run.accuracy:.2%} ({run.errors} errors), best epoch "
              f"{run.best_epoch}, {run.seconds} s", flush=True)
        return r.student

    def int8(self, block: str, row: str, student: Any, seed: int, scheme: Any, loss_fn: Any = None) -> None:
        """Export a copy of ``student`` to int8 ExecuTorch/XNNPACK and measure the .pte in its runtime."""
        from edgekit.export import EXPORTERS
        from edgekit.train import pt2e_qat_trainer
        from edgekit.validate import validate

        ev, calib, train = self.splits["eval"], self.splits["calib"], self.splits["train"]
        model = copy.deepcopy(student).eval()  # QAT trains the exported graph's parameters in place
        with torch.no_grad():
            reference = [model(torch.from_numpy(ev.x)).numpy()]
        fine_tune = pt2e_qat_trainer(scheme, train.x, train.y, seed, loss_fn) if loss_fn is not None else None
        exporter = EXPORTERS["executorch"]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            result = exporter.export(model, (torch.from_numpy(ev.x[:1]).clone(),), "xnnpack", Path(work),
                                     quant=scheme, calib=calib.x, fine_tune=fine_tune)
            v = validate(result.model_path, exporter.runtime, ev.x, ev.y, reference, ["logits"], None,
                         "target-runtime", timing_runs=1)
        n = len(ev.x)
        run = Run(block, row, type(student).__name__, sum(p.numel() for p in student.parameters()), seed, v.value,
                  round((1 - v.value) * n), n,
                  seconds=round(time.perf_counter() - t0, 1))
        self.runs.append(run)
        print(f"  {block} | {row} | seed {seed}: {run.accuracy:.2%} ({run.errors} errors), {run.seconds} s",
              flush=True)

    def rows(self, block: str, row: str) -> list[Run]:
        return [r for r in self.runs if r.block == block and r.row == row]


def transfer_splits(splits: dict, seed: int = 0) -> dict:
    """The splits with all but ``LABELLED_FRACTION`` of the train labels replaced by -100 (unlabeled)."""
    from edgekit.project import Split

    y = splits["train"].y.copy()
    keep = np.random.default_rng(seed).permutation(len(y))[: round(len(y) * LABELLED_FRACTION)]
    unlabeled = np.ones(len(y), dtype=bool)
    unlabeled[keep] = False
    y[unlabeled] = -100
    return {**splits, "train": Split(splits["train"].x, y)}


def kd_row(temperature: float, alpha: float) -> str:
    return f"+ Hinton KD T={temperature:g} α={alpha:g}"


def chosen_setting(bench: Bench, temperatures: list[float], alphas: list[float]) -> tuple[float, float]:
    """The sweep's best (T, alpha) by mean calib accuracy, then lower mean calib loss: no eval-split choice."""
    def key(ta: tuple[float, float]) -> tuple[float, float]:
        runs = bench.rows("full labels", kd_row(*ta))
        return (statistics.mean(r.select_accuracy for r in runs), -statistics.mean(r.select_loss for r in runs))

    return max(((t, a) for t in temperatures for a in alphas), key=key)


def run_all(args: argparse.Namespace) -> tuple[Bench, tuple[float, float]]:
    from edgekit.distill.losses import kd_loss_fn
    from edgekit.quantize.schemes import Int8QAT, Int8Static
    from edgekit.train import cross_entropy

    bench = Bench(args.epochs)
    full, seeds = "full labels", list(range(args.seeds))
    for s in seeds:
        teacher = bench.train(full, "teacher", "TeacherCNN", s)
        bench.train(full, "student alone", "StudentCNN", s)
        for t in args.temperatures:
            for a in args.alphas:
                bench.train(full, kd_row(t, a), "StudentCNN", s, teacher, "hinton", temperature=t, alpha=a)
    t, a = chosen_setting(bench, args.temperatures, args.alphas)
    kd = {"temperature": t, "alpha": a}
    qat = Int8QAT(epochs=args.qat_epochs)
    for s in seeds:
        teacher, student = bench.models[full, "teacher", s], bench.models[full, kd_row(t, a), s]
        bench.train(full, "+ FitNet hints + KD", "StudentCNN", s, teacher, "fitnet+hinton", hints=[HINT], **kd)
        bench.int8(full, "KD student, int8 PTQ", student, s, Int8Static(calib_samples=128))
        bench.int8(full, "KD student, int8 QAT with KD", student, s, qat,
                   kd_loss_fn(teacher, {"name": "hinton", "kwargs": kd}))
        bench.int8(full, "KD student, int8 QAT with CE", student, s, qat, cross_entropy)
        bench.train(full, "tiny student alone", "TinyCNN", s)
        bench.train(full, "tiny student + KD", "TinyCNN", s, teacher, "hinton", **kd)
    few, transfer = "10% labels", transfer_splits(bench.splits)
    for s in seeds:
        teacher = bench.models[full, "teacher", s]
        bench.train(few, "student alone", "StudentCNN", s, splits=transfer)
        bench.train(few, "student + KD", "StudentCNN", s, teacher, "hinton", splits=transfer, **kd)
        bench.train(few, "student + soft labels only (α=1)", "StudentCNN", s, teacher, "hinton", splits=transfer,
                    temperature=t, alpha=1.0)
        bench.train(few, "tiny student alone", "TinyCNN", s, splits=transfer)
        bench.train(few, "tiny student + KD", "TinyCNN", s, teacher, "hinton", splits=transfer, **kd)
    return bench, (t, a)


def _ms(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(bench: Bench, chosen: tuple[float, float]) -> tuple[str, list[dict]]:
    """The markdown table (one line per row, in run order) and the JSON rows (aggregates + runs)."""
    order = list(dict.fromkeys((r.block, r.row) for r in bench.runs))
    baseline = {("full labels", "StudentCNN"): "student alone", ("full labels", "TinyCNN"): "tiny student alone",
                ("10% labels", "StudentCNN"): "student alone", ("10% labels", "TinyCNN"): "tiny student alone"}
    header = (f"| block | row | params | accuracy % | error % | errors / {bench.runs[0].n_eval} | "
              "Δ errors vs alone (paired) | best epoch |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    out = []
    for block, row in order:
        runs = bench.rows(block, row)
        acc, err = _ms([100 * r.accuracy for r in runs]), _ms([100 * (1 - r.accuracy) for r in runs])
        errors = _ms([r.errors for r in runs])
        base = baseline.get((block, runs[0].arch))
        delta = None
        if base and base != row and runs[0].arch != "TeacherCNN" and "int8" not in row:
            alone = {r.seed: r.errors for r in bench.rows(block, base)}
            delta = _ms([r.errors - alone[r.seed] for r in runs])
        epochs = [r.best_epoch for r in runs if r.best_epoch is not None]
        lines.append(f"| {block} | {row} | {runs[0].parameters:,} | {acc[0]:.2f} ± {acc[1]:.2f} | "
                     f"{err[0]:.2f} ± {err[1]:.2f} | {errors[0]:.1f} | "
                     + (f"{delta[0]:+.1f} ± {delta[1]:.1f}" if delta else "") + " | "
                     + (", ".join(map(str, epochs)) if epochs else "") + " |")
        out.append({"block": block, "row": row, "arch": runs[0].arch, "parameters": runs[0].parameters,
                    "accuracy_mean": acc[0], "accuracy_std": acc[1], "error_mean": err[0], "error_std": err[1],
                    "errors_mean": errors[0], "delta_errors_vs_alone": delta,
                    "runs": [asdict(r) for r in runs]})
    return "\n".join(lines) + "\n\n" + findings(bench, chosen), out


def findings(bench: Bench, chosen: tuple[float, float]) -> str:
    """The acceptance questions, answered from the numbers above."""
    t, a = chosen

    def err(block: str, row: str) -> tuple[float, float]:
        return _ms([100 * (1 - r.accuracy) for r in bench.rows(block, row)])

    def acc_by_seed(row: str) -> dict[int, float]:
        return {r.seed: 100 * r.accuracy for r in bench.rows("full labels", row)}

    full, few = "full labels", "10% labels"
    teacher, alone, kd = err(full, "teacher"), err(full, "student alone"), err(full, kd_row(t, a))
    fit = err(full, "+ FitNet hints + KD")
    fp32, qat, ptq = (acc_by_seed(r) for r in (kd_row(t, a), "KD student, int8 QAT with KD", "KD student, int8 PTQ"))
    qat_drop = max(fp32[s] - qat[s] for s in fp32)
    ptq_drop = max(fp32[s] - ptq[s] for s in fp32)
    f_alone, f_kd = err(few, "student alone"), err(few, "student + KD")
    tiny_alone, tiny_kd = err(full, "tiny student alone"), err(full, "tiny student + KD")
    ft_alone, ft_kd = err(few, "tiny student alone"), err(few, "tiny student + KD")
    margin, spread = alone[0] - kd[0], max(alone[1], kd[1])
    one_image = 100 / bench.runs[0].n_eval
    lines = [
        (f"KD setting below the sweep: T={t:g}, α={a:g} (the sweep's best mean calib accuracy). Mean ± sample "
         f"std over {len(fp32)} seeds; {bench.epochs} epochs per run; one eval image = {one_image:.2f} points."),
        "",
        (f"- Teacher {teacher[0]:.2f}% error, student alone {alone[0]:.2f} ± {alone[1]:.2f}%: the capacity gap is "
         f"{alone[0] - teacher[0]:.2f} points, about {(alone[0] - teacher[0]) / one_image:.1f} eval images."),
        (f"- Full labels, KD vs alone: {kd[0]:.2f} ± {kd[1]:.2f}% vs {alone[0]:.2f} ± {alone[1]:.2f}% error; "
         f"margin {margin:+.2f} points {'>' if margin > spread else '<='} the larger seed std {spread:.2f}."),
        (f"- FitNet hints + KD vs KD: {fit[0]:.2f} ± {fit[1]:.2f}% vs {kd[0]:.2f} ± {kd[1]:.2f}% error "
         f"({'at least matches' if fit[0] <= kd[0] else 'does not match'} KD on the mean)."),
        (f"- int8 (ExecuTorch runtime) vs the same seed's fp32 KD student, worst seed: QAT with KD "
         f"{qat_drop:+.2f} points of accuracy lost ({'within' if qat_drop <= 0.5 else 'outside'} 0.5), "
         f"PTQ {ptq_drop:+.2f} (negative = int8 scored higher)."),
        (f"- Tiny student ({bench.rows(full, 'tiny student alone')[0].parameters} parameters), full labels: "
         f"KD {tiny_kd[0]:.2f} ± {tiny_kd[1]:.2f}% vs alone {tiny_alone[0]:.2f} ± {tiny_alone[1]:.2f}% error."),
        (f"- 10% labels, KD on all images vs alone: student {f_kd[0]:.2f} ± {f_kd[1]:.2f}% vs {f_alone[0]:.2f} ± "
         f"{f_alone[1]:.2f}% error (margin {f_alone[0] - f_kd[0]:+.2f} points); tiny student {ft_kd[0]:.2f} ± "
         f"{ft_kd[1]:.2f}% vs {ft_alone[0]:.2f} ± {ft_alone[1]:.2f}%."),
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9])
    ap.add_argument("--name", default="kd_table", help="results file name (benchmarks/results/NAME.{md,json})")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    bench, chosen = run_all(args)
    table, rows = summarise(bench, chosen)
    minutes = (time.perf_counter() - t0) / 60
    note = (f"Digits (sklearn's UCI copy): 1,257 train / 180 calib (best-epoch choice, int8 calibration) / 360 eval. "
            f"Command: `.venv/bin/python -m benchmarks.kd_table` ({minutes:.0f} min on one thread). "
            "Δ errors vs alone: per seed, the same architecture with the same seed trained alone.")
    write_results(args.name, "Knowledge distillation on digits: teacher, student alone, KD, FitNet, int8",
                  f"{table}\n\n{note}", rows)
    print(table)


if __name__ == "__main__":
    main()
