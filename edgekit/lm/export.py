"""Export a :class:`Decoder` with its KV cache to each format (the cache strategies of :mod:`edgekit.lm.cache`).

Each function writes one file atomically and returns what the manifest records about it: the methods or
signatures, their inputs and outputs, and the cache layout. Heavy imports stay inside each function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgekit.errors import ExportError
from edgekit.fsutil import write_atomic
from edgekit.lm.cache import ExecuTorchLM, LiteRtLM, OnnxLM, cache_shape, onnx_names
from edgekit.lm.model import Decoder


def _layout(decoder: Decoder, max_context: int, **extra: Any) -> dict[str, Any]:
    c = decoder.config
    return {"max_context": max_context, "layers": c.num_hidden_layers, "kv_heads": c.num_key_value_heads,
            "head_dim": c.head_dim, "vocab_size": c.vocab_size, "eos_ids": c.eos_ids, **extra}


def executorch(decoder: Decoder, path: Path, max_context: int, backend: str = "xnnpack",
               quantized: bool = False) -> dict[str, Any]:
    """``forward(tokens [1, S], input_pos [1])`` with S dynamic in 1..max_context, the cache in mutable buffers,
    lowered to XNNPACK, plus the constant methods ExecuTorch's LLM runner reads. ``quantized``: the decoder
    holds torchao's quantized weights (:func:`edgekit.lm.quantize.executorch_decoder`); an int8 embedding
    table becomes the ``embedding_byte`` kernel."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass
    from executorch.exir.passes.quant_fusion_pass import QuantFusionPass
    from torch.export import Dim

    module = ExecuTorchLM(decoder, max_context).eval()
    example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    seq = Dim("seq", min=1, max=max_context)
    c = decoder.config
    metadata = {"get_max_seq_len": max_context, "get_max_context_len": max_context, "get_vocab_size": c.vocab_size,
                "get_n_layers": c.num_hidden_layers, "use_kv_cache": True, "use_sdpa_with_kv_cache": True,
                "enable_dynamic_shape": True, "get_eos_ids": c.eos_ids or [0]}
    if c.bos_token_id is not None:
        metadata["get_bos_id"] = c.bos_token_id
    try:
        with torch.no_grad():
            program = torch.export.export(module, example, dynamic_shapes=({1: seq}, None), strict=True)
        partitioners = [XnnpackPartitioner()] if backend == "xnnpack" else []
        compile_config = EdgeCompileConfig(_check_ir_validity=False) if quantized else None  # torchao's affine ops
        edge = to_edge_transform_and_lower(program, partitioner=partitioners, constant_methods=metadata,
                                           compile_config=compile_config)
        passes = [QuantFusionPass()] if quantized else []
        et = edge.to_executorch(ExecutorchBackendConfig(passes=[*passes, InitializedMutableBufferPass(["cache"])],
                                                        do_quant_fusion_and_const_prop=quantized))
    except Exception as e:  # noqa: BLE001 -- any exporter failure is reported as one line
        raise ExportError(f"ExecuTorch export of the language model failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    write_atomic(path, lambda tmp: tmp.write_bytes(et.buffer))
    return {"methods": {"forward": {"inputs": ["tokens [1, S] int64", "input_pos [1] int64"],
                                    "outputs": ["logits [1, S, vocab] float32"], "max_tokens_per_call": max_context}},
            "constant_methods": metadata,
            "cache": _layout(decoder, max_context, strategy="mutable buffers (llama::update_cache, custom_sdpa)",
                             shape=list(cache_shape(decoder, max_context)), layout="[batch, position, kv_head, dim]")}


def onnx(decoder: Decoder, path: Path, max_context: int) -> dict[str, Any]:
    """Explicit ``past_key_values.N.key/value`` in, ``present.N.key/value`` out, past length dynamic (min 0)."""
    from torch.export import Dim

    module = OnnxLM(decoder, max_context).eval()
    c = decoder.config
    inputs, outputs = onnx_names(c.num_hidden_layers)
    past = tuple(torch.randn(1, c.num_key_value_heads, 3, c.head_dim) for _ in inputs[1:])
    example = (torch.zeros(1, 2, dtype=torch.long), *past)
    seq, past_len = Dim("sequence", min=1, max=max_context), Dim("past_sequence", min=0, max=max_context - 1)
    shapes = ({1: seq}, tuple({2: past_len} for _ in past))  # forward(input_ids, *past)
    try:
        with torch.no_grad():
            program = torch.onnx.export(module, example, input_names=inputs, output_names=outputs,
                                        dynamic_shapes=shapes, dynamo=True, optimize=True, verbose=False)
        write_atomic(path, lambda tmp: program.save(str(tmp)))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ONNX export of the language model failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return {"inputs": inputs, "outputs": outputs,
            "cache": _layout(decoder, max_context, strategy="explicit past/present tensors, growing",
                             shape=[1, c.num_key_value_heads, "past", c.head_dim],
                             layout="[batch, kv_head, position, dim]")}


def litert(decoder: Decoder, path: Path, max_context: int, prefill: int) -> dict[str, Any]:
    """Signatures ``prefill`` (``prefill`` tokens) and ``decode`` (1 token) over a fixed-size explicit cache."""
    import litert_torch

    if not 1 <= prefill <= max_context:
        raise ExportError(f"prefill length {prefill} must be in 1..{max_context} (the max context)")
    module = LiteRtLM(decoder, max_context).eval()
    shape = cache_shape(decoder, max_context)
    # distinct example tensors for every cache: the converter aliases identical ones (decode then reads V as K)
    caches = {name: torch.randn(shape) for name in module.names}

    def kwargs(n: int) -> dict[str, torch.Tensor]:
        return {"tokens": torch.zeros(1, n, dtype=torch.long), "input_pos": torch.arange(n), **caches}

    try:
        with torch.no_grad():
            converted = (litert_torch.signature("prefill", module, sample_kwargs=kwargs(prefill))
                         .signature("decode", module, sample_kwargs=kwargs(1)).convert())
        write_atomic(path, lambda tmp: converted.export(str(tmp)))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"LiteRT export of the language model failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return {"signatures": {"prefill": {"tokens": prefill}, "decode": {"tokens": 1}},
            "inputs": ["tokens", "input_pos", *module.names], "outputs": ["logits", *module.names],
            "cache": _layout(decoder, max_context, strategy="explicit fixed-size tensors, in and out",
                             shape=list(shape), layout="[batch, position, kv_head, dim]", prefill=prefill)}


EXPORTS = {"executorch": executorch, "onnx": onnx, "tflite": litert}
PATHS = {"executorch": ("xnnpack",), "onnx": ("cpu",), "tflite": ("xnnpack",)}  # format -> backends built here
