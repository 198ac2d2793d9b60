"""Compare an exported artifact with the PyTorch reference, in the artifact's real runtime.

``validate`` returns metrics; it never raises for a mismatch. The caller decides:
``result.raise_if_failed()`` turns a failure into :class:`ValidationFailed`
naming the output and its largest error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ValidationFailed


@dataclass
class OutputComparison:
    name: str
    max_abs_error: float
    mean_abs_error: float
    shape: list[int]
    sqnr_db: float | None = None  # signal-to-noise ratio vs PyTorch; None when identical (infinite)


@dataclass
class ValidationResult:
    where: str  # "target-runtime" | "host-twin" | "htp-emulator"
    runtime: dict[str, Any]
    artifact: str
    n_samples: int
    atol: float | None  # None for quantized artifacts: judged by the accuracy budget instead
    outputs: list[OutputComparison]
    top1_agreement: float | None  # classification; None for other tasks
    metric: str  # the task's headline metric (accuracy; retrieval_agreement)
    value: float
    reference_value: float  # the same metric for the PyTorch reference outputs
    host_latency_ms: dict[str, Any] = field(default_factory=dict)
    max_accuracy_drop: float | None = None  # percentage points vs the PyTorch fp32 reference
    # The tensors as the runtime names them (e.g. LiteRT's serving_default_image:0), for app developers.
    runtime_io: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # everything the task measured (edgekit_runner.tasks)
    task_failure: str | None = None  # the task's own verdict (embedding: cosine, retrieval thresholds)
    # the same inputs through other runs of the model (e.g. "onnxruntime CPU EP"): top-1 agreement, max error
    against: dict[str, dict[str, float | None]] = field(default_factory=dict)
    note: str = ""  # e.g. why fewer than all eval samples ran

    @property
    def max_abs_error(self) -> float:
        return max(o.max_abs_error for o in self.outputs)

    @property
    def accuracy_drop(self) -> float:
        """Percentage points lost against the PyTorch fp32 reference."""
        return (self.reference_value - self.value) * 100

    @property
    def passed(self) -> bool:
        """The artifact computes the model: within tolerance (fp32) and the task's own thresholds. A quantized
        model's accuracy drop is a budget (``max_accuracy_drop``), checked by :mod:`edgekit.budgets`."""
        close = self.atol is None or all(o.max_abs_error <= self.atol for o in self.outputs)
        return close and self.task_failure is None

    def raise_if_failed(self) -> None:
        if self.task_failure is not None:
            raise ValidationFailed(f"{self.artifact}: {self.task_failure} ({self.runtime.get('runtime')} "
                                   f"{self.runtime.get('version')}, {self.n_samples} samples)")
        for o in self.outputs:
            if self.atol is not None and not (o.max_abs_error <= self.atol):  # NaN fails too
                raise ValidationFailed(
                    f"output {o.name!r} of {self.artifact} differs from PyTorch by up to {o.max_abs_error:.3g} "
                    f"(tolerance {self.atol:g}; "
                    + (f"top-1 agreement {self.top1_agreement:.1%}, " if self.top1_agreement is not None else "")
                    + f"{self.runtime.get('runtime')} {self.runtime.get('version')})"
                )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(max_abs_error=self.max_abs_error, accuracy_drop=self.accuracy_drop, passed=self.passed)
        return d


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # keeps manifest.json standard JSON (no Infinity)


def validate(artifact: Path, runtime: str, inputs: np.ndarray | dict[str, np.ndarray],
             labels: np.ndarray | None, reference: list[np.ndarray], output_names: list[str], atol: float | None,
             where: str, target: str | None = None, timing_runs: int = 50, max_accuracy_drop: float | None = None,
             *, task: str = "classification", task_options: dict[str, Any] | None = None,
             quantized: bool = False, target_options: dict[str, Any] | None = None,
             against: dict[str, list[np.ndarray]] | None = None) -> ValidationResult:
    """Run ``artifact`` on ``inputs`` (one array, or one per input by name, in the model's input order) in
    ``runtime`` and compare with the PyTorch ``reference`` outputs; score both with the task. ``against``:
    other runs' outputs on the same inputs, compared with this one's (top-1 agreement, max abs error)."""
    from edgekit.quantize.numerics import sqnr_db
    from edgekit_runner import evaluate, runtimes
    from edgekit_runner.tasks import get_task

    model = runtimes.load(artifact, runtime, target=target, options=target_options)
    outs = evaluate.run_dataset(model, inputs)
    if len(outs) != len(reference):
        raise ValidationFailed(f"{artifact} has {len(outs)} outputs, PyTorch has {len(reference)}")
    comparisons = []
    for name, got, ref in zip(output_names, outs, reference):
        if got.size != ref.size:
            raise ValidationFailed(f"output {name!r} of {artifact} has shape {list(got.shape)}, "
                                   f"PyTorch has {list(ref.shape)}")
        diff = np.abs(got.reshape(ref.shape).astype(np.float64) - ref)
        comparisons.append(OutputComparison(name, float(diff.max()), float(diff.mean()), list(ref.shape),
                                            _finite(sqnr_db(ref, got.reshape(ref.shape)))))
    kind = get_task(task)
    shaped = [got.reshape(ref.shape) for got, ref in zip(outs, reference)]
    metrics = kind.score(dict(zip(output_names, shaped)), {} if labels is None else {"labels": labels},
                         dict(zip(output_names, reference)))
    judgement = kind.judge(metrics, task_options or {}, quantized)
    sample = evaluate.as_input_list(model, inputs)
    latency = evaluate.time_model(model, [a[: evaluate.batch_size(model)] for a in sample], runs=timing_runs,
                                  warmup=5)
    compared = {}
    for label, theirs in (against or {}).items():
        mine, other = outs[0].reshape(reference[0].shape), theirs[0].reshape(reference[0].shape)
        compared[label] = {"max_abs_error": float(np.abs(mine.astype(np.float64) - other).max()),
                           "top1_agreement": float((mine.argmax(-1) == other.argmax(-1)).mean())
                           if task == "classification" else None}
    return ValidationResult(
        where=where, runtime=model.info, against=compared, artifact=artifact.name, n_samples=len(sample[0]), atol=atol,
        outputs=comparisons, top1_agreement=metrics.get("top1_agreement"), metric=kind.metric,
        value=float(metrics[kind.metric]), reference_value=float(metrics[f"reference_{kind.metric}"]),
        host_latency_ms=latency, max_accuracy_drop=max_accuracy_drop,
        runtime_io={"inputs": [asdict(t) for t in model.inputs], "outputs": [asdict(t) for t in model.outputs]},
        metrics=_finite_all(metrics), task_failure=judgement.reason,
    )


def _finite_all(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (_finite(v) if isinstance(v, float) else v) for k, v in metrics.items()}
