"""Run a loaded model over a dataset, score it, time it. Shared by the runner and the host validator."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit_runner import measure
from edgekit_runner.runtimes import LoadedModel


def run_dataset(model: LoadedModel, inputs: np.ndarray | dict[str, np.ndarray] | list[np.ndarray]) -> list[np.ndarray]:
    """Run every sample of ``inputs`` through a model with a static batch size: one array (N, ...), or one
    array per model input (a list in the model's input order, or a dict by input name, put in that order).

    The last partial batch is padded with zeros and the padding dropped from the outputs.
    """
    arrays = as_input_list(model, inputs)
    batch = batch_size(model)
    n = len(arrays[0])
    collected: list[list[np.ndarray]] | None = None
    for start in range(0, n, batch):
        chunks = [a[start:start + batch] for a in arrays]
        real = len(chunks[0])
        if real < batch:
            chunks = [np.concatenate([c, np.zeros((batch - real, *c.shape[1:]), c.dtype)]) for c in chunks]
        outs = model.run([np.ascontiguousarray(c) for c in chunks])
        if collected is None:
            collected = [[] for _ in outs]
        for acc, o in zip(collected, outs):
            acc.append(np.asarray(o)[:real])
    return [np.concatenate(acc) for acc in (collected or [])]


def as_input_list(model: LoadedModel,
                  inputs: np.ndarray | dict[str, np.ndarray] | list[np.ndarray]) -> list[np.ndarray]:
    """Inputs in the model's order: a dict is ordered by the model's input names where they match, else
    (runtimes that number their inputs) taken in the order given."""
    if isinstance(inputs, np.ndarray):
        return [inputs]
    if isinstance(inputs, dict):
        names = [t.name for t in model.inputs]
        return [inputs[n] for n in names] if set(names) == set(inputs) else list(inputs.values())
    return list(inputs)


def batch_size(model: LoadedModel) -> int:
    """The model's static batch size (1 when the batch dimension is dynamic)."""
    shape = model.inputs[0].shape
    return int(shape[0]) if shape and isinstance(shape[0], int) and shape[0] > 0 else 1


def time_model(model: LoadedModel, sample: np.ndarray | dict[str, np.ndarray] | list[np.ndarray], runs: int = 50,
               warmup: int = 5) -> dict:
    """Latency stats in ms (:func:`measure.latency_stats`) of exactly ``runs`` runs after ``warmup`` warm-up runs.

    The host validator's quick timing; the runner itself uses :func:`measure.measure` with duration minimums.
    """
    arrays = [np.ascontiguousarray(a) for a in as_input_list(model, sample)]
    settings = measure.Settings(warmup_runs=warmup, warmup_seconds=0.0, min_runs=runs, min_seconds=0.0)
    _, stats = measure.measure(model.bound(arrays), settings)
    return {**stats, "warmup": warmup, "batch": int(arrays[0].shape[0])}


def score(task: str, outputs: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
          references: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """The task's metrics (:mod:`edgekit_runner.tasks`) on named outputs; for a task this runner does not
    know, the count and the reason there is no metric."""
    from edgekit_runner.tasks import TASKS

    if task not in TASKS:
        return {"n_samples": len(next(iter(outputs.values()))), "task": task, "metric": None,
                "metric_unavailable": f"this runner has no metric for task {task!r}"}
    return TASKS[task].score(outputs, arrays, references)
