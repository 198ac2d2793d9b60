"""Backend-native quantization: each backend's own quantizer, never a reimplementation.

- ExecuTorch + XNNPACK: PT2E with ``XNNPACKQuantizer`` (int8 symmetric per-channel weights,
  int8 asymmetric activations), lowered to XNNPACK's quantized kernels.
- TFLite: PT2E annotated by ``XNNPACKQuantizer`` (the same int8 scheme), lowered by litert-torch
  with its ``PT2EQuantizer`` config; full-integer model with int8 I/O (the runner quantizes
  inputs and dequantizes outputs with the tensors' parameters). See export/tflite.py for why.
- ONNX: ONNX Runtime's ``quantize_static`` on the fp32 file, QDQ format, because the
  execution providers (QNN, TensorRT) consume QDQ graphs produced by ORT's own tools:
  CPU EP uint8 activations / int8 weights; QNN HTP through ``get_qnn_qdq_config`` (uint8
  activations, int8 symmetric weights, int32 biases as ORT's QNN config writes them); TensorRT
  symmetric int8 activations and weights. For CPU and TensorRT the biases stay float32 in the
  file (``QuantizeBias: False``): ONNX Runtime's level-1 WeightBiasQuantization transformer
  quantizes them at load, before any EP sees the graph, to int32 with scale = input scale x
  weight scale and zero point 0, so the file does without the int32 biases, their per-channel
  scales and zero points (MobileNetV2: 0.278 -> 0.266 of fp32) and the CPU EP runs the same
  fused QLinearConv / QGemm kernels (tests/integration/test_int8_artifacts.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edgekit.errors import EdgekitError, ExportError
from edgekit.quantize.numerics import QuantizationError
from edgekit.quantize.schemes import FP16, Int4WeightOnly, Int8Dynamic, Int8QAT, Int8Static, Scheme


def calibration_batches(calib: np.ndarray | None, batch: int, scheme: Scheme) -> list[np.ndarray]:
    """The first ``calib_samples`` samples in batches of the model's static batch size
    (none for schemes that do not calibrate: QAT, dynamic)."""
    if not scheme.calib_samples or calib is None:
        return []
    x = calib[: scheme.calib_samples]
    bad = ~np.isfinite(x)
    if bad.any():
        idx = int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0][0])
        raise QuantizationError(f"calibration sample {idx} of the model input contains NaN or Inf; "
                                "fix the calibration split")
    n = len(x) - len(x) % batch
    return [np.array(x[i:i + batch], order="C") for i in range(0, n, batch)]


def pt2e_quantize(model: Any, example: tuple, batches: Iterable[np.ndarray], quantizer: Any,
                  fold: bool = True, qat: Callable[[Any], Any] | None = None) -> Any:
    """PTQ: prepare_pt2e -> calibrate -> convert_pt2e. QAT (``qat`` given): prepare_qat_pt2e on a
    graph exported with a dynamic batch, ``qat(prepared)`` trains it, then convert_pt2e.
    Returns the converted GraphModule in eval mode."""
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

    from edgekit.export.trace import export_program, export_train_graph, summarize

    try:
        if qat is None:
            prepared = prepare_pt2e(export_program(model, example).module(), quantizer)
            with torch.no_grad():
                for b in batches:
                    prepared(torch.from_numpy(b))
                if not batches:  # dynamic: weight observers still need one pass to see the weights
                    prepared(*example)
        else:
            prepared = prepare_qat_pt2e(export_train_graph(model, example), quantizer)
            prepared = qat(prepared)
        converted = convert_pt2e(prepared, fold_quantize=fold)
        move_exported_model_to_eval(converted)
        return converted
    except EdgekitError:
        raise
    except Exception as e:
        raise ExportError(f"PT2E quantization failed: {summarize(e)}") from e


def torchao_int4(model: Any, scheme: Int4WeightOnly) -> Any:
    """A copy of ``model`` with every nn.Linear quantized by torchao to int4 groups (8da4w on XNNPACK).
    Other layers stay float: this scheme is for linear-heavy models (language models, MLP heads)."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    quantized = copy.deepcopy(model).eval()
    bad = [n for n, m in quantized.named_modules()
           if isinstance(m, torch.nn.Linear) and m.in_features % scheme.group_size]
    if bad:
        raise QuantizationError(f"--quant int4-weight-only: input features of {', '.join(bad)} are not a multiple "
                                f"of the group size {scheme.group_size}; pick a group size that divides them")
    try:
        quantize_(quantized, Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4, weight_granularity=PerGroup(scheme.group_size)))
    except Exception as e:
        from edgekit.export.trace import summarize

        raise ExportError(f"torchao int4 quantization failed: {summarize(e)}") from e
    return quantized


def aeq_weight_only(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """int8 weight-only .tflite with ai-edge-quantizer's own recipe (weights int8, activations float)."""
    from ai_edge_quantizer import quantizer, recipe

    try:
        result = quantizer.Quantizer(str(fp32_path), recipe.weight_only_wi8_afp32()).quantize(
            enable_progress_report=False)
        result.export_model(str(out_path))
    except Exception as e:
        from edgekit.export.trace import summarize

        raise ExportError(f"ai-edge-quantizer failed: {summarize(e)}") from e
    return {"tool": "ai-edge-quantizer weight_only_wi8_afp32", "weights": "int8", "activations": "float"}


def tflite_layer_regex(module_path: str) -> str:
    """A regex for the TFLite tensors litert-torch names after the PyTorch module ``module_path``:
    'features.0' -> '.../<class>_features/<class>_0' (every scope is '<class>_<attribute name>')."""
    import re

    *parents, leaf = module_path.split(".")
    scopes = "".join(f"[^/;]*_{re.escape(p)}/" for p in parents)
    return f".*{scopes}[^/;]*_{re.escape(leaf)}(;.*)?$"


def aeq_static(fp32_path: Path, out_path: Path, batches: list[np.ndarray], float_layers: tuple[str, ...]
               ) -> dict[str, Any]:
    """Full-integer int8 .tflite with ai-edge-quantizer's static recipe (int8 symmetric per-channel
    weights, int8 affine activations, calibrated on ``batches``), the ops of ``float_layers`` left
    float through regex scopes with its ``no_quantize`` algorithm."""
    import re

    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    interpreter = Interpreter(str(fp32_path))
    names = [t["name"] for t in interpreter.get_tensor_details()]
    rules = recipe.static_wi8_ai8()
    for layer in float_layers:
        regex = tflite_layer_regex(layer)
        if not any(re.match(regex, n) for n in names):
            raise QuantizationError(f"no TFLite tensor comes from layer {layer}; cannot keep it float")
        rules.append({"regex": regex, "operation": "*", "algorithm_key": "no_quantize"})
    signature, spec = next(iter(interpreter.get_signature_list().items()))
    try:
        q = quantizer.Quantizer(str(fp32_path), rules)
        q.quantize(q.calibrate({signature: [{spec["inputs"][0]: b} for b in batches]})).export_model(str(out_path))
    except Exception as e:
        from edgekit.export.trace import summarize

        raise ExportError(f"ai-edge-quantizer failed: {summarize(e)}") from e
    return {"tool": "ai-edge-quantizer static_wi8_ai8 + no_quantize regex scopes", "weights": "int8",
            "activations": "int8", "float_regex": [tflite_layer_regex(n) for n in float_layers]}


def xnnpack_quantizer(scheme: Scheme) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=scheme.per_channel, is_qat=isinstance(scheme, Int8QAT),
                                               is_dynamic=isinstance(scheme, Int8Dynamic))
    return restricted_quantizer(XNNPACKQuantizer(), config, getattr(scheme, "float_layers", ()))


def restricted_quantizer(quantizer: Any, config: Any, float_layers: tuple[str, ...] = ()) -> Any:
    """An XNNPACKQuantizer that quantizes everything except the modules ``float_layers`` (and every
    node traced from inside them). XNNPACK refuses a None module config, so this is a node filter."""
    quantizer.set_global(config)
    if float_layers:
        from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

        filters = [get_module_name_filter(name) for name in float_layers]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in filters))
    return quantizer


def coreml_weight_quantizer() -> Any:
    """Core ML's own PT2E quantizer, weight-only: int8 symmetric per-channel weights, float activations."""
    import torch
    from coremltools.optimize.torch.quantization.quantization_config import LinearQuantizerConfig, QuantizationScheme
    from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

    return CoreMLQuantizer(LinearQuantizerConfig.from_dict({"global_config": {
        "quantization_scheme": QuantizationScheme.symmetric, "activation_dtype": torch.float32,
        "weight_dtype": torch.qint8, "weight_per_channel": True}}))


def litert_quantizer(scheme: Scheme) -> Any:
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    # static config even for QAT: it tells litert-torch how to lower the Q/DQ graph (see tflite.py)
    return PT2EQuantizer().set_global(get_symmetric_quantization_config(
        is_per_channel=scheme.per_channel, is_dynamic=isinstance(scheme, Int8Dynamic)))


def ort_quantize(fp32_path: Path, out_path: Path, input_name: str, batches: list[np.ndarray], backend: str,
                 scheme: Int8Static, node_modules: dict[str, str] | None = None) -> dict[str, Any]:
    """QDQ-quantize an fp32 .onnx with ONNX Runtime's own tools, configured for ``backend``.
    ``node_modules`` maps ONNX node names to the PyTorch module path they came from; a mixed
    scheme's float layers become ``nodes_to_exclude``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize,
        quantize_dynamic,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{input_name: b} for b in batches])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    exclude = sorted(n for n, module in (node_modules or {}).items()
                     if module in getattr(scheme, "float_layers", ()))
    missing = set(getattr(scheme, "float_layers", ())) - {(node_modules or {})[n] for n in exclude}
    if missing:
        raise QuantizationError(f"no ONNX node comes from layer(s) {', '.join(sorted(missing))}; cannot keep them float")
    try:
        if isinstance(scheme, FP16):  # ONNX Runtime's own converter; I/O stays float32 for the app
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True), str(out_path))
            return {"tool": "onnxruntime convert_float_to_float16 (keep_io_types)", "weights": "fp16",
                    "activations": "fp16"}
        if isinstance(scheme, Int8Dynamic):  # ConvInteger / MatMulInteger; activations quantized at run time
            quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8,
                             per_channel=scheme.per_channel)
            return {"tool": "onnxruntime quantize_dynamic", "activations": "uint8 at run time", "weights": "int8"}
        if backend == "qnn":
            from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

            config = get_qnn_qdq_config(str(fp32_path), Reader(), activation_type=QuantType.QUInt8,
                                        weight_type=QuantType.QInt8, per_channel=scheme.per_channel,
                                        nodes_to_exclude=exclude or None)
            quantize(str(fp32_path), str(out_path), config)
            return {"tool": "onnxruntime get_qnn_qdq_config + quantize", "activations": "uint8", "weights": "int8",
                    **({"nodes_to_exclude": exclude} if exclude else {})}
        symmetric = backend == "tensorrt"  # TensorRT takes symmetric int8 Q/DQ only
        quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=scheme.per_channel,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                       "QuantizeBias": False})
    except QuantizationError:
        raise
    except Exception as e:
        from edgekit.export.trace import summarize

        raise ExportError(f"ONNX Runtime quantization failed: {summarize(e)}") from e
    return {"tool": "onnxruntime quantize_static (QDQ)", "activations": "int8" if symmetric else "uint8",
            "weights": "int8", **({"nodes_to_exclude": exclude} if exclude else {})}


# ---------------------------------------------------------------- int8 for transformers (Int8Dynamic.embeddings)

def transformer_int8_module(model: Any, example: tuple, float_layers: list[str] = ()) -> Any:
    """A copy of ``model`` for XNNPACK: embedding tables int8 per row (torchao weight-only; ExecuTorch's
    QuantFusionPass turns them into ``embedding_byte``), every nn.Linear but ``float_layers`` int8 per
    channel with int8 activations quantized per token at run time (PT2E with XNNPACK's dynamic config)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    quantized = copy.deepcopy(model).eval()
    for module in quantized.modules():
        if isinstance(module, torch.nn.Embedding):
            module.padding_idx = None  # embedding(w, ids, padding_idx) does not match the fusion pattern; it only
            # changes gradients
    try:
        quantize_(quantized, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
                  filter_fn=lambda m, _fqn: isinstance(m, torch.nn.Embedding))
        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        quantizer = XNNPACKQuantizer()
        if float_layers:  # name every linear layer to quantize (the quantizer cannot exclude by name)
            for name, module in quantized.named_modules():
                if isinstance(module, torch.nn.Linear) and name not in float_layers:
                    quantizer.set_module_name(name, config)
        else:
            quantizer.set_module_type(torch.nn.Linear, config)
    except Exception as e:
        from edgekit.export.trace import summarize

        raise ExportError(f"int8 quantization of the embeddings failed: {summarize(e)}") from e
    return pt2e_quantize(quantized, example, [], quantizer)


def ort_transformer_int8(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """ONNX Runtime: every MatMul with a weight as MatMulNBits (8-bit, blocks of 32, symmetric; int8
    activations per block at run time: accuracy_level 4), then the large embedding tables int8 (Gather)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    try:
        model = onnx.load(str(fp32_path))
        tables = {i.name for i in model.graph.initializer if len(i.dims) == 2 and i.dims[0] >= 1024}
        gathers = [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]
        q = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4)
        q.process()
        with tempfile.TemporaryDirectory() as tmp:
            mid = Path(tmp) / "nbits.onnx"
            q.model.save_model_to_file(str(mid))
            if gathers:
                quantize_dynamic(str(mid), str(out_path), op_types_to_quantize=["Gather"], nodes_to_quantize=gathers,
                                 weight_type=QuantType.QInt8)
            else:
                onnx.save(onnx.load(str(mid)), str(out_path))
        n_nbits = sum(n.op_type == "MatMulNBits" for n in onnx.load(str(out_path), load_external_data=False).graph.node)
    except Exception as e:
        from edgekit.export.trace import summarize

        raise ExportError(f"ONNX Runtime transformer int8 quantization failed: {summarize(e)}") from e
    return {"tool": "onnxruntime MatMulNBitsQuantizer (bits 8, block 32, accuracy_level 4) + quantize_dynamic (Gather)",
            "weights": "int8 per block of 32", "activations": "int8 per block at run time",
            "matmulnbits_nodes": n_nbits, "int8_embedding_tables": len(gathers)}


def aeq_dynamic(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """LiteRT: ai-edge-quantizer's ``dynamic_wi8_afp32`` recipe (int8 weights, the embedding tables
    included; activations quantized at run time; float I/O)."""
    from ai_edge_quantizer import quantizer, recipe

    try:
        result = quantizer.Quantizer(str(fp32_path), recipe.dynamic_wi8_afp32()).quantize()
        result.export_model(str(out_path), overwrite=True)
    except Exception as e:
        from edgekit.export.trace import summarize

        raise ExportError(f"ai-edge-quantizer failed: {summarize(e)}") from e
    return {"tool": "ai-edge-quantizer dynamic_wi8_afp32", "weights": "int8", "activations": "int8 at run time"}
