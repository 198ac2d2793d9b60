"""Helpers for test_numerics_vs_backends: read back the int8 parameters each backend chose,
and simulate the int8 conv / linear with ``edgekit.quantize.numerics`` only.

The simulation is the integer pipeline every backend documents for a W8A8 layer::

    x_q   = quantize(x, input params)                          # int8 / uint8, asymmetric
    w_q   = quantize(w, per-channel weight params, zp 0)       # int8, symmetric, axis 0 (out channels)
    b_q   = quantize_bias(b, in_scale, w_scale)                # int32, zp 0, scale in_scale * w_scale
    acc   = sum((x_q - x_zp) * w_q) + b_q                      # int32 accumulation
    y_q   = quantize(acc * in_scale * w_scale, output params)  # requantize: round, + zp, clamp
    y     = dequantize(y_q, output params)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.quantize.numerics import (
    INT32_MAX,
    INT32_MIN,
    QuantParams,
    bias_scale,
    dequantize,
    quantize,
    quantize_bias,
)


@dataclass
class BackendQuant:
    """The parameters a backend chose for one W8A8 layer, plus its own int8 weights / int32 bias
    (in torch layout: OIHW for conv, (out, in) for linear) where the artifact exposes them."""

    input: QuantParams
    weight: QuantParams  # per channel, axis 0, zero point 0
    output: QuantParams
    weight_codes: np.ndarray | None = None
    bias_codes: np.ndarray | None = None


def _act(scale: Any, zero_point: Any, dtype: Any) -> QuantParams:
    """Per-tensor activation params; the storage dtype says signed (int8) or not (uint8)."""
    signed = np.dtype(dtype) == np.int8
    assert np.dtype(dtype) in (np.dtype(np.int8), np.dtype(np.uint8)), dtype
    return QuantParams(np.float32(np.asarray(scale).reshape(())), int(np.asarray(zero_point).reshape(())),
                       bits=8, signed=bool(signed))


def _weight(scales: Any, zero_points: Any, axis: int = 0) -> QuantParams:
    """Per-channel symmetric int8 weight params (narrow range [-127, 127], as all three backends use)."""
    scales = np.asarray(scales, np.float32).ravel()
    zps = np.asarray(zero_points).ravel()
    assert np.all(zps == 0), f"weights are expected symmetric (zero point 0), got {zps}"
    assert axis == 0, f"weights are expected per output channel (axis 0), got axis {axis}"
    return QuantParams(scales, np.zeros(scales.shape, np.int32), bits=8, signed=True, symmetric=True,
                       narrow=True, axis=0)


# ---------------------------------------------------------------- readers


def onnx_params(path: Path) -> BackendQuant:
    """From ORT's QDQ graph as ONNX Runtime loads it (level-1 optimizations, before any EP sees
    it): QuantizeLinear on the graph input, the weight's and bias's DequantizeLinear initializers,
    and the QuantizeLinear feeding the graph output. The file keeps the bias float
    (``QuantizeBias: False``); ORT's WeightBiasQuantization makes it the int32 read here."""
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "basic.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    graph_in = g.input[0].name
    producer = {o: n for n in g.node for o in n.output}
    x_q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == graph_in)
    # the output chain is ... -> QuantizeLinear -> DequantizeLinear -> graph output
    y_dq = producer[g.output[0].name]
    assert y_dq.op_type == "DequantizeLinear", y_dq.op_type
    y_q = producer[y_dq.input[0]]
    assert y_q.op_type == "QuantizeLinear", y_q.op_type
    layer = next(n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul"))
    w_dq, b_dq = producer[layer.input[1]], producer[layer.input[2]]
    assert w_dq.op_type == b_dq.op_type == "DequantizeLinear"
    w_axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
    w_codes = inits[w_dq.input[0]]
    assert w_codes.dtype == np.int8
    if layer.op_type == "Gemm":
        trans_b = next((a.i for a in layer.attribute if a.name == "transB"), 0)
        assert trans_b == 1, "expected Gemm(transB=1), weights stored as (out, in)"
    b_codes = inits[b_dq.input[0]]
    assert b_codes.dtype == np.int32
    return BackendQuant(
        input=_act(inits[x_q.input[1]], inits[x_q.input[2]], inits[x_q.input[2]].dtype),
        weight=_weight(inits[w_dq.input[1]], inits[w_dq.input[2]], w_axis),
        output=_act(inits[y_q.input[1]], inits[y_q.input[2]], inits[y_q.input[2]].dtype),
        weight_codes=w_codes,
        bias_codes=b_codes,
    )


def tflite_params(path: Path) -> BackendQuant:
    """From the LiteRT interpreter's tensor details: the int8 I/O tensors' (scale, zero point), and the
    CONV_2D / FULLY_CONNECTED op's weight (per-channel scales, ``quantized_dimension``) and int32 bias."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    details = {d["index"]: d for d in it.get_tensor_details()}
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    layer = next(op for op in it._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"))
    w_idx, b_idx = int(layer["inputs"][1]), int(layer["inputs"][2])
    wq, bq = details[w_idx]["quantization_parameters"], details[b_idx]["quantization_parameters"]
    w_codes = it.get_tensor(w_idx)
    assert w_codes.dtype == np.int8
    if layer["op_name"] == "CONV_2D":
        w_codes = np.ascontiguousarray(w_codes.transpose(0, 3, 1, 2))  # TFLite filters are OHWI
    b_codes = it.get_tensor(b_idx)
    assert b_codes.dtype == np.int32 and np.all(bq["zero_points"] == 0)

    def io(d: dict) -> QuantParams:
        qp = d["quantization_parameters"]
        assert len(qp["scales"]) == 1, "activations are expected per tensor"
        return _act(qp["scales"][0], qp["zero_points"][0], d["dtype"])

    return BackendQuant(input=io(inp), weight=_weight(wq["scales"], wq["zero_points"], wq["quantized_dimension"]),
                        output=io(out), weight_codes=w_codes, bias_codes=b_codes)


def pt2e_params(gm: Any) -> BackendQuant:
    """From a PT2E-converted GraphModule (folded weights): the quantize_per_tensor on the graph input,
    the weight's dequantize_per_channel (its int8 constant and scales), and the quantize_per_tensor
    on the conv / linear output. The float bias stays float in the graph; XNNPACK quantizes it to
    int32 at lowering with scale in_scale * w_scale and zero point 0 (QuantParams.from_bias)."""
    import torch

    qd = torch.ops.quantized_decomposed
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]

    def const(node: Any) -> np.ndarray:
        assert node.op == "get_attr", node
        return getattr(gm, node.target).detach().cpu().numpy()

    def act(node: Any) -> QuantParams:
        _, scale, zp, qmin, qmax, dtype = node.args[:6]
        assert (qmin, qmax) == ((-128, 127) if dtype == torch.int8 else (0, 255)), (qmin, qmax)
        return _act(np.float32(scale), zp, np.int8 if dtype == torch.int8 else np.uint8)

    x_q = next(n for n in nodes if n.target == qd.quantize_per_tensor.default and n.args[0].op == "placeholder")
    layer = next(n for n in nodes if n.target in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default))
    y_q = next(n for n in nodes if n.target == qd.quantize_per_tensor.default and n.args[0] is layer)
    w_dq = layer.args[1]
    assert w_dq.target == qd.dequantize_per_channel.default, w_dq.target
    w_node, s_node, zp_node, axis, qmin, qmax, dtype = w_dq.args[:7]
    assert dtype == torch.int8 and (qmin, qmax) == (-127, 127), (dtype, qmin, qmax)
    w_codes = const(w_node)
    assert w_codes.dtype == np.int8
    return BackendQuant(input=act(x_q), weight=_weight(const(s_node), const(zp_node), axis), output=act(y_q),
                        weight_codes=w_codes)


# ---------------------------------------------------------------- simulation


def _int32(acc: np.ndarray, what: str) -> np.ndarray:
    assert acc.min() >= INT32_MIN and acc.max() <= INT32_MAX, f"{what} accumulator overflows int32"
    return acc.astype(np.int32)


def conv2d_acc(xc: np.ndarray, w_q: np.ndarray, padding: int) -> np.ndarray:
    """Integer conv (stride 1, dilation 1, groups 1) of zero-point-shifted codes ``xc`` (NCHW)
    with int8 weights (OIHW); padding adds 0, i.e. the input zero point in code space."""
    xc = np.pad(xc.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = w_q.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(xc, (kh, kw), axis=(2, 3))  # N C H W kh kw
    return _int32(np.einsum("nchwij,ocij->nohw", win, w_q.astype(np.int64)), "conv")


def linear_acc(xc: np.ndarray, w_q: np.ndarray) -> np.ndarray:
    return _int32(xc.astype(np.int64) @ w_q.astype(np.int64).T, "linear")


def simulate(kind: str, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, p: BackendQuant,
             padding: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """edgekit's int8 simulation of one conv2d / linear layer with the backend's parameters.

    Returns (dequantized float output, int output codes).
    """
    x_q = quantize(x, p.input, "input")
    xc = x_q.astype(np.int32) - p.input.zero_point  # (x_q - x_zp), exact in int32
    w_q = quantize(weight, p.weight, "weight")  # per-channel symmetric int8, zero point 0
    b_q = quantize_bias(bias, p.input.scale, p.weight.scale, "layer")  # int32, scale in_scale * w_scale
    acc = conv2d_acc(xc, w_q, padding) if kind == "conv" else linear_acc(xc, w_q)
    chan = (1, -1, 1, 1) if kind == "conv" else (1, -1)
    acc = _int32(acc.astype(np.int64) + b_q.reshape(chan), "accumulator + bias")
    # requantize: the int32 accumulator is worth acc * in_scale * w_scale (float32, per channel);
    # our quantize divides by the output scale, rounds half to even, adds the zero point and clamps
    real = acc.astype(np.float32) * bias_scale(p.input.scale, p.weight.scale).reshape(chan)
    y_q = quantize(real, p.output, "output")
    return dequantize(y_q, p.output, "output"), y_q
