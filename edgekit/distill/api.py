"""``distill()``: teacher -> student with Hinton KD and/or FitNet hints; what the CLI and the build call.

Methods:

- ``hinton``: one stage, the Hinton KD loss (``alpha * T^2 * KL + (1 - alpha) * CE``).
- ``fitnet``: hints only. ``hint_schedule="two-stage"`` (the paper's): stage 1 trains the student up to
  its guided layer(s), with the regressors, on the hint loss; stage 2 trains the whole student on CE.
  ``"joint"``: one stage minimising ``CE + hint loss``.
- ``fitnet+hinton``: as ``fitnet`` with the KD loss in place of CE (the FitNets paper's full recipe).
- ``ce``: the student alone on the labels, same loop and settings (the baseline; no teacher needed).

Teacher-logit cache (``cache_teacher=True``): the teacher's outputs (logits and hint features) on the
whole train split are computed once and looked up by sample index, as the classic recipe computes
soft labels once. Valid because this loop feeds the same inputs every epoch (only the order changes);
with input augmentation the teacher must see each augmented batch, so a cache would be wrong.

>>> # result = distill(student, teacher, splits, method="hinton", temperature=4, alpha=0.9, epochs=30,
>>> #                  out_dir=Path("build/distill"))
>>> # result.student_accuracy, result.teacher_accuracy, result.best_epoch
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.distill import DistillError
from edgekit.distill.hints import FeatureTap, Hint, HintLoss, parameters_up_to
from edgekit.distill.losses import CrossEntropy, HintonKD, check_logits
from edgekit.distill.trainer import (
    ProgressFn,
    TrainConfig,
    current_world,
    ensure_eval,
    evaluate_classifier,
    fingerprint,
    fit,
    resolve_device,
)
from edgekit.fsutil import write_atomic

METHODS = ("hinton", "fitnet", "fitnet+hinton", "ce")
STUDENT_FILE, METRICS_FILE = "student.safetensors", "metrics.json"
CHECKPOINTS = {"hints": "checkpoint-hints.safetensors", "distill": "checkpoint.safetensors"}


@dataclass
class DistillResult:
    student: nn.Module  # trained in place, best epoch's weights, eval mode
    metrics: dict[str, Any]  # JSON-able: settings, per-epoch history, best epoch, accuracies (metrics.json)
    best_epoch: int
    student_accuracy: float | None  # classifiers; an embedding student's figures are in metrics["student"]
    teacher_accuracy: float | None
    files: list[Path] = field(default_factory=list)
    teacher: nn.Module | None = None  # eval mode, on the training device


def fresh_student(model: nn.Module, seed: int) -> nn.Module:
    """An untrained copy of ``model``: every layer's ``reset_parameters()`` under ``seed``. Refused
    when a module holding parameters has no such method (declare an untrained student entry then)."""
    fresh = copy.deepcopy(model)
    stuck = [name or type(fresh).__name__ for name, m in fresh.named_modules()
             if any(True for _ in m.parameters(recurse=False)) and not hasattr(m, "reset_parameters")]
    if stuck:
        raise DistillError(f"cannot re-initialise the student: {', '.join(stuck[:3])} has parameters but no "
                           "reset_parameters(); give an entry point that returns the untrained student")
    torch.manual_seed(seed)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh.train()


class TeacherTargets:
    """The teacher's logits and hint features for a batch: computed on the batch, or looked up by sample
    index in a cache computed once over the train split."""

    def __init__(self, teacher: nn.Module, hint_paths: list[str], device: torch.device):
        self.teacher, self.paths, self.device = teacher, hint_paths, device
        self.cache: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def compute(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with FeatureTap(self.teacher, self.paths, "teacher") as tap:
            logits = self.teacher(x)
            return {"logits": logits, **tap.take()}

    def fill_cache(self, x: torch.Tensor, batch_size: int = 512) -> None:
        parts = [self.compute(chunk.to(self.device)) for chunk in x.split(batch_size)]
        self.cache = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cache is None:
            return self.compute(x)
        index = index.to(self.device)
        return {k: v[index] for k, v in self.cache.items()}


def distill(student: nn.Module, teacher: nn.Module | None, splits: dict[str, Any], method: str = "hinton",
            temperature: float = 4.0, alpha: float = 0.9, epochs: int = 30, batch_size: int = 64, lr: float = 3e-3,
            weight_decay: float = 1e-2, schedule: str = "cosine", patience: int | None = None, seed: int = 0,
            hints: Iterable[Hint | str] = (), hint_weight: float = 1.0, hint_epochs: int | None = None,
            hint_schedule: str = "two-stage", cache_teacher: bool = False, device: str = "auto",
            train_split: str = "train", eval_split: str = "eval", select_split: str | None = None,
            out_dir: Path | None = None, resume: bool = False, on_progress: ProgressFn | None = None) -> DistillResult:
    """Train ``student`` (in place) from ``teacher`` on ``splits[train_split]`` (objects with ``.x``/``.y``
    numpy arrays, as :func:`edgekit.project.load_data` returns). After every epoch the student is evaluated
    on ``splits[select_split]`` (default: ``eval_split``) to pick the best epoch and stop early; the final
    student and the teacher are measured on ``splits[eval_split]``. Choosing on a split other than the one
    reported (a project's ``calib`` split) keeps the reported accuracy unbiased. Labels equal to -100 in
    the train split are unlabeled samples: they learn from the teacher only. ``out_dir``: write
    ``student.safetensors`` (best weights), ``metrics.json`` and per-stage checkpoints there; ``resume``
    continues from those checkpoints. ``hint_epochs``: stage-1 epochs of the
    two-stage FitNet schedule (default: a third of ``epochs``, at least 1). The teacher is moved to the
    training device and put in eval mode (with a :class:`DistillWarning` if it was training)."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise DistillError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if hint_schedule not in ("two-stage", "joint"):
        raise DistillError(f"hint_schedule must be 'two-stage' or 'joint', got {hint_schedule!r}")
    if teacher is None and method != "ce":
        raise DistillError(f"method {method!r} needs a teacher; add a [teacher] entry to the project")
    select_split = select_split or eval_split
    for name in (train_split, eval_split, select_split):
        if name not in splits:
            raise DistillError(f"no data split {name!r}; splits are {', '.join(splits)}")
    if resume and (out_dir is None or not any((Path(out_dir) / f).is_file() for f in CHECKPOINTS.values())):
        raise DistillError(f"nothing to resume: no checkpoint in {out_dir}; run without --resume first")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                         patience=patience, seed=seed, device=device)
    logit_loss = HintonKD(temperature, alpha) if method in ("hinton", "fitnet+hinton") else CrossEntropy()
    hint_list = [h if isinstance(h, Hint) else replace(Hint.parse(h), weight=hint_weight) for h in hints]
    uses_hints = method.startswith("fitnet")
    if not uses_hints and hint_list:
        raise DistillError(f"hint layers are only used by the fitnet methods, not {method!r}")

    device_ = resolve_device(device)
    world = current_world()
    xtr, ytr = (torch.from_numpy(a) for a in (splits[train_split].x, splits[train_split].y))
    xev, yev = (torch.from_numpy(a) for a in (splits[eval_split].x, splits[eval_split].y))
    xsel, ysel = (torch.from_numpy(a) for a in (splits[select_split].x, splits[select_split].y))
    student.to(device_)
    sample = xtr[:2].to(device_)
    teacher_accuracy = None
    if teacher is not None:
        ensure_eval(teacher)
        teacher.to(device_)
        if method != "ce":
            with torch.no_grad():
                check_logits(student.eval()(sample), teacher(sample))
        teacher_accuracy = evaluate_classifier(teacher, xev, yev, device_, world)["eval_accuracy"]

    hint_loss = None
    if uses_hints:
        torch.manual_seed(seed)  # the regressors' initial weights
        hint_loss = HintLoss.for_models(student, teacher, hint_list, sample).to(device_)
    targets = TeacherTargets(teacher, [h.teacher for h in hint_list], device_) if method != "ce" else None
    if targets is not None and cache_teacher:
        targets.fill_cache(xtr)
    recipe = {"method": method, "loss": logit_loss.to_config(), "hints": [asdict(h) for h in hint_list],
              "hint_schedule": hint_schedule}
    ckpt = {k: Path(out_dir) / f if out_dir is not None else None for k, f in CHECKPOINTS.items()}

    hint_history: list[dict[str, float]] = []
    if uses_hints and hint_schedule == "two-stage":
        guided = [h.student for h in hint_list]
        stage1 = TrainConfig(**{**asdict(config), "epochs": hint_epochs or max(1, epochs // 3), "patience": None})
        params = parameters_up_to(student, guided, sample) + list(hint_loss.parameters())
        with FeatureTap(student, guided, "student") as tap:
            def hint_step(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
                student(x)
                return hint_loss(tap.take(), targets(x, index))

            hint_history = fit({"student": student, "hints": hint_loss}, hint_step, (xtr, ytr), stage1,
                               params=params, stage="hints", on_progress=on_progress, checkpoint=ckpt["hints"],
                               resume=resume, recipe=recipe).history

    joint = hint_loss is not None and hint_schedule == "joint"
    modules: dict[str, nn.Module] = {"student": student, **({"hints": hint_loss} if joint else {})}
    with FeatureTap(student, [h.student for h in hint_list] if joint else [], "student") as tap:
        def step(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            logits = student(x)
            if not (joint or isinstance(logit_loss, HintonKD)):  # CE: the teacher has nothing to add
                return logit_loss(logits, None, y)
            t = targets(x, index)
            loss = logit_loss(logits, t["logits"], y)
            return loss + hint_loss(tap.take(), t) if joint else loss

        result = fit(modules, step, (xtr, ytr), config, evaluate=(xsel, ysel), stage="distill",
                     on_progress=on_progress, checkpoint=ckpt["distill"], resume=resume, recipe=recipe)

    student_accuracy = evaluate_classifier(student, xev, yev, device_, world)["eval_accuracy"]
    metrics = {
        "method": method, **recipe, "config": asdict(config), "cache_teacher": cache_teacher,
        "train_split": train_split, "eval_split": eval_split, "select_split": select_split, "n_train": len(xtr),
        "n_labelled": int((ytr != -100).sum()), "n_eval": len(xev), "n_select": len(xsel),
        "world_size": world.size, "device": str(device_),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()) if teacher is not None else None,
        "student_fingerprint": fingerprint({"student": student}),
        "hint_history": hint_history, "history": result.history, "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early, "resumed_from_epoch": result.resumed_from,
        "student_accuracy": student_accuracy, "teacher_accuracy": teacher_accuracy,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    files = write_outputs(Path(out_dir), student, metrics) if out_dir is not None and world.rank == 0 else []
    return DistillResult(student, metrics, result.best_epoch, student_accuracy, teacher_accuracy, files, teacher)


def check_out_dir(out_dir: Path, resume: bool = False, force: bool = False) -> None:
    """Refuse, before any training, an output folder that cannot be written or that already holds a run's
    files, unless the caller resumes that run or replaces it (``--force``); create it otherwise."""
    ours = [f for f in (STUDENT_FILE, METRICS_FILE, *CHECKPOINTS.values()) if (out_dir / f).exists()]
    if ours and not (resume or force):
        raise DistillError(f"{out_dir} already holds {', '.join(ours)}; pass --resume to continue that run, --force "
                           "to replace it, or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DistillError(f"cannot use --out {out_dir}: {e.strerror or e}; choose another --out") from None
    if not os.access(out_dir, os.W_OK):
        raise DistillError(f"cannot write to --out {out_dir}; choose another --out")


def write_outputs(out_dir: Path, student: nn.Module, metrics: dict[str, Any]) -> list[Path]:
    """``student.safetensors`` and ``metrics.json`` in ``out_dir``, each written atomically."""
    from safetensors.torch import save_file

    weights, report = out_dir / STUDENT_FILE, out_dir / METRICS_FILE
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in student.state_dict().items()}
    meta = {"method": metrics["method"], "best_epoch": str(metrics["best_epoch"]),
            "fingerprint": metrics["student_fingerprint"]}
    write_atomic(weights, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    write_atomic(report, lambda tmp: tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8"))
    return [weights, report]
