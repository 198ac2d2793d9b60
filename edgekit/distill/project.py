"""Distillation settings of a project (the ``[distill]`` table of ``edgekit.toml``) and the run over it.

    [distill]
    student = "examples/digits/model.py:StudentCNN"     # entry returning the UNTRAINED student (a class
                                                        # works); default: the [model] entry, re-initialised
    method = "hinton"                 # hinton | fitnet | fitnet+hinton (classifiers); cosine | mse (embeddings)
    temperature = 2.0                 # default 4.0
    alpha = 0.9
    epochs = 30
    cache_teacher = true              # the teacher's outputs computed once (right without augmentation)
    hints = { "features.5" = "features.3" }             # teacher path = student path (fitnet)

An embedding project (``[task] kind = "embedding"``) distils a smaller encoder from a transformer teacher
(``[teacher] hf = ...``) with an embedding loss (:mod:`edgekit.distill.embedding`)::

    [distill]
    method = "cosine"                 # 1 - cos(student, teacher); or "mse"
    student_layers = [0, 2, 4]        # the student: these of the teacher's layers, with their weights
    epochs = 8                        # lr defaults to 5e-4 here (3e-3 for classifiers)

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
from typing import Any

from edgekit.distill import DistillError
from edgekit.distill.spec import DistillSpec


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
    check_task(project, settings)
    if project.task.kind == "language-model":
        raise DistillError("a language-model project distils in `edgekit build` (its distill stage: token-level KD "
                           "from the [teacher], edgekit.lm.distill); `edgekit distill` trains classifiers and "
                           "embedding models")
    seed = project.seed if seed is None else seed
    say = on_stage or (lambda name, detail: None)
    if splits is None:
        say("data", project.data.entry)
        splits = load_data(project)
    say("teacher", project.teacher.source)
    teacher = load_model(project, project.teacher, "teacher")
    if settings.embedding:
        from edgekit.distill.embedding import distill_embeddings

        say("student", student_description(project, settings))
        if settings.student_layers is not None:
            from edgekit.hf import keep_layers

            student = keep_layers(teacher, settings.student_layers)
        else:
            student = load_student(project, settings, seed, model)
        kwargs = settings.distill_kwargs()
        return distill_embeddings(student, teacher, splits, [i.name for i in project.inputs], loss=settings.method,
                                  **{k: kwargs[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "patience")},
                                  seed=seed, device=device, out_dir=out_dir, resume=resume, on_progress=on_progress)
    model_outputs(teacher, splits["eval"].x[:2], f"the teacher ({project.teacher.entry})")
    say("student", student_description(project, settings))
    student = load_student(project, settings, seed, model)
    model_outputs(student, splits["eval"].x[:2], f"the distill student ({student_description(project, settings)})")
    return distill(student, teacher, splits, seed=seed, device=device, out_dir=out_dir, resume=resume,
                   select_split="calib", on_progress=on_progress, **settings.distill_kwargs())


def check_task(project: Any, settings: DistillSpec) -> None:
    """Refuse, before anything is loaded, a distill method that does not fit the project's task or teacher."""
    kind = project.task.kind
    if project.teacher is None:
        raise DistillError(f"{project.file} declares no teacher; add [teacher] entry = \"file.py:function\" "
                           "(a function returning the trained teacher) or hf = \"MODEL_FOLDER\" to distill")
    if kind == "language-model":
        if settings.method != "hinton":
            raise DistillError(f"[distill] method {settings.method!r}: a language model distils with method = "
                               "\"hinton\" (token-level KD on the teacher's next-token distributions)")
        if settings.hints or settings.student_layers is not None:
            raise DistillError("[distill] hints and student_layers are not used for language models; the student is "
                               "[distill] student or the [model]'s architecture, trained fresh")
        return
    if settings.embedding and kind != "embedding":
        raise DistillError(f"[distill] method {settings.method!r} matches embeddings; a {kind} project distils with "
                           "hinton, fitnet or fitnet+hinton")
    if not settings.embedding and kind != "classification":
        raise DistillError(f"[distill] method {settings.method!r} trains on class scores; a {kind} project distils "
                           "with method = \"cosine\" or \"mse\" (the teacher's embeddings)")
    if settings.student_layers is not None and project.teacher.hf is None:
        raise DistillError("[distill] student_layers picks layers of a transformers teacher; declare it with "
                           "[teacher] hf = \"MODEL_FOLDER\", or give student = \"file.py:function\"")


def student_description(project: Any, settings: DistillSpec) -> str:
    """Where the untrained student comes from, in words."""
    if settings.student_layers is not None:
        return f"layers {', '.join(map(str, settings.student_layers))} of the teacher ({project.teacher.source})"
    return settings.student or f"{project.model.source}, re-initialised"


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
            acc, cos = p.metrics.get("eval_accuracy"), p.metrics.get("eval_cosine_mean")
            say(f"{'hint stage, ' if p.stage == 'hints' else ''}epoch {p.epoch}/{p.epochs}, loss {p.loss:.4f}"
                + (f", calib accuracy {acc:.2%}" if acc is not None else "")
                + (f", calib cosine to the teacher {cos:.4f}" if cos is not None else ""))

    result = distill_project(project, settings, device="cpu", on_progress=progress,
                             on_stage=lambda name, detail: say(f"loading the {name}: {detail}"),
                             splits=splits, model=model)
    m = result.metrics
    if settings.embedding:
        record = {
            "method": m["method"], "loss": m["loss"], "task": "embedding", "student_layers": settings.student_layers,
            "epochs": settings.epochs, "epochs_run": len(m["history"]), "best_epoch": m["best_epoch"],
            "best_epoch_chosen_on": m["select_split"], "measured_on": m["eval_split"],
            "teacher_entry": project.teacher.source, "student_entry": student_description(project, settings),
            "teacher_parameters": m["teacher_parameters"], "student_parameters": m["student_parameters"],
            "student": m["student"], "initial_student": m["initial_student"], "lr": m["config"]["lr"],
            "seed": m["config"]["seed"], "seconds": m["seconds"],
            "history": [{"epoch": h["epoch"], "train_loss": h["train_loss"],
                         f"{m['select_split']}_cosine_mean": h.get("eval_cosine_mean")} for h in m["history"]],
        }
        return result.student, result.teacher, record
    ev = splits["eval"]
    original = evaluate_classifier(model, torch.from_numpy(ev.x), torch.from_numpy(ev.y))
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
