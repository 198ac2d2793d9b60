"""What every task provides, and the agreement figures all of them share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Judgement:
    """Whether an export passed the task's own checks, and if not, why (one line)."""

    passed: bool
    reason: str | None = None


class Task:
    """Base class: a task's name, its headline metric, its eval arrays, and how to score and judge."""

    name = ""
    metric = ""  # the headline metric: a fraction in [0, 1], higher is better; the reference scores it too
    arrays: tuple[str, ...] = ()  # eval.npz arrays the task needs besides inputs and references

    def check_arrays(self, shapes: dict[str, tuple[int, ...]], n_samples: int,
                     dtypes: dict[str, str] | None = None) -> str | None:
        """What is wrong with the task's own eval arrays (declared shapes; dtypes once loaded), or None."""
        return None

    def score(self, outputs: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
              references: dict[str, np.ndarray] | None) -> dict[str, Any]:
        """The task's metrics for ``outputs`` (name -> array, the first axis the samples), and, where the
        references are given, the same metric of the references and the agreement with them."""
        raise NotImplementedError

    def judge(self, metrics: dict[str, Any], options: dict[str, Any], quantized: bool) -> Judgement:
        """Extra checks of the task beyond the build's own (max abs error for fp32, the accuracy budget)."""
        return Judgement(True)


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
    return {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()),
            "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "nonfinite_outputs": int((~np.isfinite(got)).sum())}


def first(named: dict[str, np.ndarray]) -> np.ndarray:
    """The first output (the one a single-output task scores)."""
    return next(iter(named.values()))
