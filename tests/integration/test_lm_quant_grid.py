"""ONNX Runtime int4 for language models: the asymmetric (float zero point) option keeps weights that already
sit on llama.cpp's Q4_1 grid exactly, which symmetric int4 cannot (the reason SmolLM2 from its GGUF loses
25% perplexity at symmetric int4; see README, Quantized SmolLM2)."""

from __future__ import annotations

import numpy as np
import pytest

K, N, BLOCK = 128, 48, 32


def q4_1(w: np.ndarray, bits: int = 4) -> np.ndarray:
    """llama.cpp's Q4_1 round trip of w [K, N] per block of 32 along K: step d = (max - min) / 15, a float min
    (Q8_1-like with bits=8: 255 steps)."""
    blocks = w.T.reshape(N, K // BLOCK, BLOCK)
    lo, hi = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    levels = 2**bits - 1
    d = (hi - lo) / levels
    return (lo + d * np.clip(np.round((blocks - lo) / d), 0, levels)).reshape(N, K).T.astype(np.float32)


def matmul_model(path, w: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="linear")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("bits,asymmetric", [(4, True), (4, False), (8, True)])
def test_asymmetric_int4_keeps_a_q4_1_grid_exactly(bits, asymmetric, tmp_path):
    import onnxruntime as ort

    from edgekit.lm import quantize as lq
    from edgekit.quantize.schemes import LMWeights

    rng = np.random.default_rng(0)
    w = q4_1(rng.standard_normal((K, N)).astype(np.float32) * 0.05 + 0.01, bits)
    matmul_model(tmp_path / "fp32.onnx", w)
    details = lq.onnx(tmp_path / "fp32.onnx", tmp_path / "int4.onnx",
                      LMWeights(bits=bits, group_size=BLOCK if bits == 4 else 0, accuracy_level=0, asymmetric=asymmetric), vocab=50_000)
    assert details["matmulnbits_nodes"] == 1
    assert ("asymmetric" in details["linear_layers"]) is asymmetric
    stored = lq.weight_bits(tmp_path / "int4.onnx", "onnx", K * N)["bits_per_weight"][f"int{bits}"]
    assert stored == bits + 1 + (0.5 if asymmetric else 0)  # + an fp32 scale per 32 (+ an fp16 offset per 32)
    x = rng.standard_normal((64, 1, K)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "int4.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"x": xi})[0] for xi in x])
    want = x[:, 0] @ w
    error = np.abs(got - want).max() / np.abs(want).max()
    print(f"int{bits} asymmetric={asymmetric}: max error {error:.2e} of the largest output")
    if asymmetric:  # the grid comes back, up to the fp16 offsets' rounding (2^-11 of each block's centre)
        assert error < 1e-3, error
    else:  # symmetric int4 cannot land on an asymmetric grid
        assert error > 1e-2, error
