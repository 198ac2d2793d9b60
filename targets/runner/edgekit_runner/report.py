"""The run report: what the runner measured, where, with what. Stdlib only.

The runner records; the host interprets (budgets, comparisons). Every report carries
``schema_version`` and a ``run_id``; the host (``edgekit.results.schema``) validates it with
pydantic and refuses versions it does not know. :data:`FIELDS` documents every field.

Schema 2 (this runner) added ``memory``, ``timing`` and ``fallback`` to schema 1, and full
latency statistics. A value that could not be measured on a device is ``None`` with the
reason in the section's ``unavailable`` map -- never 0.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_runner import safejson

SCHEMA_VERSION = 2

OK = "OK"
MODEL_ERROR = "MODEL_ERROR"  # the runtime refused or failed to run the model
INFRA_ERROR = "INFRA_ERROR"  # the bundle or device could not be used at all
EXIT_CODES = {OK: 0, INFRA_ERROR: 2, MODEL_ERROR: 3}

# field -> (JSON type, meaning). Nested sections list their keys as "section.key".
FIELDS: dict[str, tuple[str, str]] = {
    "schema_version": ("int", f"report schema version ({SCHEMA_VERSION})"),
    "run_id": ("str", "uuid4 hex; the collector stores one report per run_id"),
    "created_at": ("str", "ISO 8601 UTC time the run started"),
    "status": ("str", "OK | MODEL_ERROR (the runtime refused or failed on the model) | INFRA_ERROR (unusable)"),
    "error": ("str|null", "one line: what went wrong (null when OK)"),
    "fallback": ("str|null", "the bundle's delegate / provider did not run (all or part of) the model: what ran instead, why"),
    "bundle": ("object", "which bundle ran"),
    "bundle.path": ("str", "bundle folder as given to the runner"),
    "bundle.profile": ("str|null", "device profile id the bundle was built for"),
    "bundle.format": ("str|null", "executorch | onnx | tflite"),
    "bundle.backend": ("str|null", "backend the bundle was built for (xnnpack, tensorrt, qnn, ...)"),
    "bundle.precision": ("str|null", "fp32, int8, ..."),
    "bundle.model_sha256": ("str|null", "sha256 of the model file, from the manifest (checked before loading)"),
    "runtime": ("object", "what actually ran: runtime, version, target, delegate or provider, threads, fallback"),
    "runtime.runtime": ("str", "executorch | onnxruntime | ai-edge-litert | tflite-runtime | tensorflow"),
    "runtime.version": ("str", "the runtime package's version"),
    "runtime.target": ("str|null", "delegate / execution provider the bundle was built for"),
    "runtime.delegate": ("str", "ExecuTorch / LiteRT: the delegate that ran"),
    "runtime.provider": ("str", "ONNX Runtime: the best execution provider that runs any node (the one used)"),
    "runtime.providers": ("list[str]", "ONNX Runtime: session.get_providers(), the providers registered"),
    "runtime.nodes_per_provider": ("object|null", "ONNX Runtime >= 1.23: provider -> graph nodes it runs"),
    "runtime.threads": ("int|null", "intra-op threads requested (--threads)"),
    "runtime.threads_effective": ("int|str", "threads the runtime uses, or how it picks them"),
    "runtime.fallback": ("str|null", "same as the top-level fallback"),
    "runtime.io_quantized": ("bool", "LiteRT: int8/uint8 model inputs/outputs, (de)quantized by the runner"),
    "metrics": ("object", "the task's metrics on the bundle's eval set (empty with --no-accuracy or on error)"),
    "metrics.n_samples": ("int", "eval samples run"),
    "metrics.task": ("str", "task kind from the manifest (classification, embedding)"),
    "metrics.metric": ("str|null", "name of the task's headline metric (accuracy, retrieval_agreement)"),
    "metrics.accuracy": ("float", "classification: top-1 accuracy against the labels"),
    "metrics.embedding_dim": ("int", "embedding: length of one embedding vector"),
    "metrics.retrieval_agreement": ("float", "embedding: fraction of samples whose nearest neighbour among the "
                                             "eval samples is the same as with the reference embeddings"),
    "metrics.reference_retrieval_agreement": ("float", "embedding: the reference's own (1.0)"),
    "metrics.reference_accuracy": ("float", "the same metric for the host's PyTorch reference outputs"),
    "metrics.top1_agreement": ("float", "fraction of samples whose top-1 class equals the reference's"),
    "metrics.max_abs_error": ("float", "max |output - reference| over all samples and elements"),
    "metrics.mean_abs_error": ("float", "mean |output - reference|"),
    "metrics.cosine_mean": ("float", "mean over samples of cosine(output, reference) (the first output)"),
    "metrics.cosine_min": ("float", "worst sample's cosine(output, reference)"),
    "metrics.nonfinite_outputs": ("int", "NaN / infinite output elements (the error figures are then null)"),
    "metrics.metric_unavailable": ("str", "why there is no task metric (a task this runner cannot score)"),
    "latency_ms": ("object", "one inference of one batch, timed runs only, milliseconds"),
    **{f"latency_ms.{k}": ("float", v) for k, v in {
        "min": "fastest run", "mean": "mean", "std": "population standard deviation", "p50": "median",
        "median": "= p50 (the schema-1 name)", "p90": "90th percentile (linear interpolation)",
        "p99": "99th percentile", "max": "slowest run"}.items()},
    "latency_ms.n": ("int", "timed runs"),
    "latency_ms.batch": ("int", "batch size of one run"),
    "timing": ("object", "how the latency was measured"),
    "timing.import_ms": ("float", "importing the runtime's Python modules"),
    "timing.load_ms": ("float", "loading the model and creating the session / interpreter / method"),
    "timing.first_inference_ms": ("float", "the first inference after loading (lazy init included)"),
    "timing.warmup_runs": ("int", "untimed warm-up runs done"),
    "timing.warmup_seconds": ("float", "time spent warming up"),
    "timing.timed_runs": ("int", "timed runs done (= latency_ms.n)"),
    "timing.timed_seconds": ("float", "time spent in timed runs"),
    "timing.capped": ("bool", "a phase stopped at max_seconds before its minimum count and duration were met"),
    "timing.settings": ("object", "warmup_runs, warmup_seconds, min_runs, min_seconds, max_seconds requested"),
    "timing.clock": ("str", "the clock used"),
    "timing.gc": ("str", "Python's cyclic garbage collector during the timed phases"),
    "timing.timed_call": ("str", "what one timed run is"),
    "timing.cpus": ("object|null", "--cpus pinning: requested, applied, affinity, or the reason it was not applied"),
    "memory": ("object", "resident memory of the runner process (Linux/Android /proc), MB unless named bytes"),
    "memory.model_file_bytes": ("int|null", "size of the model file"),
    "memory.baseline_rss_mb": ("float|null", "RSS before the runtime import and the model load"),
    "memory.after_import_rss_mb": ("float|null", "RSS after importing the runtime"),
    "memory.peak_rss_load_mb": ("float|null", "peak RSS while loading the model (VmHWM, reset before)"),
    "memory.peak_rss_run_mb": ("float|null", "peak RSS over first inference, warm-up and timed runs"),
    "memory.rss_after_runs_mb": ("float|null", "RSS after the timed runs"),
    "memory.unavailable": ("object", "field -> why it is null"),
    "device": ("object", "facts about the device (edgekit_runner.sysinfo)"),
    **{f"device.{k}": v for k, v in {
        "os": ("str", "platform.system()"), "os_release": ("str|null", "distribution or Android release"),
        "kernel": ("str", "kernel release"), "platform": ("str", "platform.platform()"),
        "arch": ("str", "machine architecture (x86_64, aarch64)"), "node": ("str", "host name"),
        "python": ("str", "Python version"), "python_implementation": ("str", "CPython, ..."),
        "cores_logical": ("int|null", "os.cpu_count()"), "cores_affinity": ("int|null", "CPUs this process may use"),
        "cpu_model": ("str|null", "from /proc/cpuinfo"), "board": ("str|null", "device-tree / Android / DMI model"),
        "mem_total_mb": ("float|null", "total RAM"), "loadavg": ("list[float]|null", "1, 5, 15 min load at start"),
        "cpufreq_governor": ("object|null", "cpu -> scaling governor"),
        "cpufreq_cur_mhz": ("object|null", "cpu -> current frequency"),
        "thermal_c": ("object|null", "thermal zone -> temperature in Celsius at start"),
        "unavailable": ("object", "fact -> why it is null")}.items()},
}


def _now() -> str:
    utc = _dt.timezone.utc  # noqa: UP017 -- datetime.UTC is Python 3.11+; boards may run 3.9
    return _dt.datetime.now(utc).isoformat(timespec="seconds")


@dataclass
class RunReport:
    status: str
    bundle: dict[str, Any]
    runtime: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    latency_ms: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    device: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    fallback: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = field(default_factory=_now)
    schema_version: int = SCHEMA_VERSION

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Standard JSON: a NaN or infinite number (a model that outputs NaN) is written as null."""
        return json.dumps(safejson.finite(self.to_dict()), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"report schema_version {version!r} is not supported (supported: {SCHEMA_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader never sees a partial report. The folder must exist."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
