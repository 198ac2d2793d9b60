"""One decoder-only language model definition -- the Llama architecture (RMSNorm, rotary positions,
grouped-query attention, SwiGLU MLP, optionally tied input/output embeddings) -- with Hugging Face's
``LlamaForCausalLM`` state-dict names, so a Llama-architecture folder (SmolLM2, TinyLlama, Llama 3 without
rope scaling) loads as it is and ``examples/tiny_lm`` trains the same module.

Attention is one call, ``attend(layer, q, k, v)`` on ``[B, S, heads, head_dim]`` tensors with the rotary
positions already applied: the plain causal form here is what training and the PyTorch reference use; each
export format supplies its own cache strategy in :mod:`edgekit.lm.cache`, around the same weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.errors import ProjectError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)  # what [model] hf = DIR may name for a language model


@dataclass(frozen=True)
class DecoderConfig:
    """Hugging Face's Llama config fields (the names of ``config.json``)."""

    vocab_size: int = 2048
    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 2  # grouped-query attention: heads / kv heads query heads share one K/V head
    intermediate_size: int = 512  # SwiGLU inner width
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 0
    head_dim: int | None = None  # None: hidden_size / heads; set when heads were pruned (edgekit.lm.prune)

    def __post_init__(self) -> None:
        h, kv = self.num_attention_heads, self.num_key_value_heads
        if self.head_dim is None:
            if self.hidden_size % h:
                raise ValueError(f"hidden_size {self.hidden_size} must split into {h} heads")
            object.__setattr__(self, "head_dim", self.hidden_size // h)
        if h % kv or self.head_dim % 2:
            raise ValueError(f"{h} heads of size {self.head_dim} must be of even size and split into {kv} key/value "
                             "groups")

    @property
    def eos_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else [e] if isinstance(e, int) else list(e)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["head_dim"] * self.num_attention_heads == self.hidden_size:  # implied: left out, as Llama configs do
            del d["head_dim"]
        return d

    def to_hf(self) -> dict:
        """``config.json`` for transformers' ``LlamaForCausalLM``."""
        return {**self.to_dict(), "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
                "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}

    @classmethod
    def from_hf(cls, config: dict, where: str = "config.json") -> DecoderConfig:
        """From a Hugging Face ``config.json``; ProjectError naming what is not the plain Llama architecture."""
        arch = config.get("architectures") or [config.get("model_type", "?")]
        if arch[0] not in SUPPORTED_ARCHITECTURES:
            raise ProjectError(f"{where}: architecture {arch[0]} is not supported for language models; edgekit "
                              f"supports {', '.join(SUPPORTED_ARCHITECTURES)}")
        rope = dict(config.get("rope_parameters") or {})  # transformers 5 keeps rope_theta here
        if rope.get("rope_type", "default") != "default":
            raise ProjectError(f"{where}: rope_type {rope['rope_type']!r} is not supported (edgekit's Llama has "
                               "plain rotary positions, rope_type 'default')")
        if "rope_theta" in rope:
            config = {**config, "rope_theta": rope["rope_theta"]}
        for key in ("rope_scaling", "attention_bias", "mlp_bias"):
            if config.get(key):
                raise ProjectError(f"{where}: {key} = {config[key]!r} is not supported by edgekit's Llama")
        if config.get("hidden_act", "silu") != "silu":
            raise ProjectError(f"{where}: hidden_act = {config['hidden_act']!r} is not supported (edgekit's Llama "
                              "uses silu)")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in config.items() if k in known}
        values.setdefault("num_key_value_heads", config["num_attention_heads"])
        values.setdefault("tie_word_embeddings", False)  # transformers' default for Llama
        try:
            return cls(**values)
        except ValueError as e:
            raise ProjectError(f"{where}: {e}") from None


def rope_tables(c: DecoderConfig, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[length, head_dim / 2]`` of the rotary positions (Llama's: halves, not interleaved)."""
    inv = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (first half, second half) pairs of the head dimension of ``x [B, S, H, D]``; cos/sin ``[S, D/2]``."""
    a, b = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def causal_attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain causal attention over the tokens of this call (no cache): training and the reference."""
    return sdpa(q, k, v, None, causal=True)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
         causal: bool = False) -> torch.Tensor:
    """Attention of ``q [B, S, H, D]`` over ``k, v [B, T, Hkv, D]`` (grouped heads repeated): ``[B, S, H, D]``."""
    group = q.shape[2] // k.shape[2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal).transpose(1, 2)


def grouped_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`sdpa` without repeating the grouped K/V heads: the ``group`` query heads that share a K/V head
    become rows of one matmul per K/V head (``mask [S, T]``, additive). The same numbers, without copying
    the whole cache per layer and step: in LiteRT the repeat is a BROADCAST_TO outside XNNPACK (SmolLM2's
    shape, 2 layers, 512 positions: a decode step 29.4 ms with it, 6.7 ms without), in ONNX Runtime an
    Expand (4 layers, 256 past positions: 16.5 ms, 8.3 ms without)."""
    b, s, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    q = q.reshape(b, s, kv, g, d).permute(0, 2, 3, 1, 4).reshape(b, kv, g * s, d)  # head kv * g + j -> K/V head kv
    scores = torch.matmul(q, k.permute(0, 2, 3, 1)) * d**-0.5 + mask.repeat(g, 1)
    out = torch.matmul(torch.softmax(scores, dim=-1), v.transpose(1, 2))
    return out.reshape(b, kv, g, s, d).permute(0, 3, 1, 2, 4).reshape(b, s, h, d)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend, layer: int):
        c, (b, s, _) = self.c, x.shape
        q = apply_rope(self.q_proj(x).view(b, s, c.num_attention_heads, c.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(b, s, c.num_key_value_heads, c.head_dim), cos, sin)
        v = self.v_proj(x).view(b, s, c.num_key_value_heads, c.head_dim)
        return self.o_proj(attend(layer, q, k, v).reshape(b, s, c.num_attention_heads * c.head_dim))


class MLP(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.input_layernorm, self.self_attn = RMSNorm(c.hidden_size, c.rms_norm_eps), Attention(c)
        self.post_attention_layernorm, self.mlp = RMSNorm(c.hidden_size, c.rms_norm_eps), MLP(c)

    def forward(self, x, cos, sin, attend: Attend, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attend, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, c: DecoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class Decoder(nn.Module):
    """``forward(tokens [B, S] int64) -> logits [B, S, vocab]``, causal, for the first S positions."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.model = Body(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(config, config.max_position_embeddings)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02), the residual outputs scaled by 1/sqrt(2 * layers)."""
        for name, p in self.named_parameters():
            if p.dim() == 2:
                residual = name.endswith(("o_proj.weight", "down_proj.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.config.num_hidden_layers) if residual else 0.02)

    def run(self, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Logits of ``tokens`` at the positions whose rotary tables are ``cos, sin [S, head_dim / 2]``."""
        x = self.model.embed_tokens(tokens)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, attend, i)
        return self.lm_head(self.model.norm(x))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        if s > self.config.max_position_embeddings:
            raise ValueError(f"{s} tokens, more than the model's maximum context of "
                             f"{self.config.max_position_embeddings}")
        return self.run(tokens, self.rope_cos[:s], self.rope_sin[:s], causal_attend)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under transformers' names (a tied output layer once, as ``save_pretrained`` writes it)."""
        sd = {k: v.contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight")
        return sd

    def load_hf_state_dict(self, sd: dict[str, torch.Tensor], where: str = "weights") -> None:
        own = self.state_dict()
        expected = set(own) - ({"lm_head.weight"} if self.config.tie_word_embeddings else set())
        got = set(sd) - {"lm_head.weight"} if self.config.tie_word_embeddings else set(sd)
        missing, extra = sorted(expected - got), sorted(got - expected)
        if missing or extra:
            raise ProjectError(f"{where}: not this Llama's weights (missing {missing[:3]}, unexpected {extra[:3]})")
        for k in sorted(expected):
            if tuple(sd[k].shape) != tuple(own[k].shape):
                raise ProjectError(f"{where}: {k} has shape {list(sd[k].shape)}, the config says {list(own[k].shape)}")
        self.load_state_dict({k: sd[k] for k in expected}, strict=False)


def load_folder(folder: str | Path) -> Decoder:
    """A Hugging Face Llama folder (``config.json`` + ``*.safetensors``) as a :class:`Decoder`, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ProjectError(f"{folder}: no config.json; a language model folder is what save_pretrained writes")
    try:
        config = DecoderConfig.from_hf(json.loads(config_path.read_text()), str(config_path))
    except (ValueError, KeyError, TypeError) as e:
        raise ProjectError(f"{config_path}: {e}") from None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ProjectError(f"{folder}: no *.safetensors weights")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    model = Decoder(config)
    model.load_hf_state_dict({k: v.float() for k, v in sd.items()}, str(folder))
    return model.eval()


def save_folder(model: Decoder, folder: str | Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` (what transformers' ``LlamaForCausalLM`` loads)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.hf_state_dict(), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2) + "\n")


def as_decoder(model: object, what: str) -> Decoder:
    """``model`` as edgekit's :class:`Decoder`: itself, or a transformers ``LlamaForCausalLM`` (its config and
    weights, copied); anything else is refused by name."""
    if isinstance(model, Decoder):
        return model.eval()
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "state_dict"):
        raise ProjectError(f"{what} returned {type(model).__name__}; a language model is edgekit.lm.Decoder or a "
                           f"transformers model of architecture {' / '.join(SUPPORTED_ARCHITECTURES)}")
    hf = config.to_dict()
    hf["architectures"] = hf.get("architectures") or [type(model).__name__]
    decoder = Decoder(DecoderConfig.from_hf(hf, what))
    decoder.load_hf_state_dict(dict(model.state_dict()), what)
    return decoder.eval()
