"""Quantize a language model with each backend's own tool (:class:`edgekit.quantize.schemes.LMWeights`).

- ExecuTorch (XNNPACK): torchao on the :class:`Decoder` before export. int4 is ExecuTorch's production
  LLM recipe "8da4w" (``Int8DynamicActivationIntxWeightConfig``: int4 weights per group, int8 activations
  quantized per token at run time, XNNPACK's int4 GEMM); int8 is the same with int8 weights per channel
  ("8da8w"): torchao's int8 weight-only linear lowers but computes wrong outputs in ExecuTorch 1.5.1 (XNNPACK's
  partitioner takes a dequantized weight without quantized activations for static int8). To keep 8da8w's
  accuracy, SmoothQuant (:func:`smooth`) first moves each linear input's outlier channels into the weights
  (folded into the RMSNorms and ``up_proj``; the float model computes the same). ``asymmetric``
  int4 keeps each block's own minimum and step (llama.cpp's Q4_1 grid) by splitting every linear layer in two
  (:class:`BlockOffsetLinear`): the block-centred weights on the symmetric int4 grid (8da4w) plus the
  per-block offsets (8da8w) times the input's block sums. The embedding table is int8 per row
  (``embedding_byte``) and the output layer 8da8w by default. HQQ (half-quadratic) picks the int4 scales
  instead of min/max, as an option.
- ONNX Runtime: ``MatMulNBitsQuantizer`` on the fp32 ``.onnx``: every linear layer as ``MatMulNBits``
  (4 or 8 bits per block of ``group_size``, ``accuracy_level`` as set: 0 computes in float, 4 quantizes the
  activations to int8 per block at run time), the output layer 8 bits, the embedding table int8
  (``quantize_dynamic`` on its Gather). The scales are stored fp16 behind a Cast that ONNX Runtime folds
  when it loads the model (:func:`_fp16_scales`). ``asymmetric`` snaps each block onto llama.cpp's Q4_1 grid
  and splits it the same way (:func:`_snap_to_block_grid`, :func:`_add_block_offsets`).
- LiteRT: ai-edge-quantizer on the fp32 ``.tflite``: int8 is ``weight_only_wi8_afp32``; int4 is the
  dynamic recipe with int4 weights per block of ``group_size`` (int8 activations at run time), the
  embedding table and output layer int8 per channel by default. ``asymmetric`` int4 quantizes a second export, of
  :func:`litert_decoder` (the same split, the block-centred weights snapped onto their grid), with
  ai-edge-quantizer's dequantized-weight recovery, and stores the offsets fp16.

:func:`weight_bits` reads back from the artifact how many bits its weights take (scales and zero points
included), so the manifest reports what was written rather than what was asked for.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from edgekit.errors import ExportError
from edgekit.lm.model import Decoder


def _fail(what: str, e: Exception) -> ExportError:
    from edgekit.export.trace import summarize

    return ExportError(f"{what} failed: {summarize(e)}")


def check_groups(decoder: Decoder, scheme: Any) -> None:
    c = decoder.config
    if scheme.bits == 4:
        bad = sorted({n for n in (c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim)
                      if n % scheme.group_size})
        if bad:
            raise ExportError(f"--group-size {scheme.group_size} does not divide the linear layers' inputs "
                                    f"({', '.join(map(str, bad))}); pick one that does, e.g. 32")


# ------------------------------------------------------------------------------------------------ ExecuTorch

def executorch_decoder(decoder: Decoder, scheme: Any, calib: Any = None) -> tuple[Decoder, dict[str, Any]]:
    """A quantized copy of ``decoder`` for :func:`edgekit.lm.export.executorch` and what was done. ``calib``
    (token windows ``[N, S + 1]``): what SmoothQuant measures the activations on (int8 with ``smoothquant``)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    check_groups(decoder, scheme)
    model = copy.deepcopy(decoder).eval()
    if model.config.tie_word_embeddings:  # each layer gets its own quantized copy of the shared table
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    smoothed = None
    if scheme.bits == 8 and scheme.smoothquant:
        if calib is None or not len(calib):
            raise ExportError("SmoothQuant needs calib windows to measure the activations on; none were given")
        smoothed = smooth(model, calib[:SMOOTH_WINDOWS], scheme.smoothquant, output=scheme.output == "int8")
    asymmetric = scheme.bits == 4 and scheme.asymmetric
    if asymmetric:
        BlockOffsetLinear.replace(model, scheme.group_size)
    body = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"
            and not n.endswith(".offsets")]
    if scheme.bits == 4:
        hqq = scheme.hqq and not asymmetric  # asymmetric: each block's scale is its step, nothing to optimise
        kwargs = {"intx_choose_qparams_algorithm": "hqq_scale_only"} if hqq else {}
        if asymmetric:  # the shifted block spans [-8 d, 7 d]: its scale must be d, the step, as in the GGUF
            kwargs["weight_mapping_type"] = MappingType.SYMMETRIC_NO_CLIPPING_ERR
        linear = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                       weight_granularity=PerGroup(scheme.group_size), **kwargs)
        what = (f"int4 symmetric per group of {scheme.group_size}{' (HQQ scales)' if hqq else ''}, int8 "
                "activations per token at run time (8da4w)")
        if asymmetric:
            what = (f"int4 asymmetric per group of {scheme.group_size} (llama.cpp's Q4_1 grid): the block-centred "
                    f"weights int4 symmetric with the step as scale, int8 activations per token at run time "
                    f"(8da4w), plus the per-block offsets (int8 per output channel, 8da8w) times the input's "
                    f"block sums")
    else:  # 8da8w: torchao's int8 weight-only linear lowers in ExecuTorch 1.5.1 but computes wrong outputs
        # (measured on the tiny LM: perplexity +70% through the .pte, +0.1% in eager PyTorch)
        linear = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
        what = ("int8 symmetric per output channel, int8 activations per token at run time (8da8w: XNNPACK's "
                "int8 GEMM; its weight-only int8 path computes wrong outputs in ExecuTorch 1.5.1)")
        if smoothed:
            what += f"; SmoothQuant alpha {scheme.smoothquant} first"
    output = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    try:
        quantize_(model, linear, filter_fn=lambda m, fqn: fqn in body)
        if asymmetric:  # the offsets int8 too (8da8w): 0.25 bits per weight where fp32 costs 1, and no less
            # accurate (SmolLM2's .pte on eval: +2.2% perplexity against +2.4% with fp32 offsets)
            quantize_(model, output, filter_fn=lambda m, fqn: fqn.endswith(".offsets"))
        if scheme.output == "int8":
            quantize_(model, output, filter_fn=lambda m, fqn: fqn == "lm_head")
        if scheme.embedding == "int8":
            quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
                      filter_fn=lambda m, fqn: isinstance(m, torch.nn.Embedding))
    except Exception as e:  # noqa: BLE001
        raise _fail("torchao quantization of the language model", e) from e
    return model, {"tool": "torchao Int8DynamicActivationIntxWeightConfig",
                   "linear_layers": what,
                   "output_layer": "int8 per channel, int8 activations per token (8da8w)"
                   if scheme.output == "int8" else "float",
                   "embedding_table": "int8 per row (embedding_byte)" if scheme.embedding == "int8" else "float",
                   **({"smoothing": smoothed} if smoothed else {})}


SMOOTH_WINDOWS = 8  # calib windows SmoothQuant measures the activations' ranges on


def smooth(model: Decoder, windows: Any, alpha: float, output: bool = True) -> dict[str, Any]:
    """SmoothQuant (Xiao et al., 2023) in place: per input channel j of each linear layer,
    ``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)``; the input is divided by s (folded into what produces
    it) and the weight's column multiplied by it, so the float model computes the same function while the
    activations' outlier channels, which per-token int8 quantization rounds every other channel against, shrink.

    - q/k/v and gate/up: the preceding RMSNorm's weight (one s for the three, or the two, layers);
    - down_proj: up_proj's output rows (SwiGLU multiplies gate by up, so scaling up scales the product);
    - the output layer (``output``): the final RMSNorm (the output layer has its own copy of a tied table).
    o_proj is left alone: smoothing it too (through v_proj's rows, shared across each grouped-query group) made
    SmolLM2's 8da8w worse on held-out calib windows (perplexity +0.97% against +0.67% without it; fp32 26.61).
    Returns what the manifest records."""
    import numpy as np

    c = model.config
    if output and model.lm_head.weight is model.model.embed_tokens.weight:  # scale the output layer's own copy
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    amax: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: Any, inputs: tuple, _out: Any) -> None:
            a = inputs[0].detach().abs().flatten(0, -2).amax(0)
            amax[name] = torch.maximum(amax[name], a) if name in amax else a
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            for i in range(0, len(windows), 2):
                model(torch.from_numpy(np.ascontiguousarray(windows[i:i + 2, :-1])))
    finally:
        for h in hooks:
            h.remove()

    def scales(act: torch.Tensor, layers: list[Any]) -> torch.Tensor:
        w = torch.stack([lin.weight.abs().amax(0) for lin in layers]).amax(0)
        return (act.clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)

    spread = []  # how far apart the input channels' ranges were: largest / median max|x_j|, before
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            a, mlp, p = layer.self_attn, layer.mlp, f"model.layers.{i}."
            for norm, name, layers in ((layer.input_layernorm, "self_attn.q_proj", [a.q_proj, a.k_proj, a.v_proj]),
                                       (layer.post_attention_layernorm, "mlp.gate_proj", [mlp.gate_proj, mlp.up_proj])):
                s = scales(amax[p + name], layers)
                norm.weight.div_(s)
                for lin in layers:
                    lin.weight.mul_(s)
            s = scales(amax[p + "mlp.down_proj"], [mlp.down_proj])
            mlp.up_proj.weight.div_(s[:, None])
            mlp.down_proj.weight.mul_(s)
            spread += [float(v.max() / v.median().clamp(min=1e-12)) for k, v in amax.items() if k.startswith(p)]
        if output:
            s = scales(amax["lm_head"], [model.lm_head])
            model.model.norm.weight.div_(s)
            model.lm_head.weight.mul_(s)
    return {"alpha": alpha, "calib_windows": len(windows), "calib_tokens": int(len(windows) * (windows.shape[1] - 1)),
            "layers": 6 * c.num_hidden_layers + int(output),
            "input_outlier_ratio_median": round(float(np.median(spread)), 1)}


class BlockOffsetLinear(torch.nn.Module):
    """``x @ W.T = x @ (W - C).T + sums(x) @ C.T`` per block of ``block`` inputs: with each block's step
    ``d = (max - min) / 15`` and offset ``c = min + 8 d``, the block-centred weights ``W - C`` lie on the
    symmetric int4 grid ``[-8 d, 7 d]`` (exactly, for weights that came from llama.cpp's Q4_1), which XNNPACK's
    8da4w GEMM runs; ``C`` (one offset per block: int8 in ExecuTorch's 8da8w, 0.25 bits per weight; fp16 in
    LiteRT) multiplies the input's per-block sums, a grouped convolution XNNPACK runs too."""

    def __init__(self, linear: torch.nn.Linear, block: int, snap: bool = False) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        n, k = w.shape
        blocks = w.reshape(n, k // block, block)
        lo, hi = blocks.amin(-1), blocks.amax(-1)
        step = (hi - lo) / 15
        offset = lo + 8 * step
        shifted = blocks - offset[..., None]
        if snap:  # exactly q * d, q in [-8, 7]: what a quantizer that recovers the grid from the values needs (LiteRT)
            d = step.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
            shifted = torch.clamp(torch.round(shifted / d), -8, 7) * d
        self.block = block
        self.shifted = torch.nn.Linear(k, n, bias=linear.bias is not None)
        self.shifted.weight.data = shifted.reshape(n, k)
        if linear.bias is not None:
            self.shifted.bias.data = linear.bias.detach().clone()
        self.offsets = torch.nn.Linear(k // block, n, bias=False)
        self.offsets.weight.data = offset
        self.register_buffer("ones", torch.ones(k // block, block, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # block sums as a grouped 1-D convolution with ones over [batch, inputs, positions]: XNNPACK runs it and the
        # transposes (a reshape into blocks would have a symbolic dimension, which XNNPACK cannot take)
        sums = F.conv1d(x.transpose(-1, -2), self.ones, groups=self.ones.shape[0]).transpose(-1, -2)
        return self.shifted(x) + self.offsets(sums)

    @classmethod
    def replace(cls, model: Decoder, block: int, snap: bool = False) -> None:
        """Every linear layer of the decoder's body (not the output layer) split in two, in place."""
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, child in list(parent.named_children()):
                    if isinstance(child, torch.nn.Linear):
                        setattr(parent, name, cls(child, block, snap))


# ------------------------------------------------------------------------------------------------ ONNX Runtime

def _output_matmul(model: Any, vocab: int) -> str | None:
    """The name of the MatMul that produces the logits (its weight has ``vocab`` columns). A tied output layer
    reads the embedding table through a Transpose; it gets a transposed copy of its own, so the quantizer
    (which takes initializer weights only) can quantize it and the Gather keeps the table."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        w = node.input[1]
        t = producer.get(w)
        if w not in inits and t is not None and t.op_type == "Transpose" and t.input[0] in inits:
            table = numpy_helper.to_array(inits[t.input[0]])
            if table.ndim == 2 and table.shape[0] == vocab:
                copy_name = f"{t.input[0]}.transposed"
                model.graph.initializer.append(numpy_helper.from_array(table.T.copy(), copy_name))
                node.input[1] = copy_name
                if not any(w in n.input for n in model.graph.node):
                    model.graph.node.remove(t)
                return node.name
        if w in inits and numpy_helper.to_array(inits[w]).shape[-1] == vocab:
            return node.name
    return None


def onnx(fp32_path: Path, out_path: Path, scheme: Any, vocab: int) -> dict[str, Any]:
    """MatMulNBits for the linear layers (the output layer 8 bits unless float), an int8 embedding table."""
    import tempfile

    import onnx as onnx_lib
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from edgekit.fsutil import write_atomic

    # importing the quantizer runs logging.basicConfig(level=INFO): a line per graph node would follow
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    block = scheme.group_size if scheme.bits == 4 else 32
    try:
        model = onnx_lib.load(str(fp32_path))
        head = _output_matmul(model, vocab)
        tables = {i.name for i in model.graph.initializer if len(i.dims) == 2 and i.dims[0] == vocab}
        gathers = [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables]
        if head and scheme.output == "int8" and scheme.bits == 4:  # first the output layer at 8 bits
            others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name != head]
            q = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True,
                                     accuracy_level=scheme.accuracy_level, nodes_to_exclude=others)
            q.process()
            model = q.model.model
        exclude = [head] if head and scheme.output == "float" else []
        split = {}
        if scheme.asymmetric:
            split = _snap_to_block_grid(model, scheme.bits, block, set(exclude))
            exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.output[0] not in split]
        q = MatMulNBitsQuantizer(model, bits=scheme.bits, block_size=block, is_symmetric=True,
                                 accuracy_level=scheme.accuracy_level, nodes_to_exclude=exclude)
        q.process()
        _fp16_scales(q.model.model)
        _add_block_offsets(q.model.model, split, scheme.bits, block)
        with tempfile.TemporaryDirectory() as tmp:
            mid = Path(tmp) / "nbits.onnx"
            q.model.save_model_to_file(str(mid))
            if gathers and scheme.embedding == "int8":
                final = Path(tmp) / "final.onnx"
                quantize_dynamic(str(mid), str(final), op_types_to_quantize=["Gather"], nodes_to_quantize=gathers,
                                 weight_type=QuantType.QInt8)
                swapped = _gather_then_dequantize(onnx_lib.load(str(final)))
                onnx_lib.save(swapped, str(final))
                mid = final
            write_atomic(out_path, lambda t: t.write_bytes(mid.read_bytes()))
        nodes = onnx_lib.load(str(out_path), load_external_data=False).graph.node
    except Exception as e:  # noqa: BLE001
        raise _fail("ONNX Runtime quantization of the language model", e) from e
    return {"tool": "onnxruntime MatMulNBitsQuantizer" + (" + quantize_dynamic (Gather)" if gathers else ""),
            "linear_layers": f"int{scheme.bits} "
                             + ("asymmetric (llama.cpp's Q4_1 grid: each block's minimum and step, fp16; "
                                "MatMulNBits on the block-centred weights plus the input's block sums times the "
                                "offsets)" if scheme.asymmetric else "symmetric")
                             + f" per block of {block}, fp16 scales, accuracy_level "
                             f"{scheme.accuracy_level} ("
                             + ("float compute)" if scheme.accuracy_level == 0 else "int8 activations per block)"),
            "output_layer": "float" if scheme.output == "float" else
                            f"int{8 if scheme.output == 'int8' or scheme.bits == 8 else scheme.bits} per block of 32",
            "embedding_table": "int8 per tensor (Gather, then DequantizeLinear)" if gathers and scheme.embedding == "int8"
                         else "float",
            "matmulnbits_nodes": sum(n.op_type == "MatMulNBits" for n in nodes)}


def _snap_to_block_grid(model: Any, bits: int, block: int, skip: set[str]) -> dict[str, tuple[str, int, Any, Any]]:
    """Asymmetric blocks that MatMulNBits' fast symmetric kernels can run: llama.cpp's Q4_1, exactly.

    Per block of ``block`` inputs a weight column spans ``[lo, hi]``; with the minimum rounded up to fp16 and
    the step ``d = (hi - lo) / 15`` rounded to fp16 (as Q4_1 stores them) the block's grid is ``lo + j d``, j in
    [0, 15]. The weights are snapped onto it (exact for weights that came from Q4_1; the block's smallest
    weight lands on j = 0, since the minimum is rounded up) and centred by ``c = lo + 8 d``: the shifted block
    ``(j - 8) d`` holds ``-8 d``, its largest magnitude, so MatMulNBits' symmetric quantizer takes ``d`` as the
    scale and stores the block exactly (8 bits: 255 steps, ``c = lo + 128 d``). So ``x @ W = x @ (W - C) +
    (x @ S) @ C`` with ``S`` the input's block sums (:func:`_add_block_offsets`). Each such MatMul gets the
    shifted weight as a new initializer (one per weight, so a weight shared with other nodes stays intact for
    them), for the quantizer; returns, per MatMul output, its input, width, the fp16 block minima and the steps
    ``[K / block, N]``."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    levels, split, done = 2**bits - 1, {}, {}
    for node in model.graph.node:
        w_init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if node.name in skip or w_init is None or len(w_init.dims) != 2 or w_init.dims[0] % block:
            continue
        if w_init.name not in done:
            w = numpy_helper.to_array(w_init).astype(np.float32)
            k, n = w.shape
            blocks = w.reshape(k // block, block, n)
            lo32 = blocks.min(1)
            lo = lo32.astype(np.float16)
            lo = np.where(lo.astype(np.float32) < lo32, np.nextafter(lo, np.float16(np.inf)), lo)
            step = ((blocks.max(1) - lo.astype(np.float32)) / levels).astype(np.float16).astype(np.float32)
            if not (np.isfinite(lo).all() and np.isfinite(step).all()):
                raise ExportError(f"{node.name}: a block's minimum or step does not fit fp16, which asymmetric "
                                  f"int{bits} stores them in; use asymmetric = false")
            d = np.where(step > 0, step, 1.0)[:, None, :]
            j = np.clip(np.round((blocks - lo.astype(np.float32)[:, None, :]) / d), 0, levels)
            shifted = ((j - 2 ** (bits - 1)) * step[:, None, :]).astype(np.float32).reshape(k, n)
            model.graph.initializer.append(numpy_helper.from_array(shifted, f"{w_init.name}_block_centred"))
            done[w_init.name] = (lo, step)
        node.input[1] = f"{w_init.name}_block_centred"
        split[node.output[0]] = (node.input[0], w_init.dims[0], *done[w_init.name])
    used = {i for nd in model.graph.node for i in nd.input}
    for init in [i for i in model.graph.initializer if i.name in done and i.name not in used]:
        model.graph.initializer.remove(init)
    return split


def _fp16_scales(model: Any) -> None:
    """MatMulNBits' scales have the activations' type (fp32 here: 32 bits per block); store them fp16, as
    llama.cpp does, behind a Cast that ONNX Runtime folds into an initializer when it loads the model (before
    MatMulNBits packs its weights; the kernels are the same). A layer with a scale outside fp16's normal range
    keeps fp32."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    ordered, done = [], set()
    for node in model.graph.node:
        scales = inits.get(node.input[2]) if node.op_type == "MatMulNBits" and node.input[2] not in done else None
        if scales is not None and scales.data_type == TensorProto.FLOAT:
            s = numpy_helper.to_array(scales)
            mag = np.abs(s[s != 0])
            if not mag.size or (mag.min() >= np.finfo(np.float16).tiny and mag.max() <= np.finfo(np.float16).max):
                done.add(scales.name)  # once per scales tensor, however many nodes read it
                for same in [i for i in model.graph.initializer if i.name == scales.name]:
                    model.graph.initializer.remove(same)
                model.graph.initializer.append(numpy_helper.from_array(s.astype(np.float16), f"{scales.name}_fp16"))
                ordered.append(helper.make_node("Cast", [f"{scales.name}_fp16"], [scales.name],
                                                name=f"{scales.name}_to_fp32", to=TensorProto.FLOAT))
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _add_block_offsets(model: Any, split: dict[str, tuple[str, int, Any, Any]], bits: int, block: int) -> None:
    """After quantization: each MatMulNBits of :func:`_snap_to_block_grid` plus ``(x @ S) @ C``, where the
    offsets ``C = lo + 2^(bits-1) d`` are computed in the graph from the fp16 minima and the MatMulNBits' own
    stored scales ``d`` (constants, folded when the model loads), so the file holds 4 bits + an fp16 scale + an
    fp16 minimum per weight of a block of 32: 5.0 bits, Q4_1's layout."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    ordered, sums, widths, shared, found = [], {}, set(), set(), set()
    for node in model.graph.node:
        ordered.append(node)
        if node.op_type != "MatMulNBits" or node.output[0] not in split:
            continue
        x, k, lo, step = split[node.output[0]]
        found.add(node.output[0])
        cast = producer.get(node.input[2])  # the scales: an initializer, or an fp16 one behind _fp16_scales' Cast
        stored = inits.get(node.input[2]) or (inits.get(cast.input[0]) if cast is not None else None)
        if stored is None or not np.array_equal(
                np.abs(numpy_helper.to_array(stored).astype(np.float32).reshape(lo.shape[1], -1).T), step):
            raise ExportError(f"{node.name}: MatMulNBits' scales are not the snapped blocks' steps, so the "
                              "offsets computed from them would be wrong; use asymmetric = false")
        y, name, n = node.output[0], node.name, lo.shape[1]
        if k not in widths:  # one [K, K/block] matrix of ones per input width
            widths.add(k)
            ones = np.kron(np.eye(k // block, dtype=np.float32), np.ones((block, 1), np.float32))
            model.graph.initializer.append(numpy_helper.from_array(ones, f"block_sum_ones_{k}"))
        if (x, k) not in sums:
            sums[x, k] = f"{x}_block_sums_{k}"
            ordered.append(helper.make_node("MatMul", [x, f"block_sum_ones_{k}"], [sums[x, k]],
                                            name=f"{x}_block_sum_{k}"))
        shape, centre = f"scales_shape_{n}x{k // block}", f"centre_steps_{bits}"
        for const, value in [(shape, np.array([n, k // block], np.int64)),
                             (centre, np.array(2.0 ** (bits - 1), np.float32))]:
            if const not in shared:
                shared.add(const)
                model.graph.initializer.append(numpy_helper.from_array(value, const))
        minima = f"{node.input[1]}_block_min"  # one per stored weight, whichever nodes share it
        if minima not in shared:
            shared.add(minima)
            model.graph.initializer.append(numpy_helper.from_array(lo, minima))
        node.output[0] = f"{y}_shifted"
        ordered += [
            helper.make_node("Cast", [minima], [f"{name}_block_min_fp32"], name=f"{name}_block_min",
                             to=TensorProto.FLOAT),
            helper.make_node("Reshape", [node.input[2], shape], [f"{name}_steps"],
                             name=f"{name}_steps"),
            helper.make_node("Transpose", [f"{name}_steps"], [f"{name}_steps_t"], name=f"{name}_steps_t",
                             perm=[1, 0]),
            helper.make_node("Mul", [f"{name}_steps_t", centre], [f"{name}_half_range"],
                             name=f"{name}_half_range"),
            helper.make_node("Add", [f"{name}_block_min_fp32", f"{name}_half_range"], [f"{name}_offsets"],
                             name=f"{name}_offsets"),
            helper.make_node("MatMul", [sums[x, k], f"{name}_offsets"], [f"{y}_offset"], name=f"{name}_offset"),
            helper.make_node("Add", [f"{y}_shifted", f"{y}_offset"], [y], name=f"{name}_add_offset")]
    if missing := sorted(set(split) - found):
        raise ExportError(f"{len(missing)} linear layer(s) snapped for asymmetric int{bits} did not become "
                          f"MatMulNBits (first: {missing[0]}); their offsets would be lost")
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _gather_then_dequantize(model: Any) -> Any:
    """quantize_dynamic writes ``DequantizeLinear(table) -> Gather``: the whole table is dequantized on every
    call (49k rows for one token). With one scale for the table (per tensor) the two commute exactly, so
    gather the int8 rows first and dequantize only those."""
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name: i for i in model.graph.initializer}
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        users = consumers.get(dq.output[0], [])
        scalar = all(name in inits and not inits[name].dims for name in dq.input[1:])
        if not scalar or not users or any(u.op_type != "Gather" or u.input[0] != dq.output[0] for u in users):
            continue
        for g in users:  # Gather(q, ids) -> DequantizeLinear(rows, scale, zero point)
            rows = g.output[0] + "_quantized_rows"
            out = g.output[0]
            g.input[0], g.output[0] = dq.input[0], rows
            new = type(dq)()
            new.CopyFrom(dq)
            new.name, new.input[0], new.output[0] = g.name + "_dequantize", rows, out
            model.graph.node.insert(list(model.graph.node).index(g) + 1, new)
        model.graph.node.remove(dq)
    return model


# ------------------------------------------------------------------------------------------------ LiteRT

def litert_decoder(decoder: Decoder, scheme: Any) -> Decoder:
    """For ``asymmetric`` int4: a copy of ``decoder`` with every body linear layer split as
    :class:`BlockOffsetLinear` does, the block-centred weights snapped onto their grid ``q * d`` so that
    ai-edge-quantizer's dequantized-weight recovery (its tool for weights already on a grid, e.g. from QAT)
    stores ``q`` with the step ``d`` as the block's scale. Export it, then :func:`litert`."""
    check_groups(decoder, scheme)
    model = copy.deepcopy(decoder).eval()
    BlockOffsetLinear.replace(model, scheme.group_size, snap=True)
    return model


OFFSETS_NAME = "Linear_offsets"  # litert-torch names an FC's output after its module path (BlockOffsetLinear.offsets)
OFFSETS = f".*{OFFSETS_NAME}.*"


def litert(fp32_path: Path, out_path: Path, scheme: Any) -> dict[str, Any]:
    """ai-edge-quantizer: int8 weight-only, or int4 blockwise dynamic with the embedding and output layer int8
    (by default) or float.

    litert-torch names the weight tensors ``arith.constant*``, so layers are told apart by what they produce:
    the output layer is the FULLY_CONNECTED whose output is the ``logits``, an asymmetric layer's offsets the
    one whose output names ``Linear_offsets``. A tied table is one int8 tensor read by both EMBEDDING_LOOKUP
    and the output layer. (ai-edge-quantizer 0.10's weight-only config for EMBEDDING_LOOKUP fails -- str +
    bytes in its dequantize insertion -- so the table is quantized with the dynamic config, which the lookup
    reads as int8 rows.) ``asymmetric`` int4 expects the export of :func:`litert_decoder`: its block-centred
    weights go through dequantized-weight recovery (the scale of a block is its step, stored fp16, so a Q4_1
    grid is kept up to the scale's rounding, which min/max's ``max|w| / 7`` cannot give), its offsets are
    stored fp16."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe, recipe_manager

    from edgekit.fsutil import write_atomic

    op, alg = qtyping.TFLOperationName, algorithm_manager.AlgorithmName
    asymmetric = scheme.bits == 4 and scheme.asymmetric
    try:
        if scheme.bits == 8:
            rcp = recipe.weight_only_wi8_afp32()
            linear = "int8 per channel, float activations (weight_only_wi8_afp32)"
        else:
            granularity = getattr(qtyping.QuantGranularity, f"BLOCKWISE_{scheme.group_size}", None)
            if granularity is None:
                raise ExportError(f"LiteRT's int4 blocks are 32, 64, 128 or 256 weights, not "
                                  f"--group-size {scheme.group_size}")
            rm = recipe_manager.RecipeManager()
            rm.add_dynamic_config(regex=".*", operation_name=op.FULLY_CONNECTED, num_bits=4, granularity=granularity,
                                  algorithm_key=alg.DEQUANTIZED_WEIGHT_RECOVERY if asymmetric
                                  else alg.MIN_MAX_UNIFORM_QUANT)
            if asymmetric:
                if not _contains(Path(fp32_path), OFFSETS_NAME.encode()):
                    raise ExportError("asymmetric int4 for LiteRT needs the export of the split decoder "
                                      "(edgekit.lm.quantize.litert_decoder); this file has no block offsets")
                fp16 = qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT)
                rm.add_quantization_config(regex=OFFSETS, operation_name=op.FULLY_CONNECTED,
                                           algorithm_key=alg.FLOAT_CASTING,
                                           op_config=qtyping.OpQuantizationConfig(
                                               weight_tensor_config=fp16,
                                               compute_precision=qtyping.ComputePrecision.FLOAT,
                                               explicit_dequantize=True))
            if scheme.output == "int8":
                rm.add_dynamic_config(regex=r".*logits.*", operation_name=op.FULLY_CONNECTED, num_bits=8)
            else:
                rm.add_quantization_config(regex=r".*logits.*", operation_name=op.FULLY_CONNECTED,
                                           algorithm_key=alg.NO_QUANTIZE)
            if scheme.embedding == "int8":
                rm.add_dynamic_config(regex=".*", operation_name=op.EMBEDDING_LOOKUP, num_bits=8)
            rcp = rm.get_quantization_recipe()
            linear = f"int4 symmetric per block of {scheme.group_size}, int8 activations at run time (dynamic)"
            if asymmetric:
                linear = (f"int4 asymmetric per block of {scheme.group_size} (llama.cpp's Q4_1 grid): the "
                          f"block-centred weights int4 symmetric with the step as scale (dequantized-weight "
                          f"recovery), int8 activations at run time (dynamic), plus an fp16 offset per block "
                          f"times the input's block sums")
        result = quantizer.Quantizer(str(fp32_path), rcp).quantize()
        write_atomic(out_path, lambda t: result.export_model(str(t), overwrite=True))
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _fail("ai-edge-quantizer on the language model", e) from e
    return {"tool": "ai-edge-quantizer", "linear_layers": linear,
            "output_layer": "int8 per channel" if scheme.bits == 8 or scheme.output == "int8" else "float",
            "embedding_table": "int8 per row" if scheme.bits == 8 or scheme.embedding == "int8" else "float"}


def _contains(path: Path, needle: bytes) -> bool:
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(needle) >= 0


# ------------------------------------------------------------------------------------------------ bits per weight

def weight_bits(path: Path, fmt: str, parameters: int, state_bytes: int = 0) -> dict[str, Any]:
    """Bits per weight read from the artifact: ``file`` counts the whole file (minus ``state_bytes`` of
    stored cache), ``linear`` the quantized linear layers' own tensors (data + scales + zero points), where
    the format lets them be read back."""
    size = Path(path).stat().st_size
    out: dict[str, Any] = {"file_bytes": size,
                           "file_bits_per_parameter": round((size - state_bytes) * 8 / parameters, 3)}
    if fmt == "onnx":
        out.update(_onnx_linear_bits(path))
    elif fmt == "tflite":
        out.update(_tflite_linear_bits(path))
    return out


def _onnx_linear_bits(path: Path) -> dict[str, Any]:
    import numpy as np
    import onnx as onnx_lib
    from onnx import TensorProto

    model = onnx_lib.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    memo: dict[str, frozenset[str]] = {}

    def stored(name: str, depth: int = 0) -> frozenset[str]:
        """The initializers a constant tensor is computed from (through Cast, Reshape, ... of constants only,
        folded when the model loads: fp16 scales, the offsets; a few nodes deep); empty for anything that
        depends on an input."""
        if name not in memo:
            node = producer.get(name)
            if name in inits or node is None or depth > 8:
                memo[name] = frozenset([name] if name in inits else [])
            else:
                parts: list[frozenset[str]] = []
                for i in (i for i in node.input if i):
                    parts.append(stored(i, depth + 1))
                    if not parts[-1]:
                        break
                memo[name] = frozenset().union(*parts) if parts and all(parts) else frozenset()
        return memo[name]

    def offsets(node: Any) -> list[str]:
        """The per-block offsets an asymmetric layer adds to this MatMulNBits (see _add_block_offsets)."""
        adds = [a for a in consumers.get(node.output[0], []) if a.op_type == "Add" and a.name.endswith("_add_offset")]
        for add in adds:
            mm = next((producer.get(i) for i in add.input if i != node.output[0]), None)
            if mm is not None and mm.op_type == "MatMul" and stored(mm.input[1]):
                return [mm.input[1]]
        return []

    per_bits: dict[int, list[int]] = {}  # weight bits -> [stored bits, weights]
    counted: set[str] = set()  # the scales are shared by MatMulNBits and its offsets
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a.i for a in node.attribute}
        acc = per_bits.setdefault(attrs["bits"], [0, 0])
        if node.input[1] not in counted:  # a weight shared by several nodes counts once
            acc[1] += attrs["K"] * attrs["N"]
        for name in set().union(*(stored(i) for i in [*node.input[1:], *offsets(node)] if i)) - counted:
            counted.add(name)
            if inits[name].data_type == TensorProto.INT64 or not inits[name].dims:
                continue  # shapes and scalars: the graph's plumbing, shared by the layers, not weight storage
            acc[0] += int(np.prod(inits[name].dims)) * _onnx_itemsize(inits[name].data_type) * 8
    return {"bits_per_weight": {f"int{b}": round(stored / n, 3) for b, (stored, n) in sorted(per_bits.items())},
            "weights": {f"int{b}": n for b, (_, n) in sorted(per_bits.items())}} if per_bits else {}


def _onnx_itemsize(dtype: int) -> int:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(dtype).itemsize


def _tflite_linear_bits(path: Path) -> dict[str, Any]:
    """Every tensor quantized with more than one scale (the weights): its buffer (int4 packed two per byte)
    plus its scales (per channel: float32 in the quantization record; per block: a scales tensor of its own),
    over its number of weights, grouped by bit width; an asymmetric layer's fp16 block offsets (the
    FULLY_CONNECTED named ``Linear_offsets``) count with the int4 weights they belong to."""
    import re

    import numpy as np
    from ai_edge_quantizer.qtyping import BuiltinOperator
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(Path(path))
    per_bits: dict[int, list[int]] = {}
    seen: set[int] = set()
    offset_bits = 0
    for graph in model.subgraphs:
        for t in graph.tensors:
            q, data = t.quantization, model.buffers[t.buffer].data
            if t.buffer in seen or q is None or data is None:
                continue
            blocks = getattr(q.details, "scales", None) if q.details is not None else None
            if blocks is not None:
                scale_bits = len(model.buffers[graph.tensors[blocks].buffer].data) * 8
            elif q.scale is not None and len(q.scale) > 1:
                scale_bits = len(q.scale) * 32
            else:
                continue
            seen.add(t.buffer)
            n = int(np.prod(t.shape))
            acc = per_bits.setdefault(round(len(data) * 8 / n), [0, 0])
            acc[0] += len(data) * 8 + scale_bits
            acc[1] += n
        producer = {o: op for op in graph.operators for o in op.outputs}
        for op in graph.operators:
            if _builtin(model, op) != BuiltinOperator.FULLY_CONNECTED or len(op.inputs) < 2 \
                    or not re.match(OFFSETS, graph.tensors[op.outputs[0]].name.decode(errors="replace")):
                continue
            weight = op.inputs[1]
            if weight in producer and _builtin(model, producer[weight]) == BuiltinOperator.DEQUANTIZE:
                weight = producer[weight].inputs[0]  # the fp16 constant the FC reads through DEQUANTIZE
            data = model.buffers[graph.tensors[weight].buffer].data
            if data is not None and graph.tensors[weight].buffer not in seen:
                seen.add(graph.tensors[weight].buffer)
                offset_bits += len(data) * 8
    if offset_bits and 4 in per_bits:
        per_bits[4][0] += offset_bits
    return {"bits_per_weight": {f"int{b}": round(stored / n, 3) for b, (stored, n) in sorted(per_bits.items())},
            "weights": {f"int{b}": n for b, (_, n) in sorted(per_bits.items())}} if per_bits else {}


def _builtin(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)  # the schema keeps small codes in the deprecated field
