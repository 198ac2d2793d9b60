"""Pruning the LM example (examples/tiny_lm's student): perplexity, decode speed and size per format, one run.

Variants: dense (and, as the control, dense with the same KD epochs from itself); structured 30% / 50% (MLP neurons and query heads, edgekit.lm.prune); unstructured 50% / 80% and
2:4 (the decoder layers' linear weights); each without and with token-level KD recovery from the unpruned student
(``--kd-epochs``, top-64 logits, the best epoch on calib), as the build's prune stage does. Each pruned decoder is
saved as a Llama folder and built by ``edgekit build`` (``[model] hf``) for pixel8 in each format, fp32 and
int8-weight-only: perplexity on the eval windows through the export, raw and deflated model size; then every bundle of a
format is loaded by the runner's LM session and its decode timed in alternating rounds (64 greedy tokens per round),
as a ratio to dense fp32 of the same format. Needs the cached student (`make tiny-lm`). Writes
benchmarks/results/lm_pruning.{md,json}.

    .venv/bin/python benchmarks/lm_pruning.py [--formats onnx executorch] [--kd-epochs 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny_lm"
PRUNINGS = ["structured:0.3", "structured:0.5", "unstructured:0.5", "unstructured:0.8", "2:4"]


def project_toml(folder: Path) -> str:
    """examples/tiny_lm's project with [model] hf = the pruned decoder's folder, no teacher."""
    text = (EXAMPLE / "edgekit.toml").read_text()
    head, rest = text.split("[model]", 1)
    rest = rest.split("[data]", 1)[1]
    rest = rest.replace('entry = "data.py:', f'entry = "{EXAMPLE}/data.py:').replace(
        'tokenizer = "tokenizer.json"', f'tokenizer = "{EXAMPLE}/tokenizer.json"')
    return f'{head}[model]\nhf = "{folder}"\n\n[data]{rest}'


def self_distilled(dense, windows: dict, d, seed: int, epochs: int, models: Path) -> tuple:
    """The control: the dense student given the same KD epochs from itself, unpruned (what the training alone buys)."""
    import copy

    from edgekit.lm.distill import perplexity, train
    from edgekit.lm.model import load_folder, save_folder

    folder = models / f"dense-self-kd{epochs}-{d.temperature:g}-{d.alpha:g}-{d.batch_size}-{seed}"
    if (folder / "record.json").is_file():
        return "dense", True, load_folder(folder), json.loads((folder / "record.json").read_text())
    t0 = time.perf_counter()
    model, _ = train(copy.deepcopy(dense), windows, epochs=epochs, lr=3e-3, batch_size=d.batch_size, seed=seed,
                     teacher=copy.deepcopy(dense).eval(), temperature=d.temperature, alpha=d.alpha, say=lambda m: None)
    n = sum(p.numel() for p in model.parameters())
    ppl = perplexity(dense, windows["eval"])
    rec = {"parameters_after": n, "nonzero_after": n, "perplexity_dense": ppl, "perplexity_pruned": ppl,
           "perplexity_after": perplexity(model, windows["eval"]), "seconds": round(time.perf_counter() - t0, 1)}
    save_folder(model, folder)
    shutil.copy2(EXAMPLE / "tokenizer.json", folder / "tokenizer.json")
    (folder / "record.json").write_text(json.dumps(rec))
    return "dense", True, model, rec


def decode_rounds(rows: list[dict], keys: list[str], rounds: int, threads: int) -> None:
    """Decode ms per token of every bundle of one format, in alternating rounds (order flipped each round): each
    round greedily generates 64 tokens from the example's prompt and takes the median step; the ratio is the
    median over rounds of dense fp32 / this."""
    import json as _json
    import statistics

    import numpy as np
    from edgekit_runner import lm

    sessions = {}
    for i, r in enumerate(rows):
        for k in keys:
            bundle = r["formats"][k]["bundle"]
            m = _json.loads((bundle / "manifest.json").read_text())
            prompt = np.load(bundle / "eval.npz")["prompt"][0].tolist()
            sessions[(i, k)] = (lm.open_session(bundle / m["model"]["file"], m["model"]["runtime"],
                                                m["language_model"]["cache"], threads=threads), prompt)
    ms: dict = {key: [] for key in sessions}
    order = list(sessions)
    for n in range(rounds):
        for key in (order if n % 2 == 0 else order[::-1]):
            session, prompt = sessions[key]
            ms[key].append(statistics.median(lm.generate(session, prompt, 64, stop_at_eos=False).decode_ms))
    base = ms[(0, keys[0])]
    for (i, k), values in ms.items():
        rows[i]["formats"][k].update(decode_ms=statistics.median(values), decode_round_ms=values,
                                     decode_speed_vs_dense_fp32=statistics.median(b / v for b, v in zip(base, values)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", nargs="+", default=["onnx", "executorch"], choices=["onnx", "executorch", "tflite"])
    ap.add_argument("--kd-epochs", type=int, default=5)
    ap.add_argument("--prunings", nargs="+", default=PRUNINGS, help="the pruned variants (dense is always measured)")
    ap.add_argument("--rounds", type=int, default=7, help="alternating decode timing rounds per format")
    ap.add_argument("--threads", type=int, default=1, help="runtime threads (1: steadiest on a shared host)")
    args = ap.parse_args()
    import edgekit
    from edgekit.fsutil import cache_dir
    from edgekit.lm.model import load_folder, save_folder
    from edgekit.lm.prune import prune_for_build
    from edgekit.project import load_data, load_model, load_project
    from edgekit.prune import PruneSpec

    sys.path.insert(0, str(EXAMPLE))
    from model import weights_path

    project = load_project(EXAMPLE)
    splits = load_data(project)
    windows = {n: splits[n].x for n in ("train", "calib", "eval")}
    dense = load_model(project).eval()
    d = project.distill
    rows = []
    models = cache_dir() / "bench-lm-pruning"  # pruned (and recovered) decoders, kept: the KD runs take minutes
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = [("dense", False, dense, None), self_distilled(dense, windows, d, project.seed, args.kd_epochs, models)]
        for label in args.prunings:
            for kd in (False, True):
                spec = PruneSpec.parse(label, epochs=args.kd_epochs if kd else 0)
                key = hashlib.sha256(json.dumps([spec.model_dump(), str(weights_path("student")), d.temperature,
                                                 d.alpha, d.batch_size, project.seed]).encode()).hexdigest()[:12]
                folder = models / f"{label.replace(':', '-')}-kd{int(kd)}-{key}"
                if (folder / "record.json").is_file():
                    model, rec = load_folder(folder), json.loads((folder / "record.json").read_text())
                else:
                    t0 = time.perf_counter()
                    model, rec = prune_for_build(dense, windows, spec, d.temperature, d.alpha, d.batch_size,
                                                 project.seed, lambda msg: None)
                    rec["seconds"] = round(time.perf_counter() - t0, 1)
                    save_folder(model, folder)
                    shutil.copy2(EXAMPLE / "tokenizer.json", folder / "tokenizer.json")
                    (folder / "record.json").write_text(json.dumps(rec, default=str))
                print(f"  {label} kd={kd}: perplexity {rec['perplexity_dense']:.2f} dense -> {rec['perplexity_pruned']:.2f} "
                      f"-> {rec['perplexity_after']:.2f} ({rec['seconds']:.0f} s)", flush=True)
                variants.append((label, kd, model, rec))
        for i, (label, kd, model, rec) in enumerate(variants):
            folder = tmp / f"model-{i}"
            save_folder(model, folder)
            shutil.copy2(EXAMPLE / "tokenizer.json", folder / "tokenizer.json")
            (tmp / f"project-{i}").mkdir()
            (tmp / f"project-{i}" / "edgekit.toml").write_text(project_toml(folder))
            row = {"pruning": label, "kd": kd, "parameters": rec["parameters_after"] if rec else
                   sum(p.numel() for p in model.parameters()),
                   "nonzero": rec["nonzero_after"] if rec else sum(p.numel() for p in model.parameters()),
                   "pytorch_perplexity": rec["perplexity_after"] if rec else None, "record": rec, "formats": {}}
            for fmt in args.formats:
                for quant in ("none", "int8-weight-only"):
                    out = tmp / f"bundle-{i}-{fmt}-{quant}"
                    bundle = edgekit.build("pixel8", tmp / f"project-{i}", format=fmt, quant=quant, out=out,
                                           distill=False, fail_on_budget=False)
                    m = bundle.manifest.data
                    met = m["validation"]["metrics"]
                    cell = {"bytes": m["model"]["bytes"], "deflated": m["model"]["compressed_bytes"],
                            "perplexity": met["perplexity"], "greedy_agreement": met["greedy_agreement"],
                            "reference_perplexity": m["language_model"]["reference_perplexity"], "bundle": out}
                    row["formats"][f"{fmt} {'fp32' if quant == 'none' else 'int8'}"] = cell
                    print(f"  {label} kd={kd} {fmt} {quant}: {cell}", flush=True)
            rows.append(row)
        keys = list(rows[0]["formats"])
        for fmt in args.formats:
            decode_rounds(rows, [k for k in keys if k.startswith(fmt)], args.rounds, args.threads)
    for r in rows:
        for k in keys:
            r["formats"][k].pop("bundle")
    lines = ["| pruning | KD | parameters | non-zero | " + " | ".join(f"{k} KiB (deflated)" for k in keys) + " | "
             + " | ".join(f"{k} decode speed / dense fp32" for k in keys) + " | "
             + " | ".join(f"{k} perplexity" for k in keys) + " |",
             "|---|---|---|---|" + "---|" * (3 * len(keys))]
    for r in rows:
        f = r["formats"]
        lines.append(f"| {r['pruning']} | {'yes' if r['kd'] else 'no'} | {r['parameters']:,} | {r['nonzero']:,} | "
                     + " | ".join(f"{f[k]['bytes'] / 1024:.0f} ({f[k]['deflated'] / 1024:.0f})" for k in keys) + " | "
                     + " | ".join(f"{f[k]['decode_speed_vs_dense_fp32']:.2f}" for k in keys) + " | "
                     + " | ".join(f"{f[k]['perplexity']:.2f}" for k in keys) + " |")
    note = (f"examples/tiny_lm student (eval windows of the example; lower perplexity is better). KD: "
            f"{args.kd_epochs} epochs of token-level Hinton KD (T={d.temperature:g}, alpha={d.alpha:g}, the teacher's "
            "top-64 logits) from the unpruned student, the best epoch by calib perplexity. int8 = each format's own "
            "int8 weight-only LLM recipe. Decode: each bundle of a format loaded by the runner's LM session "
            f"({args.threads} thread(s)) and timed in {args.rounds} alternating rounds of a 64-token greedy generation "
            "from the example's prompt (median step per round); speed = median over rounds of dense fp32 ms / this "
            "ms, same format, this host, batch 1. "
            "Unstructured and 2:4 zero weights but keep every shape, so their raw size and speed stay the dense "
            "model's; only the deflated size shrinks, and their speed ratios show this host's timing noise. "
            "'dense, KD yes' is the control: the unpruned student given the same KD epochs from itself.")
    write_results("lm_pruning", "Pruning the LM example: MLP neurons and heads, unstructured, 2:4; with and without "
                  "KD", "\n".join(lines) + f"\n\n{note}", rows)
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
