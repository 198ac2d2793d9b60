"""The one shape every exporter has, and the capabilities it declares.

An exporter is an adapter for one file format. It declares which backends
(delegates / execution providers) it can target, in which precisions, with what
validation tolerance, and for each backend whether the artifact can be run on a
Linux host or only checked through a *host twin*. The planner reads these
declarations to reject impossible requests before any work is done; nothing here
imports a heavy runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BackendSpec:
    """One target of a format: e.g. ExecuTorch + XNNPACK, ONNX + QNN EP."""

    name: str
    description: str
    precisions: tuple[str, ...]
    runs_on_host: bool
    # What is run on this host instead when the real target cannot run here,
    # e.g. "the same .onnx file in onnxruntime's CPU EP".
    host_twin: str = ""
    # Name of the runtime execution target recorded in the manifest
    # (ORT execution provider, LiteRT delegate, ExecuTorch delegate).
    runtime_target: str = ""
    # Quantization schemes (edgekit.quantize.schemes names) this backend's quantizer builds here.
    quant_schemes: tuple[str, ...] = ()


@dataclass
class ExportResult:
    """What an exporter produced: the deployable file and, if the target cannot
    run on this host, the twin file that validation ran instead."""

    model_path: Path
    twin_path: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


def subdir(parent: str | Path, name: str) -> Path:
    """``parent/name``, created: exporters write each artifact into a folder of its own."""
    path = Path(parent) / name
    path.mkdir(exist_ok=True)
    return path


class Exporter:
    """Base class. Subclasses set the class attributes and implement ``export``."""

    format: str = ""
    extension: str = ""
    runtime: str = ""  # the runner runtime key that loads this format
    backends: dict[str, BackendSpec] = {}
    # Validation tolerance (max abs error on any output) per precision.
    atol: dict[str, float] = {}

    def export(self, model: Any, example_inputs: tuple, backend: str, out_dir: Path,
               input_names: list[str] | None = None, output_names: list[str] | None = None,
               quant: Any = None, calib: Any = None, fine_tune: Any = None) -> ExportResult:
        """Write the artifact for ``backend`` into ``out_dir``; raise ExportError on failure.

        With ``quant`` (a scheme from :mod:`edgekit.quantize.schemes`), quantize with the
        backend's own quantizer, calibrating on ``calib`` (N, ...) samples; for QAT schemes
        ``fine_tune(prepared_graph) -> graph`` trains between prepare and convert."""
        raise NotImplementedError

    def backend(self, name: str) -> BackendSpec:
        return self.backends[name]
