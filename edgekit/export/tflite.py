"""TFLite / LiteRT flatbuffers through litert-torch.

LiteRT's interpreter applies XNNPACK by default on CPU, so the xnnpack backend
runs here as on a board. The GPU delegate exists only on the phone; there the
same file is validated on CPU (a host twin).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, ExportError
from edgekit.export.base import BackendSpec, Exporter, ExportResult, subdir
from edgekit.export.trace import export_program, summarize


class TFLiteExporter(Exporter):
    format = "tflite"
    extension = ".tflite"
    runtime = "litert"
    atol = {"fp32": 1e-4}
    backends = {
        "xnnpack": BackendSpec("xnnpack", "LiteRT CPU with the XNNPACK delegate", ("fp32", "int8", "int8-weight"),
                               True, runtime_target="XNNPACK delegate",
                               quant_schemes=("int8", "int8-qat", "int8-dynamic", "int8-weight-only", "mixed")),
        "gpu": BackendSpec("gpu", "LiteRT GPU delegate (OpenCL / OpenGL ES)", ("fp32",), False,
                           host_twin="the same .tflite file on LiteRT's CPU (XNNPACK)",
                           runtime_target="GPU delegate"),
    }

    def export(self, model: Any, example_inputs: tuple, backend: str, out_dir: Path,
               input_names: list[str] | None = None, output_names: list[str] | None = None,
               quant: Any = None, calib: Any = None, fine_tune: Any = None) -> ExportResult:
        export_program(model, example_inputs)  # same clear error as the other formats if untraceable
        path = out_dir / f"model{self.extension}"
        if quant is not None and quant.name == "int8-weight-only":  # ai-edge-quantizer works on the fp32 file
            from edgekit.quantize import backends as qb

            fp32 = self.export(model, example_inputs, backend, subdir(out_dir, "fp32")).model_path
            tool = qb.aeq_weight_only(fp32, path)
            return ExportResult(model_path=path, twin_path=None if self.backends[backend].runs_on_host else path,
                                details={"quantization": {**quant.to_dict(), **tool, "calibration_batches": 0,
                                                          "io": "float"}})
        if quant is not None and quant.name == "mixed":  # ai-edge-quantizer: regex scopes keep layers float
            from edgekit.quantize import backends as qb

            fp32 = self.export(model, example_inputs, backend, subdir(out_dir, "fp32")).model_path
            batches = qb.calibration_batches(calib, example_inputs[0].shape[0], quant)
            tool = qb.aeq_static(fp32, path, batches, quant.float_layers)
            return ExportResult(model_path=path, twin_path=None if self.backends[backend].runs_on_host else path,
                                details={"quantization": {**quant.to_dict(), **tool, "io": "int8",
                                                          "calibration_batches": len(batches)}})
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.WARNING)  # litert-torch logs every lowered op at INFO on the root logger
        details: dict[str, Any] = {}
        try:
            import litert_torch

            kwargs = {}
            if quant is not None:  # litert-torch's PT2E quantizer; static int8 gives int8 I/O tensors
                from litert_torch.quantize.quant_config import QuantConfig

                from edgekit.quantize import backends as qb

                quantizer = qb.litert_quantizer(quant)
                annotator, tool = quantizer, "litert-torch PT2EQuantizer"
                if fine_tune:
                    # litert-torch 0.10's QAT annotator breaks under torchao 0.18 (it hands torch.export a
                    # function). XNNPACKQuantizer's QAT config inserts the same int8 scheme (symmetric
                    # per-channel weights, asymmetric int8 activations), which litert-torch then lowers.
                    annotator, tool = qb.xnnpack_quantizer(quant), "PT2E XNNPACKQuantizer (QAT) -> litert-torch"
                batches = qb.calibration_batches(calib, example_inputs[0].shape[0], quant)
                model = qb.pt2e_quantize(model, example_inputs, batches, annotator, fold=False, qat=fine_tune)
                kwargs["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
                details["quantization"] = {**quant.to_dict(), "tool": tool, "calibration_batches": len(batches),
                                           "io": "float" if quant.name == "int8-dynamic" else "int8"}
            litert_torch.convert(model.eval() if quant is None else model, example_inputs, **kwargs).export(str(path))
        except EdgekitError:
            raise
        except Exception as e:
            raise ExportError(f"TFLite conversion failed: {summarize(e)}") from e
        finally:
            root.setLevel(level)
        return ExportResult(model_path=path, twin_path=None if self.backends[backend].runs_on_host else path,
                            details=details)
