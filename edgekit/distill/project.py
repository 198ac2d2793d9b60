"""Distillation settings of a project (the ``[distill]`` table of ``edgekit.toml``) and the run over it.

    [distill]
    student = "examples/digits/model.py:StudentCNN"     # entry returning the UNTRAINED student (a class
                                                        # works); default: the [model] entry, re-initialised
    method = "hinton"                 # hinton | fitnet | fitnet+hinton
    temperature = 2.0                 # default 4.0
    alpha = 0.9
    epochs = 30
    cache_teacher = true              # the teacher's outputs computed once (right without augmentation)
    hints = { "features.5" = "features.3" }             # teacher path = student path (fitnet)

Out-of-range values (T <= 0, alpha outside [0, 1], epochs < 1, ...) are refused when the project is
read, naming the field. ``edgekit distill`` runs these settings alone; ``edgekit build`` runs them as
its distill stage (:func:`distill_for_build`) and ships the distilled student. Both choose the best
epoch on the project's ``calib`` split and report accuracies on ``eval``, so the reported figure was
not used to pick the weights.

Why a separate student entry: a project's ``[model]`` entry returns the model to deploy, often
already trained; distillation needs the architecture untrained. Without ``student``, the
``[model]`` entry's network is re-initialised with the project seed (every layer's
``reset_parameters()``), which works for models built from standard layers.

>>> # result = distill_project(load_project("."), DistillSpec(epochs=10), out_dir=Path("build/distill"))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit.distill import DistillError


class DistillSpec(BaseModel):
    """Settings for ``edgekit distill`` and the build's distill stage; CLI options override them.
    Out-of-range values in ``edgekit.toml`` are refused when the project is read, naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    student: str | None = Field(default=None, pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$",
                                description="entry point returning the untrained student")
    method: Literal["hinton", "fitnet", "fitnet+hinton"] = "hinton"
    temperature: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    alpha: float = Field(default=0.9, ge=0, le=1)
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=3e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=1e-2, ge=0)
    patience: int | None = Field(default=None, ge=1)
    hints: dict[str, str] = Field(default_factory=dict, description="teacher module path -> student module path")
    hint_weight: float = Field(default=1.0, ge=0)
    hint_epochs: int | None = Field(default=None, ge=1)
    hint_schedule: Literal["two-stage", "joint"] = "two-stage"
    cache_teacher: bool = False

    @model_validator(mode="after")
    def _fitnet_needs_hints(self) -> Self:
        if self.method.startswith("fitnet") and not self.hints:
            raise ValueError(f"method {self.method!r} needs hints = {{ \"TEACHER_PATH\" = \"STUDENT_PATH\" }}")
        return self

    def check(self) -> None:
        """Refuse bad values before any model is loaded (the same checks distill() makes)."""
        from edgekit.distill.losses import HintonKD
        from edgekit.distill.trainer import TrainConfig

        HintonKD(self.temperature, self.alpha)
        TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                    patience=self.patience)
        if self.method.startswith("fitnet") and not self.hints:
            raise DistillError(f"method {self.method!r} needs at least one hint layer: --hint-layer "
                               "TEACHER_PATH=STUDENT_PATH (or hints = {...} under [distill])")

    def distill_kwargs(self) -> dict[str, Any]:
        """These settings as keyword arguments of :func:`edgekit.distill.api.distill`."""
        return {**self.model_dump(exclude={"student", "hints"}),
                "hints": [f"{t}={s}" for t, s in self.hints.items()]}


def load_student(project: Any, settings: DistillSpec, seed: int, model: Any = None) -> Any:
    """The untrained student: ``settings.student``'s entry, or the project's model (``model`` if it is
    already loaded) re-initialised."""
    import torch

    from edgekit.distill.api import fresh_student
    from edgekit.project import call_entry, load_model

    if settings.student is None:
        return fresh_student(model if model is not None else load_model(project), seed)
    torch.manual_seed(seed)
    student = call_entry(project, settings.student, "distill student")
    if not isinstance(student, torch.nn.Module):
        raise DistillError(f"distill student entry {settings.student!r} returned {type(student).__name__}, "
                           "not a torch.nn.Module")
    return student


def distill_project(project: Any, settings: DistillSpec, out_dir: Path | None = None, resume: bool = False,
                    seed: int | None = None, device: str = "auto", on_progress: Any = None,
                    on_stage: Any = None, splits: dict[str, Any] | None = None, model: Any = None) -> Any:
    """Load the project's data, teacher and untrained student, then :func:`edgekit.distill.api.distill`.
    The best epoch is chosen on the ``calib`` split; accuracies are measured on ``eval``. ``splits`` and
    ``model`` (the [model] entry's network) are reused when the caller has loaded them.
    ``on_stage(name, detail)`` hears about the slow loading steps before training starts."""
    from edgekit.distill.api import distill
    from edgekit.project import load_data, load_model, model_outputs

    settings.check()
    if project.teacher is None:
        raise DistillError(f"{project.file} declares no teacher; add [teacher] entry = \"file.py:function\" "
                           "(a function returning the trained teacher) to distill")
    seed = project.seed if seed is None else seed
    say = on_stage or (lambda name, detail: None)
    if splits is None:
        say("data", project.data.entry)
        splits = load_data(project)
    say("teacher", project.teacher.entry)
    teacher = load_model(project, project.teacher, "teacher")
    model_outputs(teacher, splits["eval"].x[:2], f"the teacher ({project.teacher.entry})")
    say("student", student_description(project, settings))
    student = load_student(project, settings, seed, model)
    model_outputs(student, splits["eval"].x[:2], f"the distill student ({student_description(project, settings)})")
    return distill(student, teacher, splits, seed=seed, device=device, out_dir=out_dir, resume=resume,
                   select_split="calib", on_progress=on_progress, **settings.distill_kwargs())


def student_description(project: Any, settings: DistillSpec) -> str:
    """Where the untrained student comes from, in words."""
    return settings.student or f"{project.model.entry}, re-initialised"


def distill_for_build(project: Any, splits: dict[str, Any], model: Any,
                      say: Callable[[str], None]) -> tuple[Any, Any, dict[str, Any]]:
    """The build's distill stage: a fresh student trained from the project's teacher with its ``[distill]``
    settings, on the CPU (the exporters' device). Returns the student, the teacher (eval mode, for
    quantization-aware distillation) and the manifest's record, which compares the distilled student
    with ``model`` (the [model] entry as loaded) on the eval split."""
    import torch

    from edgekit.distill.trainer import evaluate_classifier

    settings = project.distill or DistillSpec()

    def progress(p: Any) -> None:
        if p.event == "epoch":
            acc = p.metrics.get("eval_accuracy")
            say(f"{'hint stage, ' if p.stage == 'hints' else ''}epoch {p.epoch}/{p.epochs}, loss {p.loss:.4f}"
                + (f", calib accuracy {acc:.2%}" if acc is not None else ""))

    result = distill_project(project, settings, device="cpu", on_progress=progress,
                             on_stage=lambda name, detail: say(f"loading the {name}: {detail}"),
                             splits=splits, model=model)
    ev = splits["eval"]
    original = evaluate_classifier(model, torch.from_numpy(ev.x), torch.from_numpy(ev.y))
    m = result.metrics
    record = {
        "method": m["method"], "loss": m["loss"], "temperature": settings.temperature, "alpha": settings.alpha,
        "hints": m["hints"], "epochs": settings.epochs, "epochs_run": len(m["history"]), "best_epoch": m["best_epoch"],
        "best_epoch_chosen_on": m["select_split"], "accuracy_measured_on": m["eval_split"],
        "teacher_entry": project.teacher.entry, "student_entry": student_description(project, settings),
        "teacher_parameters": m["teacher_parameters"], "student_parameters": m["student_parameters"],
        "teacher_accuracy": result.teacher_accuracy, "student_accuracy": result.student_accuracy,
        "original_student_accuracy": original["eval_accuracy"], "seed": m["config"]["seed"], "seconds": m["seconds"],
        "history": [{"epoch": h["epoch"], "train_loss": h["train_loss"],
                     f"{m['select_split']}_accuracy": h.get("eval_accuracy")} for h in m["history"]],
    }
    return result.student, result.teacher, record
