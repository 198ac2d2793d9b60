"""ExecuTorch .pte through a backend partitioner (XNNPACK, Core ML, Vulkan).

XNNPACK programs run here in ExecuTorch's Python runtime. Core ML and Vulkan
programs lower on Linux but cannot run here (no Apple hardware, no Vulkan in the
pip runtime); for them a *host twin* is written: the same exported program
lowered without a delegate, run on ExecuTorch's portable CPU kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import ExportError
from edgekit.export.base import BackendSpec, Exporter, ExportResult
from edgekit.export.trace import export_program, summarize

_TWIN = "the same exported program without a delegate, on ExecuTorch portable kernels"
# XNNPACK's int8 recipe for transformers keeps its most sensitive linear layers float until the calibration
# cosine reaches this, within 4% of the fp32 model's bytes (edgekit.quantize.transformer)
TARGET_COSINE, CALIB_FOR_LAYERS = 0.9993, 64


class ExecuTorchExporter(Exporter):
    format = "executorch"
    extension = ".pte"
    runtime = "executorch"
    atol = {"fp32": 1e-4}
    backends = {
        "xnnpack": BackendSpec(
            "xnnpack", "XNNPACK delegate (Arm / x86 CPU)", ("fp32", "int8", "int4-weight"), True,
            runtime_target="XnnpackBackend", quant_schemes=("int8", "int8-qat", "int8-dynamic", "int4-weight-only", "mixed"),
        ),
        "coreml": BackendSpec(
            "coreml", "Core ML delegate (Apple Neural Engine / GPU / CPU)", ("fp32", "fp16", "int8-weight"), False,
            host_twin=_TWIN, runtime_target="CoreMLBackend", quant_schemes=("fp16", "int8-weight-only"),
        ),
        "vulkan": BackendSpec(
            "vulkan", "Vulkan delegate (mobile GPU)", ("fp32", "fp16"), False,
            host_twin=_TWIN, runtime_target="VulkanBackend", quant_schemes=("fp16",),
        ),
    }

    def export(self, model: Any, example_inputs: tuple, backend: str, out_dir: Path,
               input_names: list[str] | None = None, output_names: list[str] | None = None,
               quant: Any = None, calib: Any = None, fine_tune: Any = None) -> ExportResult:
        quant_details = {}
        if quant is not None and quant.name == "int4-weight-only":  # torchao, lowered to XNNPACK's int4 GEMM
            from edgekit.quantize import backends as qb

            model = qb.torchao_int4(model, quant)
            quant_details = {"quantization": {**quant.to_dict(), "calibration_batches": 0,
                                              "tool": "torchao Int8DynamicActivationIntxWeightConfig (8da4w)",
                                              "weights": f"int4 symmetric, groups of {quant.group_size}",
                                              "activations": "int8 dynamic (XNNPACK's int4 GEMM)"}}
        elif quant is not None and quant.name == "int8-weight-only":  # Core ML: PT2E with CoreMLQuantizer
            from edgekit.quantize import backends as qb

            model = qb.pt2e_quantize(model, example_inputs, [], qb.coreml_weight_quantizer())
            quant_details = {"quantization": {**quant.to_dict(), "calibration_batches": 0,
                                              "tool": "PT2E CoreMLQuantizer (coremltools LinearQuantizerConfig)",
                                              "weights": "int8 symmetric per-channel", "activations": "fp16"}}
        elif quant is not None and getattr(quant, "embeddings", False):  # transformers: see Int8Dynamic
            from edgekit.quantize import backends as qb
            from edgekit.quantize.transformer import sensitive_linears

            float_layers, sensitivity = [], None
            if calib is not None:  # the most sensitive linear layers stay float (chosen on the calib split)
                arrays = [calib[n] for n in input_names] if isinstance(calib, dict) else [calib]
                fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
                float_layers, sensitivity = sensitive_linears(model, [a[:CALIB_FOR_LAYERS] for a in arrays],
                                                              TARGET_COSINE, int(0.04 * fp32_bytes))
            model = qb.transformer_int8_module(model, example_inputs, float_layers)
            quant_details = {"quantization": {**quant.to_dict(), "calibration_batches": 0,
                                              "float_layers": float_layers, "sensitivity": sensitivity,
                                              "tool": "torchao IntxWeightOnlyConfig (embeddings) + PT2E "
                                                      "XNNPACKQuantizer dynamic (nn.Linear only)",
                                              "weights": "int8 per channel; embedding tables int8 per row",
                                              "activations": "int8 per token at run time (XNNPACK qd8)"}}
        elif quant is not None and quant.name == "fp16":  # the delegate computes in half precision
            quant_details = {"quantization": {**quant.to_dict(), "calibration_batches": 0,
                                              "tool": "Core ML compute_precision FLOAT16" if backend == "coreml"
                                              else "Vulkan force_fp16", "weights": "fp16", "activations": "fp16",
                                              "io": "float32"}}
        elif quant is not None:  # PT2E with the XNNPACK quantizer (the planner allows int8 only there)
            from edgekit.quantize import backends as qb

            batches = qb.calibration_batches(calib, example_inputs[0].shape[0], quant)
            model = qb.pt2e_quantize(model, example_inputs, batches, qb.xnnpack_quantizer(quant), qat=fine_tune)
            quant_details = {"quantization": {**quant.to_dict(), "tool": "PT2E XNNPACKQuantizer",
                                              "calibration_batches": len(batches)}}
        half = quant is not None and quant.name in ("fp16", "int8-weight-only")  # Core ML's activations are fp16
        ep = export_program(model, example_inputs)
        path = out_dir / f"model{self.extension}"
        fuse = getattr(quant, "embeddings", False)  # int8 embedding tables -> embedding_byte kernels
        edge = _lower(ep, backend, half, fuse)
        path.write_bytes(_serialize(edge, backend, fuse))
        result = ExportResult(model_path=path, details={**_delegation(edge), **quant_details})
        if not self.backends[backend].runs_on_host:
            # The twin computes what the delegate computes, on portable kernels: fp16 arithmetic for
            # fp16 (the model cast to half inside, float32 I/O as the delegate's), the dequantized int8
            # weights for int8-weight-only (its fp16 activations are not emulated: fp32 there).
            twin_model = _half_precision(model) if quant is not None and quant.name == "fp16" else model
            if quant is not None and quant.name == "int8-weight-only":
                import executorch.kernels.quantized  # noqa: F401  (out variants of the dequantize ops)
            twin = out_dir / "host-twin" / f"model{self.extension}"
            twin.parent.mkdir(parents=True, exist_ok=True)
            twin.write_bytes(_serialize(_lower(export_program(twin_model, example_inputs), None), "portable"))
            result.twin_path = twin
        return result


def _half_precision(model: Any) -> Any:
    """``model`` computing in float16 with float32 inputs and outputs (a delegate's fp16 mode)."""
    import copy

    import torch

    class HalfPrecision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = copy.deepcopy(model).half()

        def forward(self, *xs: torch.Tensor) -> Any:
            out = self.inner(*(x.half() for x in xs))
            return tuple(o.float() for o in out) if isinstance(out, (tuple, list)) else out.float()

    return HalfPrecision().eval()


def _partitioner(backend: str, half: bool = False) -> Any:
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return XnnpackPartitioner()
    if backend == "coreml":  # Core ML defaults to FLOAT16 compute: say fp32 explicitly when that is the plan
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        return CoreMLPartitioner(compile_specs=CoreMLBackend.generate_compile_specs(
            minimum_deployment_target=ct.target.iOS17,  # int8 weights in ML programs need iOS 17
            compute_precision=ct.precision.FLOAT16 if half else ct.precision.FLOAT32))
    if backend == "vulkan":
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        return VulkanPartitioner({"force_fp16": half})
    raise ValueError(backend)


def _lower(ep: Any, backend: str | None, half: bool = False, fuse_quant: bool = False) -> Any:
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    try:
        partitioner = [_partitioner(backend, half)] if backend else []
        config = EdgeCompileConfig(_check_ir_validity=False) if fuse_quant else None  # torchao's affine ops
        return to_edge_transform_and_lower(ep, partitioner=partitioner, compile_config=config)
    except ImportError as e:
        raise ExportError(f"the ExecuTorch {backend} backend is not installed: {e}") from e
    except Exception as e:
        raise ExportError(f"ExecuTorch lowering to {backend or 'portable'} failed: {summarize(e)}") from e


def _serialize(edge: Any, what: str, fuse_quant: bool = False) -> bytes:
    try:
        if fuse_quant:  # dequantize_affine + embedding -> quantized_decomposed.embedding_byte (portable kernel)
            from executorch.exir import ExecutorchBackendConfig
            from executorch.exir.passes.quant_fusion_pass import QuantFusionPass

            config = ExecutorchBackendConfig(passes=[QuantFusionPass()], do_quant_fusion_and_const_prop=True)
            return edge.to_executorch(config).buffer
        return edge.to_executorch().buffer
    except Exception as e:
        raise ExportError(f"ExecuTorch serialization ({what}) failed: {summarize(e)}") from e


def _delegation(edge: Any) -> dict[str, Any]:
    """Which backends took which part of the graph, and which ops stayed on portable kernels."""
    gm = edge.exported_program().graph_module
    backend_ids: list[str] = []
    outside: list[str] = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            backend_ids.append(getattr(gm, node.args[0].target).backend_id)
        elif name != "getitem":
            outside.append(str(node.target))
    return {
        "delegated_partitions": len(backend_ids),
        "delegate_backends": sorted(set(backend_ids)),
        "ops_outside_delegate": sorted(set(outside)),
    }
