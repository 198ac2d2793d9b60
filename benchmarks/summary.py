"""One table of everything `make bench` measured: benchmarks/results/summary.md.

Reads the tables the other benchmarks wrote (each in one run, with the machine it ran on) and puts the
figures that answer "what do I gain, and what does it cost" side by side: per model and format, fp32 and
quantized latency as ratios to torch eager fp32 and to the fp32 export, size ratio against the 0.25 that
int8 weights alone would give, accuracy deltas; the runner's overhead; edgekit build's wall time and peak
RSS; the language models from `make bench-llm`; the KD conclusions with their spread across seeds. Ratios
come from one benchmark's run (timed side by side there), never across runs or machines.

    .venv/bin/python benchmarks/summary.py      # `make bench` runs it last
"""

from __future__ import annotations


from _results import RESULTS, describe, read_rows, write_results


def _load(name: str) -> tuple[dict | None, list[dict]] | None:
    path = RESULTS / f"{name}.json"
    return read_rows(path) if path.is_file() else None


def _machine(m: dict | None) -> str:
    return describe(m) if m else "not recorded (written before tables recorded their machine)"


def _x(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}×"


def main() -> None:
    out: list[str] = []
    machines: dict[str, str] = {}

    q = _load("quantization")
    if q:
        m, rows = q
        machines["quantization"] = _machine(m)
        out += ["## Images: digits CNN and MobileNetV2-shaped (224²), per format", "",
                "| model | format | fp32 vs eager | int8 vs eager | int8 vs fp32 export | int8/fp32 size (0.25 = "
                "int8 weights alone) | accuracy fp32 → int8 (points) |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['model']} | {r['format']} | {_x(r.get('fp32_vs_eager'))} | {_x(r.get('int8_vs_eager'))} | "
                       f"{_x(r['speedup'])} ({r['speedup_range'][0]:.2f}–{r['speedup_range'][1]:.2f}) | "
                       f"{r['size_ratio']:.3f} ({'within' if r['size_ratio'] <= 0.25 else 'over'} 0.25) | "
                       f"{r['fp32']['accuracy']:.2%} → {r['int8']['accuracy']:.2%} "
                       f"({r['accuracy_delta_points']:+.2f}) |")
        out += ["", "'vs' = speed ratio (higher is faster), batch 1, median of per-round ratios of alternating rounds "
                "(`benchmarks/quantization.py`). MobileNetV2 has random weights: its 'accuracy' is top-1 agreement "
                "with PyTorch. Size: per-channel scales and int32 biases sit above 0.25 (see the README).", ""]

    e = _load("embedding")
    if e:
        m, rows = e
        machines["embedding"] = _machine(m)
        out += ["## Text embeddings: MiniLM-L6 (sentence-transformers), each profile's default", "",
                "| device | path | precision | vs eager | vs fp32 export | size vs fp32 | cosine min | retrieval "
                "agreement |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                out.append(f"| {r['device']} | | | | | | | refused: {r['error'].removeprefix('error: ')} |")
                continue
            out.append(f"| {r['device']} | {r['path']} | {r['precision']} | {_x(r.get('vs_eager'))} | "
                       f"{_x(r['latency_ratio'])} | {r['size_ratio']:.3f} | {r['cosine_min']:.4f} | "
                       f"{r['retrieval_agreement']:.1%} |")
        out += ["", "Validated in the target runtime or on a host twin (jetson: ONNX Runtime CPU for TensorRT); "
                "latency is this host's (`benchmarks/embedding.py`).", ""]

    for name, title in (("llm", "SmolLM2-135M (`benchmarks/llm.py`)"),):
        llm = _load(name)
        if not llm:
            continue
        m, rows = llm
        machines[name] = _machine(m)
        eager = next((r for r in rows if r["engine"] == "eager"), None)
        onnx = next((r for r in rows if r.get("variant") == "onnx"), None)
        fp32 = eager["perplexity"] if eager else None
        out += [f"## Language model: {title}", "",
                "| engine | weights | decode tokens/s | vs eager fp32 | vs fp32 ONNX export | size | perplexity vs "
                "fp32 |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            tps = r["decode_tokens_per_s"]
            size = f"{r['bytes'] / 1e6:.0f} MB" if r.get("bytes") else ""
            ppl = f"{(r['perplexity'] / fp32 - 1):+.1%}" if fp32 and r.get("perplexity") else ""
            out.append(f"| {r['engine']} | {r.get('precision') or ''} | {tps:.1f} | "
                       f"{_x(tps / eager['decode_tokens_per_s']) if eager else ''} | "
                       f"{_x(tps / onnx['decode_tokens_per_s']) if onnx else ''} | {size} | {ppl} |")
        out += ["", f"One run of `benchmarks/llm.py` (2 threads); see benchmarks/results/{name}.md for prefill, time "
                "to first token, peak memory and bits per weight.", ""]

    kd = _load("lm_kd")
    if kd:
        m, rows = kd
        machines["lm_kd"] = _machine(m)
        by: dict[str, list[float]] = {}
        for r in rows:
            if r.get("eval_perplexity") is not None:
                by.setdefault(f"{r['method']}" + (f" top-{r['top_k']}" if r.get("top_k") else ""), []).append(
                    r["eval_perplexity"])
        out += ["## tiny_lm: token-level KD (`benchmarks/lm_kd.py`)", "", "| student | seeds | eval perplexity "
                "(mean, min–max) |", "|---|---|---|"]
        for name, v in by.items():
            out.append(f"| {name} | {len(v)} | {sum(v) / len(v):.2f} ({min(v):.2f}–{max(v):.2f}) |")
        out.append("")

    ro = _load("runner_overhead")
    bt = _load("build_time")
    if ro or bt:
        out += ["## The tool itself", ""]
    if ro:
        m, rows = ro
        machines["runner_overhead"] = _machine(m)
        out += ["| runner overhead (runner p50 / bare-loop p50) | ratio | range over rounds |", "|---|---|---|"]
        out += [f"| {r['device']} ({r['runtime']}) | {r['ratio']:.3f} | {r['ratio_min']:.2f}–{r['ratio_max']:.2f} |"
                for r in rows]
        out.append("")
    if bt:
        m, rows = bt
        machines["build_time"] = _machine(m)
        out += ["| edgekit build (digits) | wall time | peak RSS |", "|---|---|---|"]
        out += [f"| {r['device']} {r['format']}/{r['backend']} {r['precision']} | {r['wall_s']:.1f} s | "
                f"{r['peak_rss_mb']} MB |" for r in rows]
        out.append("")

    out += ["## Distillation on digits (`make kd-table`, 3 seeds)", "",
            "Quoted with their spread: with full labels KD is within seed noise of the student alone "
            "(benchmarks/results/kd_table.md); with 10% of the labels KD cuts the error from about 10% to about 2%. "
            "Training is deterministic per machine, not across CPUs: rerun from a fresh clone on another machine, "
            "the table kept its conclusions (10%-labels gain 10.19 → 2.04% error) but full-label rows moved by up to "
            "0.5 points (teacher 1.11 → 1.02%, KD T=2 α=0.9 1.94 → 2.41%). Compare conclusions, not decimals.", ""]
    out += ["## Machines", ""] + [f"- {name}: {text}" for name, text in machines.items()]
    write_results("summary", "Benchmark summary: what each format and scheme gains, side by side",
                  "\n".join(out), [{"tables": sorted(machines)}])
    print((RESULTS / "summary.md").read_text())


if __name__ == "__main__":
    main()
