"""int4 for language models: the asymmetric option keeps weights that already sit on llama.cpp's Q4_1 grid
exactly, which symmetric int4 cannot (the reason SmolLM2 from its GGUF loses 25-40% perplexity at symmetric
int4; see README, Quantized SmolLM2), in ONNX Runtime (MatMulNBits plus block offsets), ExecuTorch (8da4w
plus int8 block offsets, :class:`edgekit.lm.quantize.BlockOffsetLinear`) and LiteRT (blockwise int4 through
ai-edge-quantizer's dequantized-weight recovery plus fp16 block offsets). And SmoothQuant, which keeps ExecuTorch's
int8 (8da8w: int8 activations too) accurate when an input channel carries outliers."""

from __future__ import annotations

import numpy as np
import pytest

K, N, BLOCK = 128, 48, 32


def q4_1(w: np.ndarray, bits: int = 4) -> np.ndarray:
    """llama.cpp's Q4_1 round trip of w [K, N] per block of 32 along K: step d = (max - min) / 15 and the
    minimum, both stored fp16 (Q8_1-like with bits=8: 255 steps)."""
    k, n = w.shape
    blocks = w.T.reshape(n, k // BLOCK, BLOCK)
    levels = 2**bits - 1
    lo = blocks.min(-1, keepdims=True).astype(np.float16).astype(np.float32)
    d = ((blocks.max(-1, keepdims=True) - lo) / levels).astype(np.float16).astype(np.float32)
    return (lo + d * np.clip(np.round((blocks - lo) / d), 0, levels)).reshape(n, k).T.astype(np.float32)


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
    assert stored == bits + 0.5 + (0.5 if asymmetric else 0)  # + an fp16 scale per 32 (+ an fp16 minimum per 32)
    x = rng.standard_normal((64, 1, K)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "int4.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"x": xi})[0] for xi in x])
    want = x[:, 0] @ w
    error = np.abs(got - want).max() / np.abs(want).max()
    print(f"int{bits} asymmetric={asymmetric}: max error {error:.2e} of the largest output")
    if asymmetric:  # the grid comes back exactly: fp16 minimum and step as Q4_1's, the rest fp32 arithmetic
        assert error < 1e-6, error
    else:  # symmetric int4 cannot land on an asymmetric grid
        assert error > 1e-2, error


def test_asymmetric_onnx_snaps_any_block_and_keeps_shared_weights(tmp_path):
    """Not only Q4_1 weights: blocks whose range is tiny against their minimum (1.0 to 1.004, finer than fp16's
    step at 1.0) still get offsets that match the stored scales, and a weight read by two MatMuls is split for
    both (each output exactly its input times the fp16-min / fp16-step grid)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.lm import quantize as lq
    from edgekit.quantize.schemes import LMWeights

    rng = np.random.default_rng(1)
    w = (1.0 + 0.004 * rng.random((K, N))).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y1"], name="first"),
                               helper.make_node("MatMul", ["x2", "w"], ["y2"], name="second")], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, K]) for n in ("x", "x2")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, N]) for n in ("y1", "y2")],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "fp32.onnx"))
    lq.onnx(tmp_path / "fp32.onnx", tmp_path / "int4.onnx",
            LMWeights(bits=4, group_size=BLOCK, accuracy_level=0, asymmetric=True), vocab=50_000)
    # the grid: each block's minimum rounded *up* to fp16 (so its smallest weight is on j = 0), its step fp16
    blocks = w.reshape(K // BLOCK, BLOCK, N)
    lo = blocks.min(1).astype(np.float16)
    lo = np.where(lo.astype(np.float32) < blocks.min(1), np.nextafter(lo, np.float16(np.inf)), lo).astype(np.float32)
    d = ((blocks.max(1) - lo) / 15).astype(np.float16).astype(np.float32)
    grid = (lo[:, None] + np.clip(np.round((blocks - lo[:, None]) / d[:, None]), 0, 15) * d[:, None]).reshape(K, N)
    session = ort.InferenceSession(str(tmp_path / "int4.onnx"), providers=["CPUExecutionProvider"])
    x, x2 = rng.standard_normal((2, 1, K)).astype(np.float32)
    y1, y2 = session.run(None, {"x": x, "x2": x2})
    for got, inp in ((y1, x), (y2, x2)):
        want = inp @ grid
        assert np.abs(got - want).max() < 1e-5 * np.abs(want).max(), np.abs(got - want).max()
    assert np.abs(grid - w).max() <= np.abs(w).max() * 2**-10  # fp16's step at 1.0 bounds the rounding
    assert lq.weight_bits(tmp_path / "int4.onnx", "onnx", 2 * K * N)["bits_per_weight"]["int4"] == 5.0


def tiny_decoder():
    import torch

    from edgekit.lm.model import Decoder, DecoderConfig

    torch.manual_seed(0)
    return Decoder(DecoderConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                                 tie_word_embeddings=True)).eval()


def grid_decoder(rng):
    """The tiny decoder with its body's linear layers on a Q4_1 grid, as SmolLM2's come from its GGUF."""
    import torch

    decoder = tiny_decoder()
    with torch.no_grad():
        for name, lin in decoder.named_modules():
            if isinstance(lin, torch.nn.Linear) and name != "lm_head":
                n, k = lin.weight.shape
                lin.weight.copy_(torch.from_numpy(q4_1(rng.standard_normal((n, k)).T * 0.05 + 0.01).T.copy()))
    return decoder


def test_executorch_asymmetric_int4_keeps_a_q4_1_grid_exactly(tmp_path):
    """Every linear layer split into block-centred weights (8da4w, the step as scale) and int8 block offsets:
    the float split computes the same, the int4 weights dequantize to the Q4_1 grid exactly (symmetric int4
    misses it by a large part of a step), and the .pte computes what the quantized PyTorch model does."""
    import torch

    from edgekit.lm import quantize as lq
    from edgekit.lm.export import executorch
    from edgekit.quantize.schemes import LMWeights
    from edgekit_runner import lm as runner_lm

    rng = np.random.default_rng(0)
    decoder = grid_decoder(rng)
    x = torch.randn(3, 5, 64)
    linear = decoder.model.layers[0].self_attn.q_proj
    split = lq.BlockOffsetLinear(linear, BLOCK)
    assert torch.allclose(split(x), linear(x), atol=1e-5)  # the same function in float
    windows = rng.integers(0, 256, (4, 33))
    errors, offset_error = {}, 0.0
    for asymmetric in (True, False):
        quantized, details = lq.executorch_decoder(decoder, LMWeights(bits=4, group_size=BLOCK, asymmetric=asymmetric))
        assert ("asymmetric" in details["linear_layers"]) is asymmetric
        worst = 0.0
        for layer, original in zip(quantized.model.layers, decoder.model.layers):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                want = getattr(original.self_attn, name).weight
                got = getattr(layer.self_attn, name)
                if asymmetric:  # the int4 part against the exact block-centred weights; the int8 offsets apart
                    blocks = want.reshape(want.shape[0], -1, BLOCK)
                    lo, hi = blocks.amin(-1), blocks.amax(-1)
                    centre = lo + 8 * (hi - lo) / 15
                    want = want - centre.repeat_interleave(BLOCK, 1)
                    w = got.shifted.weight.dequantize()
                    assert type(got.offsets.weight) is type(got.shifted.weight)  # torchao's quantized tensor too
                    rows = centre.abs().amax(-1, keepdim=True)
                    offset_error = max(offset_error, float(((got.offsets.weight.dequantize() - centre).abs()
                                                            / rows).max()))
                else:
                    w = got.weight.dequantize()
                worst = max(worst, float((w - want).abs().max() / want.abs().max()))
        errors[asymmetric] = worst
    print(f"int4 weights vs the Q4_1 grid, max error of the largest weight: {errors}; int8 offsets: {offset_error:.2e}"
          " of the row's largest")
    assert errors[True] < 1e-5 and errors[False] > 1e-2, errors
    assert 0 < offset_error <= 0.5 / 127 + 1e-6  # int8 per output channel: rounded, by half a step at most
    vs_eager, vs_float = [], {}
    for asymmetric in (True, False):
        quantized, _ = lq.executorch_decoder(decoder, LMWeights(bits=4, group_size=BLOCK, asymmetric=asymmetric))
        details = executorch(quantized, tmp_path / "model.pte", 64, quantized=True)
        session = runner_lm.open_session(tmp_path / "model.pte", "executorch", details["cache"])
        vs_float[asymmetric] = []
        for window in windows:  # one window's error ranges 1.4-5.3% (fp32 or int8 offsets alike): four of them
            tokens = [int(t) for t in window[:12]]
            with torch.no_grad():
                eager, float_model = (m(torch.tensor([tokens]))[0].numpy() for m in (quantized, decoder))
            session.reset()
            got = session.feed(tokens)
            scale = np.abs(float_model).max()
            vs_eager.append(np.abs(got - eager).max() / scale)
            vs_float[asymmetric].append(np.abs(got - float_model).max() / scale)
    # XNNPACK's kernels are not torchao's eager reference (bf16 scales, their own activation rounding): 1-2% of
    # the largest logit apart, for either recipe. Against the float model the asymmetric .pte is 2-5% off (its
    # int8 activations; 3.1% on average here), symmetric int4's 18-30%
    print(f".pte vs eager {np.round(vs_eager, 4)}, vs float: asymmetric {np.round(vs_float[True], 4)}, "
          f"symmetric {np.round(vs_float[False], 4)}")
    assert np.mean(vs_eager) < 0.03, vs_eager
    assert np.mean(vs_float[True]) < np.mean(vs_float[False]) / 4, vs_float


def test_litert_asymmetric_int4_keeps_a_q4_1_grid_through_dequantized_weight_recovery(tmp_path):
    """LiteRT's int4 kernels are symmetric and ai-edge-quantizer's min/max scale is max|w| / 7, which cannot
    land on a 16-level Q4_1 block. The split decoder (block-centred weights snapped to q * d, fp16 offsets)
    goes through ai-edge-quantizer's dequantized-weight recovery, which stores q with the step d as the scale:
    the .tflite then computes the float model within the int8 activations' rounding, where symmetric int4
    is an order of magnitude further off; 4 + 0.5 (fp16 scale) + 0.5 (fp16 offset) bits per weight."""
    import torch

    from edgekit.errors import ExportError
    from edgekit.lm import quantize as lq
    from edgekit.lm.export import litert
    from edgekit.quantize.schemes import LMWeights
    from edgekit_runner import lm as runner_lm

    decoder = grid_decoder(np.random.default_rng(0))
    settings = {"bits": 4, "group_size": BLOCK, "output": "float", "embedding": "float"}
    asym, sym = LMWeights(**settings, asymmetric=True), LMWeights(**settings, asymmetric=False)
    split = lq.litert_decoder(decoder, asym)
    tokens = [int(t) for t in np.random.default_rng(1).integers(0, 256, 12)]
    with torch.no_grad():
        float_model = decoder(torch.tensor([tokens]))[0].numpy()
        assert np.abs(split(torch.tensor([tokens]))[0].numpy() - float_model).max() < 1e-5  # on the grid already
    details = litert(decoder, tmp_path / "fp32.tflite", 64, 16)
    litert(split, tmp_path / "split.tflite", 64, 16)
    with pytest.raises(ExportError, match="needs the export of the split decoder"):
        lq.litert(tmp_path / "fp32.tflite", tmp_path / "wrong.tflite", asym)
    assert "asymmetric" in lq.litert(tmp_path / "split.tflite", tmp_path / "asym.tflite", asym)["linear_layers"]
    assert lq.litert(tmp_path / "fp32.tflite", tmp_path / "sym.tflite", sym)["output_layer"] == "float"
    errors, bits = {}, {}
    body = sum(m.weight.numel() for n, m in decoder.named_modules()
               if isinstance(m, torch.nn.Linear) and n != "lm_head")
    for name in ("asym", "sym"):
        session = runner_lm.open_session(tmp_path / f"{name}.tflite", "litert", details["cache"])
        errors[name] = float(np.abs(session.feed(tokens) - float_model).max() / np.abs(float_model).max())
        stored = lq.weight_bits(tmp_path / f"{name}.tflite", "tflite", 1)
        bits[name] = stored["bits_per_weight"]
        assert stored["weights"] == {"int4": body}  # the body's linear layers; the output layer float as asked
    print(f"LiteRT int4 logits vs float, of the largest: {errors}; bits per weight {bits}")
    assert bits == {"asym": {"int4": 5.0}, "sym": {"int4": 4.5}}
    # 1.5% here (the int8 activations, as ExecuTorch's .pte above), against symmetric int4's 36%
    assert errors["asym"] < 0.03 and errors["sym"] > 5 * errors["asym"], errors


@pytest.mark.parametrize("outlier", [1.0, 100.0])
def test_smoothquant_keeps_the_model_and_undoes_an_outlier_channel(outlier):
    """An input channel 100x larger than the rest (its weights 100x smaller: the same kind of function), as LLMs
    have: per-token int8 activations round every other channel against it, and ExecuTorch's 8da8w error
    grows; SmoothQuant moves the outlier into the weights and brings it back to the no-outlier error. The
    smoothed float model computes what the original does. Without an outlier it changes little."""
    import copy

    import torch

    from edgekit.lm import quantize as lq
    from edgekit.quantize.schemes import LMWeights

    decoder = tiny_decoder()
    with torch.no_grad():
        for layer in decoder.model.layers:
            for norm, layers in ((layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                          layer.self_attn.v_proj]),
                                 (layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj])):
                norm.weight[3] = outlier
                for lin in layers:
                    lin.weight[:, 3] /= outlier
    rng = np.random.default_rng(0)
    calib, test = rng.integers(0, 256, (8, 33)), torch.from_numpy(rng.integers(0, 256, (4, 32)))
    with torch.no_grad():
        want = decoder(test)
        smoothed = copy.deepcopy(decoder)
        record = lq.smooth(smoothed, calib, 0.5)
        assert (smoothed(test) - want).abs().max() < 1e-5 * want.abs().max()
        assert smoothed.model.embed_tokens.weight.data_ptr() != smoothed.lm_head.weight.data_ptr()  # untied
        assert torch.equal(smoothed.model.embed_tokens.weight, decoder.model.embed_tokens.weight)
        assert record["layers"] == 2 * 6 + 1 and record["calib_windows"] == 8

        def error(alpha: float) -> float:
            model, details = lq.executorch_decoder(decoder, LMWeights(bits=8, group_size=0, smoothquant=alpha), calib)
            assert ("smoothing" in details) is (alpha > 0)
            return float((model(test) - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt())

        plain, smooth = error(0.0), error(0.5)
    print(f"outlier {outlier}: 8da8w relative RMS error {plain:.4f} plain, {smooth:.4f} smoothed")
    if outlier > 1:
        assert smooth < 0.5 * plain, (smooth, plain)
    assert smooth < 0.015, smooth
