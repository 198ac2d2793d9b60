"""Train examples/tiny_lm's teacher and student (alone, on the labels) and cache their weights; reproducible:
the same Python, torch and seed give the same weights. The best epoch is chosen by perplexity on calib;
perplexity on eval is reported.

    .venv/bin/python examples/tiny_lm/train.py [--tokenizer] [--epochs N]

``--tokenizer`` retrains ``tokenizer.json`` first (identical unless the text or ``tokenizers`` changed).
Weights go to ``$EDGEKIT_CACHE/tiny_lm/`` (default ``~/.cache/edgekit``), named by a hash of everything that
decides them (model config, tokenizer, training settings), so a changed recipe never reads stale weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
from model import RECIPES, SEQ_LEN, weights_path  # noqa: E402,F401 (the recipes live beside the configs)

from edgekit.lm import distill  # noqa: E402
from edgekit.lm.model import Decoder, DecoderConfig  # noqa: E402

def perplexity(model: torch.nn.Module, windows: np.ndarray) -> float:
    """exp(mean next-token cross-entropy) over every predicted token of the windows."""
    return distill.perplexity(model, windows)


def train(config: DecoderConfig, splits: dict[str, dict[str, np.ndarray]], epochs: int, lr: float, batch_size: int,
          seed: int, say=print, teacher: torch.nn.Module | None = None, temperature: float = 2.0,
          alpha: float = 0.5, top_k: int | None = distill.DEFAULT_TOP_K) -> tuple[Decoder, dict]:
    """A fresh ``config`` decoder trained with edgekit's LM loop (:func:`edgekit.lm.distill.train`: AdamW +
    cosine, the best epoch by calib perplexity). With ``teacher``: token-level Hinton KD against its top-k
    next-token logits (``top_k=None``: all of them)."""
    torch.manual_seed(seed)
    model = Decoder(config)
    return distill.train(model, {k: v["tokens"] for k, v in splits.items()}, epochs=epochs, lr=lr,
                         batch_size=batch_size, seed=seed, teacher=teacher, temperature=temperature, alpha=alpha,
                         top_k=top_k, say=lambda msg: say(f"  {msg}"))


def save(model: Decoder, path: Path, report: dict) -> None:
    """The weights under transformers' names (a tied output layer once), atomically, the report as metadata."""
    from safetensors.torch import save_file

    from edgekit.fsutil import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = model.hf_state_dict()
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"report": json.dumps(report)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", action="store_true", help="retrain tokenizer.json first")
    ap.add_argument("--only", choices=sorted(RECIPES), help="train one model")
    args = ap.parse_args()
    if args.tokenizer:
        data.train_tokenizer(data.paragraphs()["train"]).save(str(data.TOKENIZER))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    splits = data.load_splits(SEQ_LEN)
    for name in [args.only] if args.only else RECIPES:
        config, settings = RECIPES[name]
        path = weights_path(name)
        print(f"{name}: {config.to_dict()}")
        model, report = train(config, splits, **settings)
        save(model, path, report)
        print(f"{name}: {report['parameters']:,} parameters, eval perplexity {report['eval_perplexity']:.2f} "
              f"(best epoch {report['best_epoch']}) -> {path}")


if __name__ == "__main__":
    main()
