"""The KV cache, one strategy per export format, each a thin module around the same :class:`Decoder`.

- :class:`ExecuTorchLM` -- ``forward(tokens [1, S], input_pos [1]) -> logits [1, S, V]`` with dynamic S; the
  cache is mutable buffers ``[1, max_context, kv_heads, head_dim]`` written by ExecuTorch's own
  ``llama::update_cache`` and read by ``llama::custom_sdpa`` (the ops ExecuTorch's Llama export uses), so
  the program holds its state between calls as ExecuTorch's LLM runner expects.
- :class:`OnnxLM` -- ``forward(input_ids [1, S], past_key_values.N.key/value [1, kv_heads, P, head_dim])
  -> logits, present.N.key/value [1, kv_heads, P + S, head_dim]``: the cache goes in and out explicitly, its
  length dynamic (0 for the prompt), under the names ONNX Runtime GenAI uses.
- :class:`LiteRtLM` -- ``forward(tokens [1, S], input_pos [S], k_cache_N / v_cache_N [1, max_context,
  kv_heads, head_dim]) -> logits, updated caches``: a fixed-size cache passed explicitly (LiteRT has no
  mutable state), exported as two signatures, ``prefill`` (S = the prefill length) and ``decode`` (S = 1).

All three give the logits of every position of the call, so perplexity can be computed through the export.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.lm.model import Decoder, grouped_sdpa


def _check_context(decoder: Decoder, max_context: int) -> None:
    if not 1 < max_context <= decoder.config.max_position_embeddings:
        raise ValueError(f"max context {max_context} must be in 2..{decoder.config.max_position_embeddings} "
                         "(the model's max_position_embeddings)")


def cache_shape(decoder: Decoder, max_context: int) -> tuple[int, int, int, int]:
    c = decoder.config
    return (1, max_context, c.num_key_value_heads, c.head_dim)


class _Buffers(nn.Module):
    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)


class ExecuTorchLM(nn.Module):
    def __init__(self, decoder: Decoder, max_context: int):
        super().__init__()
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  registers llama::* ops

        _check_context(decoder, max_context)
        self.decoder, self.max_context = decoder, max_context
        self.caches = nn.ModuleList(_Buffers(cache_shape(decoder, max_context))
                                    for _ in range(decoder.config.num_hidden_layers))

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start + s <= self.max_context)
        cos = self.decoder.rope_cos.narrow(0, start, s)
        sin = self.decoder.rope_sin.narrow(0, start, s)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            cache = self.caches[i]
            torch.ops.llama.update_cache(k, cache.k_cache, start)
            torch.ops.llama.update_cache(v, cache.v_cache, start)
            return torch.ops.llama.custom_sdpa(q, cache.k_cache, cache.v_cache, start, None, 0, True)

        return self.decoder.run(tokens, cos, sin, attend)


def onnx_names(n_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of :class:`OnnxLM`, as ONNX Runtime GenAI names them."""
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    return ["input_ids", *past], ["logits", *present]


class OnnxLM(nn.Module):
    def __init__(self, decoder: Decoder, max_context: int):
        super().__init__()
        _check_context(decoder, max_context)
        self.decoder, self.max_context = decoder, max_context

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s, p = input_ids.shape[1], past[0].shape[2]
        cos, sin = self.decoder.rope_cos[p:p + s], self.decoder.rope_sin[p:p + s]
        # query i (at position p + i) sees keys 0..p + i
        mask = torch.where(torch.arange(p + s)[None, :] <= (torch.arange(s) + p)[:, None], 0.0, float("-inf"))
        present: list[torch.Tensor] = []

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k_all = torch.cat([past[2 * i], k.transpose(1, 2)], dim=2)
            v_all = torch.cat([past[2 * i + 1], v.transpose(1, 2)], dim=2)
            present.extend((k_all, v_all))
            return grouped_sdpa(q, k_all.transpose(1, 2), v_all.transpose(1, 2), mask)

        logits = self.decoder.run(input_ids, cos, sin, attend)
        return (logits, *present)


def litert_names(n_layers: int) -> list[str]:
    return [f"{kv}_cache_{i}" for i in range(n_layers) for kv in ("k", "v")]


class LiteRtLM(nn.Module):
    def __init__(self, decoder: Decoder, max_context: int):
        super().__init__()
        _check_context(decoder, max_context)
        self.decoder, self.max_context = decoder, max_context
        self.names = litert_names(decoder.config.num_hidden_layers)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, **caches: torch.Tensor):
        cos = self.decoder.rope_cos.index_select(0, input_pos)
        sin = self.decoder.rope_sin.index_select(0, input_pos)
        allowed = torch.arange(self.max_context)[None, :] <= input_pos[:, None]
        mask = torch.where(allowed, 0.0, float("-inf"))
        updated: dict[str, torch.Tensor] = {}

        # litert-torch's own cache update: TFLite's DYNAMIC_UPDATE_SLICE at the first position (input_pos is a
        # run of consecutive positions); index_copy lowers to STABLEHLO_SCATTER, a reference kernel (SmolLM2:
        # prefill 1.4x faster without it, decode unchanged)
        from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice

        zero = torch.zeros([], dtype=torch.int32)
        start = [zero, input_pos[0].to(torch.int32).reshape([]), zero, zero]

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kc = dynamic_update_slice(caches[f"k_cache_{i}"], k, start)
            vc = dynamic_update_slice(caches[f"v_cache_{i}"], v, start)
            updated[f"k_cache_{i}"], updated[f"v_cache_{i}"] = kc, vc
            return grouped_sdpa(q, kc, vc, mask)  # no repeated K/V heads (see grouped_sdpa)

        logits = self.decoder.run(tokens, cos, sin, attend)
        return {"logits": logits, **updated}
