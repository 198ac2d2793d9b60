"""Embedding: the first output is one vector per sample (a sentence embedding). Scored against the PyTorch
reference embeddings of the same samples: cosine similarity per sample (mean and the worst), and retrieval
agreement -- for each sample, is its nearest neighbour among the other samples the same as with the
reference embeddings. The thresholds an export must meet are the task's settings (``[task]`` in
edgekit.toml), with defaults below: float builds must be near-identical, quantized ones close."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit_runner.tasks.base import Judgement, Task, agreement, first

# (float build, quantized build) defaults of the [task] settings
THRESHOLDS = {"min_cosine_mean": (0.999, 0.99), "min_cosine": (0.999, 0.97), "min_retrieval_agreement": (0.99, 0.95)}


def nearest_neighbours(vectors: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each row, the index of the most cosine-similar other row; ``chunk`` rows at a time, so memory
    stays at ``chunk x N`` similarities on a board with a large eval set."""
    v = np.asarray(vectors, np.float64).reshape(len(vectors), -1)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    found = np.empty(len(v), dtype=np.int64)
    for start in range(0, len(v), chunk):
        sim = v[start:start + chunk] @ v.T
        rows = np.arange(len(sim))
        sim[rows, start + rows] = -np.inf
        found[start:start + chunk] = sim.argmax(axis=1)
    return found


class Embedding(Task):
    name = "embedding"
    metric = "retrieval_agreement"

    def score(self, outputs: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
              references: dict[str, np.ndarray] | None) -> dict[str, Any]:
        out = first(outputs)
        metrics: dict[str, Any] = {"n_samples": len(out), "task": self.name, "metric": self.metric,
                                   "embedding_dim": int(np.prod(out.shape[1:]))}
        if references:
            ref = first(references)
            metrics.update(agreement(out, ref))
            same = nearest_neighbours(out) == nearest_neighbours(ref) if len(out) > 2 else np.ones(len(out), bool)
            metrics.update(retrieval_agreement=float(same.mean()), reference_retrieval_agreement=1.0)
        return metrics

    def judge(self, metrics: dict[str, Any], options: dict[str, Any], quantized: bool) -> Judgement:
        checks = {"min_cosine_mean": "cosine_mean", "min_cosine": "cosine_min",
                  "min_retrieval_agreement": "retrieval_agreement"}
        for option, metric in checks.items():
            limit = options.get(option, THRESHOLDS[option][quantized])
            value = metrics.get(metric)
            if value is None or not value >= limit:
                return Judgement(False, f"{metric} {value if value is None else round(value, 4)} is below the "
                                        f"task's {option} = {limit:g}")
        return Judgement(True)


EMBEDDING = Embedding()
