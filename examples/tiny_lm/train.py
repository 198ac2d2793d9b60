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
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
from model import STUDENT, TEACHER  # noqa: E402

from edgekit.lm.model import Decoder, DecoderConfig  # noqa: E402

SEQ_LEN = 128
RECIPES = {"teacher": (TEACHER, {"epochs": 40, "lr": 3e-3, "batch_size": 16, "seed": 0}),
           "student": (STUDENT, {"epochs": 30, "lr": 3e-3, "batch_size": 16, "seed": 0})}


def weights_path(name: str) -> Path:
    config, settings = RECIPES[name]
    key = json.dumps({"config": config.to_dict(), "settings": settings, "seq_len": SEQ_LEN,
                      "tokenizer": hashlib.sha256(data.TOKENIZER.read_bytes()).hexdigest()}, sort_keys=True)
    from edgekit.hf import cache_dir

    return cache_dir() / "tiny_lm" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def next_token_loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over every position of ``windows [B, S + 1]``."""
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: np.ndarray, batch: int = 32) -> float:
    """exp(mean next-token cross-entropy) over every predicted token of the split."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    w = torch.from_numpy(windows)
    for i in range(0, len(w), batch):
        chunk = w[i:i + batch]
        total += next_token_loss(model, chunk).item() * chunk[:, 1:].numel()
        count += chunk[:, 1:].numel()
    model.train(was)
    return math.exp(total / count)


def train(config: DecoderConfig, splits: dict[str, dict[str, np.ndarray]], epochs: int, lr: float, batch_size: int,
          seed: int, say=print, teacher: torch.nn.Module | None = None, temperature: float = 2.0,
          alpha: float = 0.5) -> tuple[Decoder, dict]:
    """AdamW + cosine (edgekit's training loop); the best epoch by calib perplexity. With ``teacher``: token-level
    Hinton KD (edgekit's loss, per token) against its next-token distributions."""
    from edgekit.distill.losses import HintonKD
    from edgekit.distill.trainer import TrainConfig, fit

    torch.manual_seed(seed)
    model = Decoder(config)
    x = torch.from_numpy(splits["train"]["tokens"])
    kd = HintonKD(temperature, alpha) if teacher is not None else None

    def step(xb: torch.Tensor, yb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if kd is None:
            return next_token_loss(model, xb)
        with torch.no_grad():
            target = teacher(xb[:, :-1])
        return kd(model(xb[:, :-1]), target, xb[:, 1:])

    def on_calib(m: torch.nn.Module) -> dict[str, float]:
        ppl = perplexity(m, splits["calib"]["tokens"])
        return {"eval_score": -ppl, "calib_perplexity": ppl}

    def progress(p) -> None:
        if p.event == "epoch":
            say(f"  epoch {p.epoch}/{p.epochs}  train loss {p.loss:.3f}  calib perplexity "
                f"{p.metrics['calib_perplexity']:.2f}")

    result = fit({"student": model}, step, (x, torch.arange(len(x))),
                 TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.1, seed=seed, device="cpu"),
                 evaluate=on_calib, stage="train", on_progress=progress)
    report = {"best_epoch": result.best_epoch, "eval_perplexity": perplexity(model, splits["eval"]["tokens"]),
              "parameters": sum(p.numel() for p in model.parameters())}
    return model, report


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
