"""Text to model inputs with a bundle's or a model folder's ``tokenizer.json`` (Hugging Face ``tokenizers``).
No torch here: an app embedding text with a bundle needs only tokenizers, numpy and the bundle's runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import ProjectError

TOKENIZER = "tokenizer.json"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def check_input_names(names: list[str], folder: Path) -> None:
    unknown = [n for n in names if n not in TOKEN_INPUTS]
    if unknown:
        raise ProjectError(f"[[inputs]] {unknown[0]!r} is not an input of a Hugging Face model from {folder}; "
                           f"name them from {', '.join(TOKEN_INPUTS)}")


def tokenize(folder: Path, texts: list[str], names: list[str], length: int,
             tokenizer_file: str = TOKENIZER) -> dict[str, np.ndarray]:
    """``texts`` as the model's inputs, padded / truncated to ``length`` tokens (int64 arrays, N x length)."""
    from tokenizers import Tokenizer

    check_input_names(names, folder)
    tok = Tokenizer.from_file(str(folder / tokenizer_file))
    if tok.padding and tok.padding.get("pad_id") is not None:  # the tokenizer's own padding token wins
        pad_id = tok.padding["pad_id"]
    else:
        pad_id = tok.token_to_id("[PAD]") if tok.token_to_id("[PAD]") is not None else 0
    tok.enable_truncation(max_length=length)
    tok.enable_padding(length=length, pad_id=pad_id)
    encodings = tok.encode_batch([str(t) for t in texts])
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    return {n: np.array([getattr(e, fields[n]) for e in encodings], dtype=np.int64) for n in names}
