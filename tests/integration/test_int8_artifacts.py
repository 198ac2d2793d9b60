"""What the int8 artifacts contain: integer kernels end to end, and nothing stored twice.

A small residual network (three chained ``x + block(x)`` adds, the MobileNetV2 / ResNet shape)
exported int8 through the ONNX and TFLite exporters:

- TFLite is full-integer: every op computes on int8/int32 tensors, no QUANTIZE/DEQUANTIZE
  islands. litert-torch 0.10's own PT2E annotator left chained adds float (DEQUANTIZE -> ADD ->
  QUANTIZE); the exporter annotates with XNNPACKQuantizer instead (same int8 scheme).
- TFLite stores identical quantization vectors once (``compact_quant_params``): against the same
  model re-serialized plainly by LiteRT's own flatbuffer tool, it is smaller and gives the same
  tensors, parameters and outputs bit for bit.
- ONNX keeps biases float in the file (``QuantizeBias: False``); ONNX Runtime quantizes them at
  load, and its optimized graph still runs every Conv as QLinearConv and the Linear as QGemm.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.export import EXPORTERS
from edgekit.quantize.schemes import Int8Static


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
                                    for _ in range(3))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def residual():
    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((32, 3, 16, 16), dtype=np.float32)
    return Residual().eval(), calib


def export(fmt: str, backend: str, residual, out):
    model, calib = residual
    example = (torch.from_numpy(calib[:1]).clone(),)
    return EXPORTERS[fmt].export(model, example, backend, out, quant=Int8Static(calib_samples=32),
                                 calib=calib).model_path


def run_tflite(path, xs: np.ndarray) -> np.ndarray:
    from edgekit_runner.runtimes import load

    loaded = load(path, "litert")
    return np.concatenate([np.asarray(loaded.run([x[None]])[0]) for x in xs])


def test_tflite_int8_is_full_integer_and_compact(residual, tmp_path):
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    from edgekit.export.tflite import compact_quant_params

    path = export("tflite", "xnnpack", residual, tmp_path)
    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    ops = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
    assert ops.count("ADD") == 3 and "QUANTIZE" not in ops and "DEQUANTIZE" not in ops, ops
    int_types = {9, 2}  # TensorType INT8, INT32
    floats = [name for op, name in zip(graph.operators, ops)
              if {graph.tensors[i].type for i in [*op.inputs, *op.outputs] if i >= 0} - int_types]
    assert not floats, f"ops computing in float: {floats}"

    plain = tmp_path / "plain.tflite"  # LiteRT's own writer: every vector stored where it is used
    flatbuffer_utils.write_model(flatbuffer_utils.read_model(str(path)), str(plain))
    compact = tmp_path / "compact.tflite"
    shutil.copy(plain, compact)
    compact_quant_params(compact)
    assert compact.stat().st_size < plain.stat().st_size - 200, (compact.stat().st_size, plain.stat().st_size)

    def details(p):
        interpreter = Interpreter(str(p))
        return [(t["name"], t["dtype"], tuple(t["shape"]), t["quantization_parameters"]["scales"].tobytes(),
                 t["quantization_parameters"]["zero_points"].tobytes(),
                 t["quantization_parameters"]["quantized_dimension"]) for t in interpreter.get_tensor_details()]

    assert details(compact) == details(plain)
    xs = np.random.default_rng(1).standard_normal((8, 3, 16, 16), dtype=np.float32)
    assert np.array_equal(run_tflite(compact, xs), run_tflite(plain, xs))


def test_onnx_int8_keeps_bias_float_and_runs_fused_kernels(residual, tmp_path):
    import onnx
    import onnxruntime as ort

    path = export("onnx", "cpu", residual, tmp_path)
    graph = onnx.load(str(path)).graph
    inits = {i.name: i.data_type for i in graph.initializer}
    dq_types = {inits.get(n.input[0]) for n in graph.node if n.op_type == "DequantizeLinear"}
    assert onnx.TensorProto.INT32 not in dq_types and onnx.TensorProto.INT8 in dq_types
    assert not graph.value_info  # stripped again after the quantizer

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 7 and "Conv" not in ops, ops
    assert ops.count("QGemm") == 1 and "Gemm" not in ops, ops
