"""Embedding distillation: a smaller encoder trained to give the teacher's sentence embeddings.

The student is usually the teacher with fewer layers, each initialised from one of the teacher's
(:func:`edgekit.hf.keep_layers`, the DistilBERT / TinyBERT starting point), trained on the train split's
inputs (no labels: the teacher's embedding is the target) with a registered embedding loss
(``cosine``: ``1 - cos(e_s, e_t)``, or ``mse``). The teacher's embeddings of every split are computed
once (the inputs never change between epochs). Each epoch ends with the student's cosine to the
teacher on the ``calib`` split, and the best epoch by that figure is kept; the reported figures are on
``eval`` (cosine mean and minimum to the teacher, and retrieval agreement: is each eval sentence's
nearest neighbour the teacher's), beside the same figures for the student before training.

>>> # result = distill_embeddings(keep_layers(teacher, (0, 2, 4)), teacher, splits, ["input_ids",
>>> #                             "attention_mask"], loss="cosine", epochs=4)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.distill import DistillError
from edgekit.distill.api import DistillResult, write_outputs
from edgekit.distill.losses import EMBEDDING_LOSSES, make_loss
from edgekit.distill.trainer import (
    ProgressFn,
    TrainConfig,
    ensure_eval,
    fingerprint,
    fit,
    resolve_device,
)


@torch.no_grad()
def embed(model: nn.Module, inputs: Sequence[torch.Tensor], device: torch.device, chunk: int = 64) -> torch.Tensor:
    """``model``'s outputs for positional ``inputs`` (batch first), ``chunk`` samples at a time, on the CPU."""
    was_training = model.training
    model.eval()
    parts = [model(*(t[i:i + chunk].to(device) for t in inputs)).float().cpu()
             for i in range(0, len(inputs[0]), chunk)]
    model.train(was_training)
    return torch.cat(parts)


def agreement(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """Cosine mean and minimum to the teacher, and retrieval agreement (the embedding task's own measures)."""
    from edgekit_runner.tasks.embedding import EMBEDDING

    m = EMBEDDING.score({"e": student.numpy()}, {}, {"e": teacher.numpy()})
    return {k: float(m[k]) for k in ("cosine_mean", "cosine_min", "retrieval_agreement")}


def distill_embeddings(student: nn.Module, teacher: nn.Module, splits: dict[str, Any], input_names: list[str],
                       loss: str = "cosine", epochs: int = 4, batch_size: int = 32, lr: float = 5e-4,
                       weight_decay: float = 1e-2, schedule: str = "cosine", patience: int | None = None,
                       seed: int = 0, device: str = "auto", train_split: str = "train", eval_split: str = "eval",
                       select_split: str = "calib", out_dir: Path | None = None, resume: bool = False,
                       on_progress: ProgressFn | None = None) -> DistillResult:
    """Train ``student`` (in place) to reproduce ``teacher``'s embeddings on ``splits[train_split]``
    (``Split`` objects whose ``inputs`` hold ``input_names``). Returns the best epoch's student (chosen by
    cosine mean on ``select_split``) with its figures against the teacher on ``eval_split`` in
    ``metrics["student"]`` (and before training in ``metrics["initial_student"]``)."""
    from edgekit.distill.api import CHECKPOINTS

    t0 = time.perf_counter()
    if loss not in EMBEDDING_LOSSES:
        raise DistillError(f"an embedding student learns with loss {' or '.join(EMBEDDING_LOSSES)}, not {loss!r}")
    for name in (train_split, eval_split, select_split):
        if name not in splits:
            raise DistillError(f"no data split {name!r}; splits are {', '.join(splits)}")
    if resume and (out_dir is None or not (Path(out_dir) / CHECKPOINTS["distill"]).is_file()):
        raise DistillError(f"nothing to resume: no checkpoint in {out_dir}; run without --resume first")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                         patience=patience, seed=seed, device=device)
    objective = make_loss({"name": loss})
    device_ = resolve_device(device)
    ensure_eval(teacher)
    teacher.to(device_)
    student.to(device_)

    def tensors(split: str) -> list[torch.Tensor]:
        named = splits[split].inputs
        missing = [n for n in input_names if n not in named]
        if missing:
            raise DistillError(f"the {split} split has no input {missing[0]!r}; it has {', '.join(named) or 'none'}")
        return [torch.from_numpy(np.ascontiguousarray(named[n])) for n in input_names]

    data = {s: tensors(s) for s in dict.fromkeys((train_split, select_split, eval_split))}
    targets = {s: embed(teacher, t, device_) for s, t in data.items()}  # the teacher once per split
    objective(embed(student, [t[:2] for t in data[eval_split]], device_), targets[eval_split][:2])  # shapes agree
    initial = agreement(embed(student, data[eval_split], device_), targets[eval_split])
    train, target = data[train_split], targets[train_split].to(device_)

    def step(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return objective(student(*(t[index].to(device_) for t in train)), target[index.to(device_)])

    def on_select(model: nn.Module) -> dict[str, float]:
        m = agreement(embed(model, data[select_split], device_), targets[select_split])
        return {"eval_score": m["cosine_mean"], **{f"eval_{k}": v for k, v in m.items()}}

    index = torch.arange(len(train[0]))
    recipe = {"method": loss, "loss": objective.to_config(), "input_names": list(input_names)}
    result = fit({"student": student}, step, (index, index), config, evaluate=on_select, stage="distill",
                 on_progress=on_progress, recipe=recipe, resume=resume,
                 checkpoint=Path(out_dir) / CHECKPOINTS["distill"] if out_dir is not None else None)
    final = agreement(embed(student, data[eval_split], device_), targets[eval_split])
    metrics = {
        "method": loss, **recipe, "task": "embedding", "config": asdict(config), "train_split": train_split,
        "eval_split": eval_split, "select_split": select_split, "n_train": len(index),
        "n_eval": len(targets[eval_split]), "n_select": len(targets[select_split]), "device": str(device_),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_fingerprint": fingerprint({"student": student}),
        "history": result.history, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from, "initial_student": initial, "student": final,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    files = write_outputs(Path(out_dir), student, metrics) if out_dir is not None else []
    return DistillResult(student, metrics, result.best_epoch, None, None, files, teacher)
