"""examples/tiny_lm's two sizes of edgekit's decoder (:mod:`edgekit.lm.model`, the Llama architecture: RMSNorm,
rotary positions, grouped-query attention, a SwiGLU MLP, tied input/output embeddings).

``TEACHER`` and ``STUDENT`` are their configs; ``teacher()`` / ``student()`` load the trained weights from the
cache (``train.py`` trains them, reproducibly, and writes them there). ``model(tokens [B, S])`` returns the
next-token logits ``[B, S, vocab]`` of every position.
"""

from __future__ import annotations

import torch

from edgekit.lm.model import Decoder, DecoderConfig

TEACHER = DecoderConfig(vocab_size=2048, hidden_size=192, num_hidden_layers=4, num_attention_heads=6,
                        num_key_value_heads=2, intermediate_size=512, max_position_embeddings=256, eos_token_id=0)
STUDENT = DecoderConfig(vocab_size=2048, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=256, max_position_embeddings=256, eos_token_id=0)


def _cached(config: DecoderConfig, name: str) -> Decoder:
    from safetensors.torch import load_file

    from train import weights_path  # this folder's train.py: where it caches the trained weights

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
