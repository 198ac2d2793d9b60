"""Timing shared by the benchmarks: artifacts loaded by the runner's own adapters and timed side by side in
alternating rounds (the order flips each round, so drift on this shared host hits every artifact alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Eager:
    """A PyTorch module timed like a runtime's loaded model (``evaluate.time_model`` calls ``bound``)."""

    def __init__(self, module, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.module = module.eval()

    def bound(self, arrays: list[np.ndarray]):
        import torch

        xs = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]

        def run():
            with torch.no_grad():
                return self.module(*xs)

        return run


def interleaved_latency(paths: dict[str, Path], runtime: str, x: np.ndarray, threads: int,
                        rounds: int, eager=None) -> dict[str, list[float]]:
    """Per-round median latency (ms) of each artifact (and of ``eager``, the PyTorch module, under the key
    ``"eager"``), timed in alternating order."""
    from edgekit_runner import evaluate, runtimes

    models = {k: runtimes.load(p, runtime, threads=threads) for k, p in paths.items()}
    if eager is not None:
        models["eager"] = Eager(eager, threads)
    probe = max(evaluate.time_model(m, x, runs=5, warmup=3)["median"] for m in models.values())
    runs = max(10, min(2000, int(250 / max(probe, 1e-3))))
    medians: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds):
        for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
            medians[k].append(evaluate.time_model(models[k], x, runs=runs, warmup=3)["median"])
    return medians
