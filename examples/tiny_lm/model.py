"""examples/tiny_lm's two sizes of edgekit's decoder (:mod:`edgekit.lm.model`, the Llama architecture: RMSNorm,
rotary positions, grouped-query attention, a SwiGLU MLP, tied input/output embeddings).

``TEACHER`` and ``STUDENT`` are their configs, ``RECIPES`` how ``train.py`` trains them (reproducibly);
``teacher()`` / ``student()`` load the trained weights from the cache, where :func:`weights_path` says.
``model(tokens [B, S])`` returns the next-token logits ``[B, S, vocab]`` of every position.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from edgekit.lm.model import Decoder, DecoderConfig

TEACHER = DecoderConfig(vocab_size=2048, hidden_size=192, num_hidden_layers=4, num_attention_heads=6,
                        num_key_value_heads=2, intermediate_size=512, max_position_embeddings=256, eos_token_id=0)
STUDENT = DecoderConfig(vocab_size=2048, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=256, max_position_embeddings=256, eos_token_id=0)
SEQ_LEN = 128
RECIPES = {"teacher": (TEACHER, {"epochs": 20, "lr": 1e-3, "batch_size": 16, "seed": 0}),
           "student": (STUDENT, {"epochs": 30, "lr": 3e-3, "batch_size": 16, "seed": 0})}
TOKENIZER = Path(__file__).resolve().with_name("tokenizer.json")


def weights_path(name: str) -> Path:
    """Where train.py caches ``name``'s weights: named by a hash of everything that decides them."""
    from edgekit.fsutil import cache_dir

    config, settings = RECIPES[name]
    key = json.dumps({"config": config.to_dict(), "settings": settings, "seq_len": SEQ_LEN,
                      "tokenizer": hashlib.sha256(TOKENIZER.read_bytes()).hexdigest()}, sort_keys=True)
    return cache_dir() / "tiny_lm" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def _cached(config: DecoderConfig, name: str) -> Decoder:
    from safetensors.torch import load_file

    path = weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no trained {name} at {path}; run `make tiny-lm` once (minutes on 2 cores; the "
                                "result is cached)")
    model = Decoder(config)
    model.load_hf_state_dict(load_file(str(path)), str(path))
    return model.eval()


def teacher() -> Decoder:
    return _cached(TEACHER, "teacher")


def student() -> Decoder:
    return _cached(STUDENT, "student")


def untrained_student() -> Decoder:
    torch.manual_seed(0)
    return Decoder(STUDENT)
