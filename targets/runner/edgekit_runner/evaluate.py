"""Run a loaded model over a dataset, score it, time it. Shared by the runner and the host validator."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit_runner import measure
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
    """Latency stats in ms (:func:`measure.latency_stats`) of exactly ``runs`` runs after ``warmup`` warm-up runs.

    The host validator's quick timing; the runner itself uses :func:`measure.measure` with duration minimums.
    """
    settings = measure.Settings(warmup_runs=warmup, warmup_seconds=0.0, min_runs=runs, min_seconds=0.0)
    _, stats = measure.measure(model.bound([np.ascontiguousarray(sample)]), settings)
    return {**stats, "warmup": warmup, "batch": int(sample.shape[0])}


def top1(outputs: np.ndarray) -> np.ndarray:
    return np.asarray(outputs).reshape(len(outputs), -1).argmax(axis=1)


def agreement(outputs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """How close ``outputs`` are to the host's ``reference`` outputs, sample by sample (first axis).

    Non-finite outputs make the error figures NaN (written as null) and are counted.
    """
    got = np.asarray(outputs, np.float64).reshape(len(reference), -1)
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    diff = np.abs(got - ref)
    ng, nr = np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # a zero vector against a zero vector agrees (1); against anything else it does not (0)
        cosine = np.where(ng * nr > 0, (got * ref).sum(axis=1) / (ng * nr), (ng == nr).astype(np.float64))
    cosine[~np.isfinite(ng)] = np.nan
    return {"top1_agreement": float((top1(got) == top1(ref)).mean()), "max_abs_error": float(diff.max()),
            "mean_abs_error": float(diff.mean()), "cosine_mean": float(cosine.mean()),
            "cosine_min": float(cosine.min()), "nonfinite_outputs": int((~np.isfinite(got)).sum())}


def score(outputs: np.ndarray, labels: np.ndarray, reference: np.ndarray | None, task: str | None) -> dict[str, Any]:
    """The task metric against ``labels`` and, where the bundle has them, agreement with the reference outputs."""
    metrics: dict[str, Any] = {"n_samples": len(outputs), "task": task}
    if task in (None, "classification"):  # schema-1 manifests have no task: they are all classifiers
        metrics.update(task="classification", metric="accuracy",
                       accuracy=float((top1(outputs) == np.asarray(labels).reshape(-1)).mean()))
        if reference is not None:
            metrics["reference_accuracy"] = float((top1(reference) == np.asarray(labels).reshape(-1)).mean())
    else:
        metrics.update(metric=None, metric_unavailable=f"this runner has no metric for task {task!r}")
    if reference is not None:
        metrics.update(agreement(outputs, reference))
    return metrics
