"""TFLite / LiteRT flatbuffers through litert-torch.

LiteRT's interpreter applies XNNPACK by default on CPU, so the xnnpack backend
runs here as on a board. The GPU delegate exists only on the phone; there the
same file is validated on CPU (a host twin). The qnn backend (Qualcomm's NPU)
exports the same full-integer file; the build's compile stage compiles it for
the chip ahead of time (edgekit.qnn).
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
        # LiteRT's Qualcomm NPU accelerator. The portable full-integer .tflite is the bundle's model (validated on
        # LiteRT's CPU); the compile stage adds LiteRT's ahead-of-time compilation for the profile's chip and runs
        # its QNN context on Qualcomm's HTP emulator (edgekit.qnn).
        "qnn": BackendSpec("qnn", "LiteRT's Qualcomm NPU accelerator (Hexagon HTP), compiled ahead of time",
                           ("int8",), False,
                           host_twin="the portable .tflite on LiteRT's CPU; its NPU compilation on Qualcomm's HTP "
                                     "emulator (edgekit[qnn])",
                           runtime_target="Qualcomm NPU (LiteRT dispatch)", quant_schemes=("int8", "int8-qat")),
        "gpu": BackendSpec("gpu", "LiteRT GPU delegate (OpenCL / OpenGL ES)", ("fp32",), False,
                           host_twin="the same .tflite file on LiteRT's CPU (XNNPACK)",
                           runtime_target="GPU delegate"),
    }

    def export(self, model: Any, example_inputs: tuple, backend: str, out_dir: Path,
               input_names: list[str] | None = None, output_names: list[str] | None = None,
               quant: Any = None, calib: Any = None, fine_tune: Any = None) -> ExportResult:
        export_program(model, example_inputs)  # same clear error as the other formats if untraceable
        path = out_dir / f"model{self.extension}"
        if quant is not None and (quant.name in ("int8-weight-only", "mixed") or getattr(quant, "embeddings", False)):
            details = self._ai_edge_quantizer(model, example_inputs, backend, out_dir, path, quant, calib)
        else:
            details = self._litert(model, example_inputs, path, quant, calib, fine_tune)
        if quant is not None:
            compact_quant_params(path)
        return ExportResult(model_path=path, twin_path=None if self.backends[backend].runs_on_host else path,
                            details=details)

    def _ai_edge_quantizer(self, model: Any, example_inputs: tuple, backend: str, out_dir: Path, path: Path,
                           quant: Any, calib: Any) -> dict[str, Any]:
        """ai-edge-quantizer works on the fp32 file: int8 weight-only, the transformer int8 recipe (dynamic
        activations, embeddings included), or mixed (static int8 with regex scopes keeping layers float)."""
        from edgekit.quantize import backends as qb

        fp32 = self.export(model, example_inputs, backend, subdir(out_dir, "fp32")).model_path
        if quant.name == "mixed":
            batches = qb.calibration_batches(calib, example_inputs[0].shape[0], quant)
            tool = {**qb.aeq_static(fp32, path, batches, quant.float_layers), "io": "int8"}
        elif getattr(quant, "embeddings", False):
            batches, tool = [], {**qb.aeq_dynamic(fp32, path), "io": "float"}
        else:
            batches, tool = [], {**qb.aeq_weight_only(fp32, path), "io": "float"}
        return {"quantization": {**quant.to_dict(), **tool, "calibration_batches": len(batches)}}

    def _litert(self, model: Any, example_inputs: tuple, path: Path, quant: Any, calib: Any,
                fine_tune: Any) -> dict[str, Any]:
        """litert-torch's converter, fp32 or from a PT2E-quantized graph."""
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
                if quant.name != "int8-dynamic":
                    # XNNPACKQuantizer annotates the same int8 scheme (symmetric per-channel weights,
                    # asymmetric int8 activations; TFLite's int8 spec), which litert-torch then lowers.
                    # litert-torch 0.10's own annotator puts a second quantizer on chained residual
                    # adds, and its converter leaves those ADDs float between DEQUANTIZE/QUANTIZE
                    # (MobileNetV2: 9 of 10 ADDs, 22 extra ops); its QAT annotator breaks under
                    # torchao 0.18 (it hands torch.export a function).
                    annotator = qb.xnnpack_quantizer(quant)
                    tool = f"PT2E XNNPACKQuantizer{' (QAT)' if fine_tune else ''} -> litert-torch"
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
        return details


def compact_quant_params(path: Path) -> None:
    """Store identical quantization-parameter vectors once.

    The TFLite schema keeps a per-channel ``zero_point`` vector of int64 for every quantized
    tensor, even when it is all zeros (symmetric weights, int32 biases): 16 bytes per output
    channel, about 7% of an int8 MobileNetV2. A flatbuffer may point many tables at one vector,
    so the model is re-serialized through LiteRT's own object API with identical numeric vectors
    (zero points, scales, shapes) stored once. Weight buffers stay separate and 16-byte aligned
    (the schema's ``force_align``). Nothing else changes: same tensors, parameters and ops, so
    the same outputs bit for bit (tested). Models that keep weights outside the flatbuffer (the
    >2 GB layout) are left as they are.
    """
    import flatbuffers
    import numpy as np
    from ai_edge_litert.tools import flatbuffer_utils

    from edgekit.fsutil import write_bytes_atomic

    model = flatbuffer_utils.read_model(str(path))
    if any(b.offset > 1 for b in model.buffers or []):
        return
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:  # read back as lists; as arrays they are shared too
            if tensor.shape is not None:
                tensor.shape = np.asarray(tensor.shape, dtype=np.int32)

    class SharingBuilder(flatbuffers.Builder):
        def __init__(self) -> None:
            super().__init__(1024)
            self.shared: dict[tuple[str, bytes], int] = {}

        def CreateNumpyVector(self, x: np.ndarray) -> int:  # noqa: N802 (flatbuffers' name)
            if x.dtype == np.uint8:  # tensor data
                self.Prep(16, x.size)
                return super().CreateNumpyVector(x)
            key = (x.dtype.str, x.tobytes())
            if key not in self.shared:
                self.shared[key] = super().CreateNumpyVector(x)
            return self.shared[key]

    builder = SharingBuilder()
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    write_bytes_atomic(path, bytes(builder.Output()))
