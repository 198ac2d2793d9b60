"""TFLite / LiteRT flatbuffers through litert-torch.

LiteRT's interpreter applies XNNPACK by default on CPU, so the xnnpack backend
runs here as on a board. The GPU delegate exists only on the phone; there the
same file is validated on CPU (a host twin).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgekit.errors import ExportError
from edgekit.export.base import BackendSpec, Exporter, ExportResult
from edgekit.export.trace import export_program, summarize


class TFLiteExporter(Exporter):
    format = "tflite"
    extension = ".tflite"
    runtime = "litert"
    atol = {"fp32": 1e-4}
    backends = {
        "xnnpack": BackendSpec("xnnpack", "LiteRT CPU with the XNNPACK delegate", ("fp32",), True,
                               runtime_target="XNNPACK delegate"),
        "gpu": BackendSpec("gpu", "LiteRT GPU delegate (OpenCL / OpenGL ES)", ("fp32",), False,
                           host_twin="the same .tflite file on LiteRT's CPU (XNNPACK)",
                           runtime_target="GPU delegate"),
    }

    def export(self, model: Any, example_inputs: tuple, backend: str, out_dir: Path,
               input_names: list[str] | None = None, output_names: list[str] | None = None) -> ExportResult:
        export_program(model, example_inputs)  # same clear error as the other formats if untraceable
        path = out_dir / f"model{self.extension}"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.WARNING)  # litert-torch logs every lowered op at INFO on the root logger
        try:
            import litert_torch

            litert_torch.convert(model.eval(), example_inputs).export(str(path))
        except Exception as e:
            raise ExportError(f"TFLite conversion failed: {summarize(e)}") from e
        finally:
            root.setLevel(level)
        return ExportResult(model_path=path, twin_path=None if self.backends[backend].runs_on_host else path)
