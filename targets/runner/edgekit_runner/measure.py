"""Latency measurement with the stop rules of TFLite's ``benchmark_model``: first inference, warm-up, timed runs.

Each phase repeats the call until BOTH a minimum count and a minimum duration are met, or
until ``max_seconds`` has passed (checked between runs: a run in flight is never cut). The
clock is ``time.perf_counter_ns`` (monotonic, integer nanoseconds); each run is timed on its
own, so the statistics are over single inferences. The clock is a parameter so that the stop
rule can be tested with a fake clock.

>>> timing, latency = measure(model.bound([x]), Settings(min_runs=100))  # doctest: +SKIP
>>> latency["p50"], latency["p99"], timing["timed_runs"]  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import math
import os
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MAX_CPUS = 4096  # the kernel's CONFIG_NR_CPUS ceiling on common builds

Clock = Callable[[], int]
NS_PER_MS = 1e6


@dataclass(frozen=True)
class Settings:
    """How long to measure. Defaults in the spirit of benchmark_model (1 warm-up run and 0.5 s, 50 runs and 1 s)."""

    warmup_runs: int = 1
    warmup_seconds: float = 0.5
    min_runs: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("warmup_seconds", "min_seconds", "max_seconds"):
            value = getattr(self, name)
            if not math.isfinite(value) or value > 86_400:
                raise ValueError(f"--{name.replace('_', '-')} must be a number of seconds up to a day (got {value})")
        if self.warmup_runs < 0 or self.warmup_seconds < 0 or self.min_seconds < 0:
            raise ValueError("warm-up runs/seconds and --min-seconds must be >= 0")
        if self.min_runs < 1:
            raise ValueError(f"--runs must be >= 1 (got {self.min_runs})")
        if self.max_seconds <= 0:
            raise ValueError(f"--max-seconds must be > 0 (got {self.max_seconds})")


@dataclass
class Phase:
    samples_ns: array  # of int64 ns: 8 bytes a run, so the harness barely moves the memory peak
    elapsed_ns: int
    capped: bool  # stopped by max_seconds before the count and duration minimums were both met


def repeat(fn: Callable[[], Any], min_runs: int, min_seconds: float, max_seconds: float,
           clock: Clock = time.perf_counter_ns) -> Phase:
    """Call ``fn`` until ``min_runs`` calls AND ``min_seconds`` have passed, or ``max_seconds`` has."""
    min_ns, max_ns = int(min_seconds * 1e9), int(max_seconds * 1e9)
    samples = array("q")
    append = samples.append
    start = now = clock()
    while (len(samples) < min_runs or now - start < min_ns) and now - start < max_ns:
        t0 = clock()
        fn()
        now = clock()
        append(now - t0)
    met = len(samples) >= min_runs and now - start >= min_ns
    return Phase(samples, now - start, not met)


def latency_stats(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float | int]:
    """min, mean, std (population), p50, p90, p99 (linear interpolation), max in ms, and n.

    ``median`` repeats ``p50`` under the name schema-1 readers use.
    """
    t = np.asarray(samples_ns, dtype=np.float64) / NS_PER_MS
    if t.size == 0:
        raise ValueError("no samples")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"n": int(t.size), "min": float(t.min()), "mean": float(t.mean()), "std": float(t.std()),
            "p50": float(p50), "median": float(p50), "p90": float(p90), "p99": float(p99), "max": float(t.max())}


def measure(fn: Callable[[], Any], settings: Settings, clock: Clock = time.perf_counter_ns
            ) -> tuple[dict[str, Any], dict[str, float | int]]:
    """First inference, warm-up, timed runs of ``fn``. Returns (timing facts, latency stats in ms).

    Python's cyclic garbage collector is off while timing (as in ``timeit``): a collection
    pause belongs to the harness, not to the model.
    """
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        t0 = clock()
        fn()
        first_ns = clock() - t0
        warm = repeat(fn, settings.warmup_runs, settings.warmup_seconds, settings.max_seconds, clock)
        timed = repeat(fn, settings.min_runs, settings.min_seconds, settings.max_seconds, clock)
    finally:
        if gc_was_enabled:
            gc.enable()
    timing = {"first_inference_ms": first_ns / NS_PER_MS,
              "warmup_runs": len(warm.samples_ns), "warmup_seconds": warm.elapsed_ns / 1e9,
              "timed_runs": len(timed.samples_ns), "timed_seconds": timed.elapsed_ns / 1e9,
              "capped": warm.capped or timed.capped, "settings": asdict(settings), "clock": "time.perf_counter_ns",
              "gc": "disabled while timing"}
    return timing, latency_stats(timed.samples_ns)


def parse_cpus(text: str) -> list[int]:
    """'0,1,4-6' -> [0, 1, 4, 5, 6] (the taskset / cpuset list syntax); CPU numbers below :data:`MAX_CPUS`."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"--cpus {text[:40]!r} is not a CPU list; write it like 0,1 or 2-3") from None
        if not 0 <= first <= last < MAX_CPUS:
            raise ValueError(f"--cpus {text[:40]!r}: {part[:40]} is not a range of CPU numbers 0-{MAX_CPUS - 1}")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError(f"--cpus {text!r} names no CPU; write it like 0,1 or 2-3")
    return sorted(cpus)


def pin_cpus(cpus: list[int]) -> dict[str, Any]:
    """Pin this process (and the runtime threads it will start) to ``cpus``; say where that is impossible."""
    if not hasattr(os, "sched_setaffinity"):
        return {"requested": cpus, "applied": False,
                "reason": "this platform has no sched_setaffinity (CPU pinning needs Linux or Android)"}
    try:
        os.sched_setaffinity(0, cpus)
    except (OSError, OverflowError, ValueError) as e:
        return {"requested": cpus, "applied": False, "reason": f"sched_setaffinity({cpus}) failed: {e}"}
    return {"requested": cpus, "applied": True, "affinity": sorted(os.sched_getaffinity(0))}
