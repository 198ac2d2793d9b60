"""Exporters, one per format, registered here explicitly (no import side effects).

>>> from edgekit.export import get_exporter
>>> get_exporter("onnx").extension
'.onnx'
"""

from __future__ import annotations

from edgekit.export.base import BackendSpec, Exporter, ExportResult
from edgekit.export.executorch import ExecuTorchExporter
from edgekit.export.onnx import OnnxExporter
from edgekit.export.tflite import TFLiteExporter

EXPORTERS: dict[str, Exporter] = {
    e.format: e for e in (ExecuTorchExporter(), OnnxExporter(), TFLiteExporter())
}


def get_exporter(fmt: str) -> Exporter:
    try:
        return EXPORTERS[fmt]
    except KeyError:
        raise KeyError(f"unknown format {fmt!r}; known: {', '.join(EXPORTERS)}") from None


def known_backends() -> dict[str, tuple[str, ...]]:
    """{format: (backend, ...)} for every registered exporter."""
    return {f: tuple(e.backends) for f, e in EXPORTERS.items()}


__all__ = ["BackendSpec", "Exporter", "ExportResult", "EXPORTERS", "get_exporter", "known_backends"]
