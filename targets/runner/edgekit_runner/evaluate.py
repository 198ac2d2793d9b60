"""Run a loaded model over a dataset and time it. Shared by the runner and the host validator."""

from __future__ import annotations

import time

import numpy as np

from edgekit_runner.runtimes import LoadedModel


def run_dataset(model: LoadedModel, inputs: np.ndarray) -> list[np.ndarray]:
    """Run every sample of ``inputs`` (N, ...) through a model with a static batch size.

    The last partial batch is padded with zeros and the padding dropped from the outputs.
    """
    batch = batch_size(model)
    n = len(inputs)
    collected: list[list[np.ndarray]] | None = None
    for start in range(0, n, batch):
        chunk = inputs[start:start + batch]
        real = len(chunk)
        if real < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - real, *chunk.shape[1:]), chunk.dtype)])
        outs = model.run([np.ascontiguousarray(chunk)])
        if collected is None:
            collected = [[] for _ in outs]
        for acc, o in zip(collected, outs):
            acc.append(np.asarray(o)[:real])
    return [np.concatenate(acc) for acc in (collected or [])]


def batch_size(model: LoadedModel) -> int:
    """The model's static batch size (1 when the batch dimension is dynamic)."""
    shape = model.inputs[0].shape
    return int(shape[0]) if shape and isinstance(shape[0], int) and shape[0] > 0 else 1


def time_model(model: LoadedModel, sample: np.ndarray, runs: int = 50, warmup: int = 5) -> dict:
    """Median / p90 / min latency in ms of one batch, after ``warmup`` untimed runs."""
    arrays = [np.ascontiguousarray(sample)]
    for _ in range(warmup):
        model.run(arrays)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.run(arrays)
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.asarray(times)
    return {"median": float(np.median(t)), "p90": float(np.percentile(t, 90)), "min": float(t.min()),
            "runs": runs, "warmup": warmup, "batch": int(sample.shape[0])}


def top1(outputs: np.ndarray) -> np.ndarray:
    return np.asarray(outputs).reshape(len(outputs), -1).argmax(axis=1)
