"""A small decoder-only transformer family, the shape of today's small LMs (Llama, SmolLM2): RMSNorm,
rotary positions, grouped-query attention, a SwiGLU MLP, tied input/output embeddings, causal.

``TinyLM(config)(tokens)`` returns next-token logits ``[B, S, V]`` for every position. ``TEACHER`` and
``STUDENT`` are the two sizes of ``examples/tiny_lm``; ``teacher()`` / ``student()`` load their trained
weights from the cache (``train.py`` trains them, reproducibly, and writes them there).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int = 2048
    dim: int = 192
    n_layers: int = 4
    n_heads: int = 6
    n_kv_heads: int = 2  # grouped-query attention: n_heads / n_kv_heads query heads share one K/V head
    hidden_dim: int = 512  # SwiGLU inner width
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.n_heads} heads of even size, and the heads into "
                             f"{self.n_kv_heads} key/value groups")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


TEACHER = LMConfig(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, hidden_dim=512)
STUDENT = LMConfig(dim=96, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=256)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def rope_tables(config: LMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[max_seq_len, head_dim / 2]`` of the rotary positions."""
    inv = 1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim)
    angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension of ``x [B, H, S, D]`` by position."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, c: LMConfig):
        super().__init__()
        self.c = c
        self.q = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        self.k = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.v = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.o = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c, (b, s, _) = self.c, x.shape
        q = self.q(x).view(b, s, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k(x).view(b, s, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v(x).view(b, s, c.n_kv_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = c.n_heads // c.n_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(out.transpose(1, 2).reshape(b, s, c.dim))


class SwiGLU(nn.Module):
    def __init__(self, c: LMConfig):
        super().__init__()
        self.gate = nn.Linear(c.dim, c.hidden_dim, bias=False)
        self.up = nn.Linear(c.dim, c.hidden_dim, bias=False)
        self.down = nn.Linear(c.hidden_dim, c.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, c: LMConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(c.dim, c.norm_eps), Attention(c)
        self.mlp_norm, self.mlp = RMSNorm(c.dim, c.norm_eps), SwiGLU(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    """Decoder-only LM; ``forward(tokens [B, S] int64) -> logits [B, S, vocab]`` (causal)."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02), the residual outputs scaled by 1/sqrt(2 * layers)."""
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * self.config.n_layers) if name.endswith(("o.weight", "down.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        if s > self.config.max_seq_len:
            raise ValueError(f"{s} tokens, more than the model's maximum context of {self.config.max_seq_len}")
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x) @ self.embed.weight.T  # tied output embedding


def _cached(config: LMConfig, name: str) -> TinyLM:
    from safetensors.torch import load_file

    from train import weights_path  # this folder's train.py: where it caches the trained weights

    path = weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no trained {name} at {path}; run `python examples/tiny_lm/train.py` once "
                                "(minutes on 2 cores; the result is cached)")
    model = TinyLM(config)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def teacher() -> TinyLM:
    return _cached(TEACHER, "teacher")


def student() -> TinyLM:
    return _cached(STUDENT, "student")


def untrained_student() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(STUDENT)
