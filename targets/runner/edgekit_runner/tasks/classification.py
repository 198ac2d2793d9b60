"""Classification: the first output holds one score per class; accuracy against integer labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit_runner.tasks.base import Task, agreement, first


def top1(outputs: np.ndarray) -> np.ndarray:
    return np.asarray(outputs).reshape(len(outputs), -1).argmax(axis=1)


class Classification(Task):
    name = "classification"
    metric = "accuracy"
    arrays = ("labels",)

    def check_arrays(self, shapes: dict[str, tuple[int, ...]], n_samples: int,
                     dtypes: dict[str, str] | None = None) -> str | None:
        if shapes.get("labels") != (n_samples,):
            return f"labels have shape {list(shapes.get('labels', ()))}; need {n_samples} integer class indices"
        if dtypes and np.dtype(dtypes["labels"]).kind not in "iu":
            return f"labels are {dtypes['labels']}; need integer class indices"
        return None

    def score(self, outputs: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
              references: dict[str, np.ndarray] | None) -> dict[str, Any]:
        out, labels = first(outputs), np.asarray(arrays["labels"]).reshape(-1)
        metrics: dict[str, Any] = {"n_samples": len(out), "task": self.name, "metric": self.metric,
                                   "accuracy": float((top1(out) == labels).mean())}
        if references:
            ref = first(references)
            metrics["reference_accuracy"] = float((top1(ref) == labels).mean())
            metrics["top1_agreement"] = float((top1(out) == top1(ref)).mean())
            metrics.update(agreement(out, ref))
        return metrics


CLASSIFICATION = Classification()
