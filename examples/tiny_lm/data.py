"""Python's own documentation (``pydoc_data.topics``) as language-model text, in a fixed split, and the
byte-level BPE tokenizer trained on its train split (``tokenizer.json`` here; ``train.py --tokenizer``
rebuilds it, identically).

Every topic's text is cut into paragraphs (blank-line separated, whitespace runs kept as they are inside
a paragraph: code keeps its indentation), each kept once. Paragraph i, in the order of the sorted topic names, goes to eval
if i % 10 == 0, to calib if i % 10 == 1, to train otherwise. A split's token stream is its paragraphs
tokenized and joined with the end-of-text token. No randomness: the same Python gives the same split.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE / "tokenizer.json"
VOCAB_SIZE = 2048
EOS = "<|endoftext|>"


def paragraphs() -> dict[str, list[str]]:
    from pydoc_data.topics import topics

    every = list(dict.fromkeys(p.strip("\n") for name in sorted(topics) for p in re.split(r"\n\s*\n", topics[name])
                               if p.strip()))  # once each: a paragraph repeated in two topics is in one split
    return {"eval": every[0::10], "calib": every[1::10], "train": [p for i, p in enumerate(every) if i % 10 > 1]}


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> object:
    """Byte-level BPE (GPT-2's scheme: no unknown token), ``EOS`` as token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer() -> object:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TOKENIZER))


def token_stream(texts: list[str], tokenizer: object | None = None) -> np.ndarray:
    """The paragraphs tokenized, each followed by the end-of-text token: one int64 array."""
    tok = tokenizer or load_tokenizer()
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids += enc.ids + [eos]
    return np.asarray(ids, dtype=np.int64)


def windows(stream: np.ndarray, length: int) -> np.ndarray:
    """Non-overlapping windows of ``length + 1`` tokens (inputs and their next tokens), ``[N, length + 1]``."""
    n = (len(stream) - 1) // length
    return np.stack([stream[i * length: i * length + length + 1] for i in range(n)])


def load_splits(length: int = 128) -> dict[str, dict[str, np.ndarray]]:
    """The splits as ``tokens`` windows ``[N, length + 1]`` (the model reads ``[:, :-1]``, predicts ``[:, 1:]``)."""
    return {name: {"tokens": windows(token_stream(texts), length)} for name, texts in paragraphs().items()}


def load_eval_splits() -> dict[str, dict[str, np.ndarray]]:
    """The splits as edgekit.toml's data entry declares them: windows of 128 tokens and their next ones."""
    return load_splits(128)
