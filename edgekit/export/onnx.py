"""ONNX through torch's dynamo exporter, checked with ``onnx.checker``.

The file does not depend on the execution provider: the same .onnx serves the
CPU EP, QNN (Hexagon HTP), TensorRT and CUDA. Only the CPU EP exists on this
host, so for the others validation runs the same file there (a host twin).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from edgekit.errors import ExportError
from edgekit.export.base import BackendSpec, Exporter, ExportResult
from edgekit.export.trace import export_program, summarize

_TWIN = "the same .onnx file in onnxruntime's CPUExecutionProvider"


class OnnxExporter(Exporter):
    format = "onnx"
    extension = ".onnx"
    runtime = "onnxruntime"
    atol = {"fp32": 1e-4}
    backends = {
        "cpu": BackendSpec("cpu", "ONNX Runtime CPU execution provider", ("fp32", "fp16", "int8"), True,
                           runtime_target="CPUExecutionProvider",
                           quant_schemes=("int8", "int8-dynamic", "fp16", "mixed")),
        "qnn": BackendSpec("qnn", "ONNX Runtime QNN EP (Qualcomm Hexagon HTP)", ("fp32", "fp16", "int8"), False,
                           host_twin=_TWIN, runtime_target="QNNExecutionProvider",
                           quant_schemes=("int8", "fp16", "mixed")),
        "tensorrt": BackendSpec("tensorrt", "ONNX Runtime TensorRT EP (NVIDIA GPU)", ("fp32", "fp16", "int8"), False,
                                host_twin=_TWIN, runtime_target="TensorrtExecutionProvider",
                                quant_schemes=("int8", "fp16", "mixed")),
        "cuda": BackendSpec("cuda", "ONNX Runtime CUDA EP (NVIDIA GPU)", ("fp32", "fp16"), False,
                            host_twin=_TWIN, runtime_target="CUDAExecutionProvider", quant_schemes=("fp16",)),
    }

    def export(self, model: Any, example_inputs: tuple, backend: str, out_dir: Path,
               input_names: list[str] | None = None, output_names: list[str] | None = None,
               quant: Any = None, calib: Any = None, fine_tune: Any = None) -> ExportResult:
        import onnx
        import torch

        ep = export_program(model, example_inputs)
        path = out_dir / f"model{self.extension}"
        fp32_path = path if quant is None else out_dir / f"model-fp32{self.extension}"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(ep, example_inputs, dynamo=True, verbose=False)
            program.save(str(fp32_path))
            node_modules = _strip_debug_info(fp32_path, input_names, output_names)
            onnx.checker.check_model(str(fp32_path), full_check=True)
        except Exception as e:
            raise ExportError(f"ONNX export failed: {summarize(e)}") from e
        details: dict[str, Any] = {}
        if quant is not None:  # ONNX Runtime's own QDQ quantizer, configured for the EP
            from edgekit.quantize import backends as qb

            if getattr(quant, "embeddings", False):  # the transformer recipe (the planner allows it on the CPU EP)
                batches, tool = [], qb.ort_transformer_int8(fp32_path, path)
            else:
                batches = qb.calibration_batches(calib, example_inputs[0].shape[0], quant)
                input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
                tool = qb.ort_quantize(fp32_path, path, input_name, batches, backend, quant, node_modules)
            _strip_debug_info(path)  # the quantizer writes value_info back
            details["quantization"] = {**quant.to_dict(), **tool, "calibration_batches": len(batches)}
        opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                      if o.domain in ("", "ai.onnx")), None)
        return ExportResult(model_path=path, twin_path=None if self.backends[backend].runs_on_host else path,
                            details={"opset": opset, **details})


def _strip_debug_info(path: Path, input_names: list[str] | None = None,
                      output_names: list[str] | None = None) -> dict[str, str]:
    """Drop what only a debugger needs (per-node stack traces, intermediate value_info) from a
    deployable file; a few KB that matter for small models. Shapes are re-inferred by runtimes.
    Graph inputs and outputs get the project's names. Returns {node name: PyTorch module path} read
    from the exporter's name scopes first (mixed precision excludes nodes by the layer they came from)."""
    import ast

    import onnx

    model = onnx.load(str(path))
    _rename_io(model.graph, input_names, output_names)
    modules = {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if scopes:
            path_parts = ast.literal_eval(scopes)
            if len(path_parts) >= 2 and path_parts[-2]:
                modules[node.name] = path_parts[-2]
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    onnx.save(model, str(path))
    return modules


def _rename_io(graph: Any, input_names: list[str] | None, output_names: list[str] | None) -> None:
    """Give the graph's inputs and outputs these names. torch's exporter names values after the ops that make
    them (an ``aten.embedding`` output is ``embedding``), so an internal value that already has a wanted
    name is renamed out of the way first (the exporter's own renaming then fails the SSA check)."""
    inputs = [v.name for v in graph.input if v.name not in {i.name for i in graph.initializer}]
    outputs = [v.name for v in graph.output]
    for given, found, what in ((input_names, inputs, "inputs"), (output_names, outputs, "outputs")):
        if given and len(given) > len(found):
            raise ExportError(f"the exported ONNX graph has {len(found)} {what}, the project names {len(given)}")
    wanted = dict(zip(inputs, input_names or []))
    wanted.update(zip(outputs, output_names or []))
    wanted = {old: new for old, new in wanted.items() if old != new}
    if not wanted:
        return
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {v.name for v in graph.input}
    taken |= {i.name for i in graph.initializer} | {v.name for v in graph.output}
    mapping = dict(wanted)
    for new in wanted.values():
        if new in taken and new not in wanted:  # an internal value holds the name: give it another
            alias, k = f"{new}__internal", 0
            while alias in taken:
                k += 1
                alias = f"{new}__internal{k}"
            mapping[new] = alias
            taken.add(alias)

    def rename(name: str) -> str:
        return mapping.get(name, name)

    for node in graph.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = rename(value.name)
    for init in graph.initializer:
        init.name = rename(init.name)
