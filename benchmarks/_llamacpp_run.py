"""Measure one GGUF in llama.cpp (llama-cpp-python), in the benchmark's own venv (no torch, no edgekit):
prefill tokens/s at several prompt lengths, time to first token, decode tokens/s (greedy, one token per
eval call), peak RSS and perplexity on the given token windows. Prints one JSON object.

    .venv-llamacpp/bin/python benchmarks/_llamacpp_run.py MODEL.gguf SPEC.json
    .venv-llamacpp/bin/python benchmarks/_llamacpp_run.py quantize SRC.gguf DEST.gguf Q8_0
SPEC: {"threads", "n_ctx", "prompt": [ids], "new_tokens", "prefill": {"16": [ids], ...}, "windows": [[ids]],
"rounds"}.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def quantize(src: str, dest: str, kind: str) -> None:
    """``src`` requantized to ``kind`` (Q8_0) with llama.cpp's own quantizer (llama_model_quantize)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.allow_requantize = True
    tmp = dest + ".tmp"
    if llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), params) != 0:
        raise SystemExit(f"llama_model_quantize {src} -> {kind} failed")
    import os

    os.replace(tmp, dest)


def main() -> None:
    if sys.argv[1] == "quantize":
        return quantize(*sys.argv[2:5])
    from llama_cpp import Llama

    model_path, spec = sys.argv[1], json.load(open(sys.argv[2]))
    threads = spec["threads"]
    llm = Llama(model_path=model_path, n_ctx=spec["n_ctx"], n_threads=threads, n_threads_batch=threads,
                n_batch=spec["n_ctx"], logits_all=True, verbose=False)
    result = {"engine": "llama.cpp", "version": __import__("llama_cpp").__version__, "threads": threads}

    def prefill(ids: list[int]) -> float:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        return time.perf_counter() - t0

    result["prefill"] = {}
    for n, ids in spec["prefill"].items():
        prefill(ids)
        times = [prefill(ids) for _ in range(spec["rounds"])]
        result["prefill"][n] = {"p50_ms": float(np.median(times)) * 1e3, "tokens_per_s": len(ids) / float(np.median(times))}
    ttft, per_token, tokens = [], [], []
    for _ in range(spec["rounds"] + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(spec["prompt"])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        ttft.append(time.perf_counter() - t0)
        out = [nxt]
        for _ in range(spec["new_tokens"] - 1):
            t0 = time.perf_counter()
            llm.eval([nxt])
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            per_token.append(time.perf_counter() - t0)
            out.append(nxt)
        tokens = out
    per_token = per_token[spec["new_tokens"] - 1:]  # the first round is the warm-up
    result.update(time_to_first_token_ms=float(np.median(ttft[1:])) * 1e3,
                  decode_tokens_per_s=1.0 / float(np.median(per_token)), greedy_tokens=tokens)
    total, count = 0.0, 0
    for w in spec["windows"]:
        llm.reset()
        llm.eval(w[:-1])
        logits = np.asarray(llm.scores[: len(w) - 1], np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float(lp[np.arange(len(w) - 1), w[1:]].sum())
        count += len(w) - 1
    result.update(perplexity=float(np.exp(total / count)), eval_tokens=count, peak_rss_mb=peak_rss_mb())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
