"""Language-model bundles: a decoding session per format over the exported KV cache, greedy generation,
perplexity through the export, and the decode timings (time to first token, prefill and decode tokens/s).

stdlib + numpy + the one runtime; ``cache`` is the manifest's cache layout (what ``edgekit.lm.export`` wrote).
A session holds the cache and the position; ``feed(tokens)`` appends tokens and returns their next-token
logits ``[len(tokens), vocab]``; ``reset()`` starts a new sequence.

- ExecuTorch: ``forward(tokens, input_pos)``; the program keeps its cache in mutable buffers.
- ONNX Runtime: the cache goes in as ``past_key_values.*`` and comes back as ``present.*``.
- LiteRT: ``prefill`` (a fixed number of tokens; a shorter chunk is padded, the padding's cache entries are
  overwritten before anything attends to them) and ``decode`` (one token), over a fixed-size cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_runner import runtimes


class ContextFull(ValueError):
    """More tokens than the exported model's maximum context."""


class Session:
    def __init__(self, cache: dict[str, Any]):
        self.max_context = int(cache["max_context"])
        self.vocab_size = int(cache["vocab_size"])
        self.eos_ids = [int(e) for e in cache.get("eos_ids") or []]
        self.cache = cache
        self.pos = 0
        self.info: dict[str, Any] = {}

    def feed(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if not len(tokens):
            raise ValueError("no tokens to feed")
        if self.pos + len(tokens) > self.max_context:
            raise ContextFull(f"{self.pos + len(tokens)} tokens do not fit the model's maximum context of "
                              f"{self.max_context} (set when the bundle was built: [language_model] max_context)")
        logits = self._feed(tokens)
        self.pos += len(tokens)
        return logits

    def reset(self) -> None:
        self.pos = 0
        self._reset()

    def _feed(self, tokens: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _reset(self) -> None:
        pass


class ExecuTorchSession(Session):
    def __init__(self, path: Path, cache: dict[str, Any], threads: int | None, target: str | None):
        super().__init__(cache)
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  llama::update_cache, custom_sdpa

        self.model = runtimes.load(path, "executorch", threads, target)
        self.info = self.model.info

    def _feed(self, tokens: np.ndarray) -> np.ndarray:
        out = self.model.run([tokens[None, :], np.array([self.pos], dtype=np.int64)])[0]
        return out.reshape(len(tokens), -1)


class OnnxSession(Session):
    def __init__(self, path: Path, cache: dict[str, Any], threads: int | None, target: str | None):
        super().__init__(cache)
        self.model = runtimes.load(path, "onnxruntime", threads, target)
        self.info = self.model.info
        self._reset()

    def _reset(self) -> None:
        c = self.cache
        empty = np.zeros((1, int(c["kv_heads"]), 0, int(c["head_dim"])), np.float32)
        self.past = [empty] * (2 * int(c["layers"]))

    def _feed(self, tokens: np.ndarray) -> np.ndarray:
        logits, *self.past = self.model.run([tokens[None, :], *self.past])
        return logits.reshape(len(tokens), -1)


class LiteRtSession(Session):
    def __init__(self, path: Path, cache: dict[str, Any], threads: int | None, target: str | None):
        super().__init__(cache)
        interpreter_cls, _, name, version = runtimes._import_litert()
        self.interp = interpreter_cls(model_path=str(path), num_threads=threads)
        self.prefill_runner = self.interp.get_signature_runner("prefill")
        self.decode_runner = self.interp.get_signature_runner("decode")
        self.prefill_len = int(cache["prefill"])
        self.names = [f"{kv}_cache_{i}" for i in range(int(cache["layers"])) for kv in ("k", "v")]
        self.info = {"runtime": name, "version": version, "target": target, "threads": threads,
                     "delegate": "XNNPACK (the interpreter's default CPU delegate)", "fallback": None,
                     "signatures": ["prefill", "decode"]}
        self._reset()

    def _reset(self) -> None:
        self.caches = {n: np.zeros(self.cache["shape"], np.float32) for n in self.names}

    def _call(self, runner: Any, tokens: np.ndarray, pos: int) -> np.ndarray:
        # the converter narrows integer inputs to int32
        out = runner(tokens=tokens[None, :].astype(np.int32),
                     input_pos=np.arange(pos, pos + len(tokens), dtype=np.int32), **self.caches)
        self.caches = {n: out[n] for n in self.names}
        return out["logits"].reshape(len(tokens), -1)

    def _feed(self, tokens: np.ndarray) -> np.ndarray:
        pieces, pos, i = [], self.pos, 0
        while i < len(tokens):
            rest = len(tokens) - i
            if rest > 1 and pos + self.prefill_len <= self.max_context:
                n = min(rest, self.prefill_len)
                chunk = np.zeros(self.prefill_len, np.int64)
                chunk[:n] = tokens[i:i + n]
                pieces.append(self._call(self.prefill_runner, chunk, pos)[:n])
            else:
                n = 1
                pieces.append(self._call(self.decode_runner, tokens[i:i + 1], pos))
            i, pos = i + n, pos + n
        return np.concatenate(pieces)


SESSIONS = {"executorch": ExecuTorchSession, "onnxruntime": OnnxSession, "litert": LiteRtSession}


def open_session(path: str | Path, runtime: str, cache: dict[str, Any], threads: int | None = None,
                 target: str | None = None) -> Session:
    if runtime not in SESSIONS:
        raise ValueError(f"no language-model session for runtime {runtime!r}; known: {', '.join(SESSIONS)}")
    return SESSIONS[runtime](Path(path), cache, threads, target)


@dataclass
class Generation:
    tokens: list[int]
    time_to_first_token_ms: float
    decode_ms: list[float] = field(default_factory=list)  # one per generated token after the first
    stopped_at_eos: bool = False


def generate(session: Session, prompt: list[int], max_new_tokens: int, stop_at_eos: bool = True) -> Generation:
    """Greedy decoding from a fresh cache. Time to first token = prefill of the prompt + the argmax."""
    if not len(prompt):
        raise ValueError("an empty prompt: give at least one token")
    session.reset()
    room = session.max_context - len(prompt)
    if room < 1:
        raise ContextFull(f"a prompt of {len(prompt)} tokens leaves no room to generate within the maximum "
                          f"context of {session.max_context}")
    t0 = time.perf_counter()
    nxt = int(session.feed(prompt)[-1].argmax())
    result = Generation([nxt], (time.perf_counter() - t0) * 1e3)
    while len(result.tokens) < min(max_new_tokens, room):
        if stop_at_eos and nxt in session.eos_ids:
            result.stopped_at_eos = True
            break
        t0 = time.perf_counter()
        nxt = int(session.feed([nxt])[-1].argmax())
        result.decode_ms.append((time.perf_counter() - t0) * 1e3)
        result.tokens.append(nxt)
    return result


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def perplexity(session: Session, windows: np.ndarray) -> dict[str, float]:
    """exp(mean next-token cross-entropy) over ``windows [N, L + 1]`` (each from a fresh cache), as in training."""
    total, count = 0.0, 0
    for w in np.asarray(windows, np.int64):
        session.reset()
        lp = log_softmax(session.feed(w[:-1]))
        total -= float(lp[np.arange(len(w) - 1), w[1:]].sum())
        count += len(w) - 1
    return {"perplexity": float(np.exp(total / count)), "tokens": count, "windows": len(windows)}


def measure_bundle(report: Any, probe: Any, model_path: Path, manifest: Any, data: dict[str, np.ndarray],
                   settings: Any, threads: int | None, accuracy: bool) -> None:
    """The language-model half of ``run_bundle``: load the session, time prefill at several prompt lengths,
    time to first token and decode over greedy generations of the bundle's prompt, the memory peak of those
    runs, and (``accuracy``) perplexity on the eval windows and greedy agreement with PyTorch's continuation.
    Fills ``report`` (status OK once timing succeeded); a runtime failure propagates to the caller."""
    from edgekit_runner import measure
    from edgekit_runner.report import OK
    from edgekit_runner.tasks import get_task

    model_info, spec = manifest.data["model"], manifest.data["language_model"]
    probe.reset_peak()
    t0 = time.perf_counter_ns()
    session = open_session(model_path, model_info["runtime"], spec["cache"], threads, model_info.get("runtime_target"))
    report.timing["load_ms"] = (time.perf_counter_ns() - t0) / 1e6
    probe.peak("peak_rss_load_mb")
    report.runtime, report.fallback = session.info, session.info.get("fallback")
    prompt = [int(t) for t in data["prompt"].reshape(-1)]
    new_tokens = int(data["greedy_reference"].size)
    text = data["input.tokens"][0]
    light = measure.Settings(warmup_runs=1, warmup_seconds=0.0, min_runs=max(3, settings.min_runs // 10),
                             min_seconds=settings.min_seconds, max_seconds=settings.max_seconds)

    def prefill(tokens: list[int]) -> None:
        session.reset()
        session.feed(tokens)

    probe.reset_peak()
    prefill_stats = {}
    for n in spec["prefill_lengths"]:
        tokens = [int(t) for t in text[:n]]
        _, stats = measure.measure(lambda: prefill(tokens), light)
        prefill_stats[str(n)] = {"p50_ms": stats["p50"], "tokens_per_s": n / stats["p50"] * 1e3, "runs": stats["n"]}
    ttft_timing, ttft = measure.measure(lambda: generate(session, prompt, 1), light)
    per_token: list[float] = []
    generate(session, prompt, new_tokens, stop_at_eos=False)  # warm-up
    rounds = measure.repeat(lambda: per_token.extend(generate(session, prompt, new_tokens, stop_at_eos=False).decode_ms),
                            3, settings.min_seconds, settings.max_seconds)
    probe.peak("peak_rss_run_mb")
    probe.rss("rss_after_runs_mb")
    decode = measure.latency_stats(np.asarray(per_token) * 1e6)
    report.latency_ms = {**decode, "per": "decoded token"}
    report.timing.update(ttft_timing, timed_call="language model: prefill (prompt lengths), time to first token "
                         "(fresh cache, prompt, argmax), decode (one token per call, greedy, cache kept)",
                         generation_rounds=len(rounds.samples_ns), tokens_per_round=new_tokens, prompt_tokens=len(prompt))
    report.metrics = {"time_to_first_token_ms": ttft["p50"], "decode_tokens_per_s": 1e3 / decode["p50"],
                      "prefill": prefill_stats, "prompt_tokens": len(prompt)}
    report.status = OK
    if accuracy:
        windows = data["input.tokens"]
        ppl = perplexity(session, windows)
        greedy = generate(session, prompt, new_tokens, stop_at_eos=False).tokens
        arrays = {k: data[k] for k in ("greedy_reference", "reference_perplexity") if k in data}
        scored = get_task(manifest.task).score({"greedy": np.asarray(greedy), "perplexity": np.asarray(ppl["perplexity"])},
                                               arrays, None)
        report.metrics.update(scored, eval_tokens=ppl["tokens"], eval_windows=ppl["windows"])
