"""``edgekit distill``: distil the project's teacher into its student, alone (no export).

Options left unset take the project's ``[distill]`` settings (see :mod:`edgekit.distill.project`),
then the defaults, which suit the digits example. Only click is imported at start-up.

    edgekit distill --method hinton --temperature 4 --alpha 0.9 --epochs 30
    edgekit distill --method fitnet+hinton --hint-layer features.5=features.3 --out build/kd
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Self

import click


@click.command("distill")
@click.option("--project", "-p", type=click.Path(path_type=Path), default=None,
              help="edgekit.toml or its folder  [default: ./edgekit.toml]")
@click.option("--method", type=click.Choice(["hinton", "fitnet", "fitnet+hinton", "cosine", "mse"]), default=None,
              help="hinton = KD loss; fitnet = hint stage, then CE; fitnet+hinton = hint stage, then KD; "
                   "cosine / mse = match the teacher's embeddings (embedding projects)  [default: hinton]")
@click.option("--temperature", "-T", type=float, default=None, help="Softmax temperature T > 0  [default: 4]")
@click.option("--alpha", type=float, default=None,
              help="Weight of the soft-label term in [0, 1]; 1 = soft labels only  [default: 0.9]")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs  [default: 30]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Global batch size  [default: 64]")
@click.option("--lr", type=float, default=None,
              help="AdamW peak learning rate (cosine decay)  [default: 3e-3; 5e-4 for cosine / mse]")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs without a better calib accuracy  [default: never]")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None, help="[default: the project's seed]")
@click.option("--hint-layer", "hint_layers", multiple=True, metavar="TEACHER_PATH=STUDENT_PATH",
              help="FitNet hint: a teacher module path and the student module path it guides (repeatable).")
@click.option("--hint-epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of the FitNet hint stage  [default: a third of --epochs]")
@click.option("--cache-teacher/--no-cache-teacher", default=None,
              help="Compute the teacher's outputs on the train split once instead of every batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("build/distill"), show_default=True,
              help="Folder for student.safetensors, metrics.json and checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoints in --out (same settings).")
@click.option("--force", is_flag=True, help="Replace the student, metrics and checkpoints already in --out.")
def distill_command(project: Path | None, method: str | None, temperature: float | None, alpha: float | None,
                    epochs: int | None, batch_size: int | None, lr: float | None, patience: int | None,
                    seed: int | None, hint_layers: tuple[str, ...], hint_epochs: int | None,
                    cache_teacher: bool | None, device: str, out: Path, resume: bool, force: bool) -> None:
    """Distil the project's teacher into its student; write the student's weights and metrics."""
    from rich.console import Console
    from rich.markup import escape

    from edgekit.distill import DistillWarning
    from edgekit.distill.api import check_out_dir
    from edgekit.distill.hints import Hint
    from edgekit.distill.project import DistillSpec, distill_project
    from edgekit.project import load_project

    spec = load_project(project)
    check_out_dir(out, resume, force)
    given = {"method": method, "temperature": temperature, "alpha": alpha, "epochs": epochs,
             "batch_size": batch_size, "lr": lr, "patience": patience, "hint_epochs": hint_epochs,
             "cache_teacher": cache_teacher}
    overrides = {k: v for k, v in given.items() if v is not None}
    if hint_layers:
        overrides["hints"] = {h.teacher: h.student for h in map(Hint.parse, hint_layers)}
    settings = (spec.distill or DistillSpec()).model_copy(update=overrides)
    con = Console(highlight=False, soft_wrap=True)
    loss = "" if settings.embedding else f"T={settings.temperature:g}, alpha={settings.alpha:g}, "
    con.print(f"[bold]edgekit distill[/] — project {escape(repr(spec.name))}: {settings.method}, {loss}"
              f"{settings.epochs} epochs, batch {settings.batch_size}, lr {settings.learning_rate:g}")
    with warnings.catch_warnings(record=True) as caught, _ProgressView(con) as view:
        warnings.simplefilter("always", category=DistillWarning)
        result = distill_project(spec, settings, out_dir=out, resume=resume, seed=seed, device=device,
                                 on_progress=view.update, on_stage=view.stage)
    for w in caught:
        if issubclass(w.category, DistillWarning):
            con.print(f"  [yellow]warning[/]: {escape(str(w.message))}")
    _summary(con, result)


class _ProgressView:
    """A rich progress bar per training stage, and one line per epoch."""

    def __init__(self, con: Any):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.con = con
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=con)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Self:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def stage(self, name: str, detail: str) -> None:
        self.con.print(f"  loading {name}: {detail}", markup=False)

    def update(self, p: Any) -> None:
        if p.stage not in self.tasks:
            label = "hint stage" if p.stage == "hints" else "distill"
            self.tasks[p.stage] = self.bar.add_task(label, total=p.epochs * p.steps, info="")
        task = self.tasks[p.stage]
        info = f"epoch {p.epoch}/{p.epochs} loss {p.loss:.4f}"
        self.bar.update(task, completed=(p.epoch - 1) * p.steps + p.step, info=info)
        if p.event == "epoch" and "eval_accuracy" in p.metrics:  # the trainer's eval is the calib split here
            self.con.print(f"  epoch {p.epoch:>3}/{p.epochs}  loss {p.loss:.4f}  calib accuracy "
                           f"{p.metrics['eval_accuracy']:.2%}  calib loss {p.metrics['eval_loss']:.4f}")
        elif p.event == "epoch" and "eval_cosine_mean" in p.metrics:
            self.con.print(f"  epoch {p.epoch:>3}/{p.epochs}  loss {p.loss:.4f}  calib cosine to the teacher "
                           f"{p.metrics['eval_cosine_mean']:.4f}  retrieval agreement "
                           f"{p.metrics['eval_retrieval_agreement']:.1%}")


def _summary(con: Any, result: Any) -> None:
    m = result.metrics
    con.print(f"[bold]distill summary[/] — {m['method']} on {m['n_train']} train samples; best epoch chosen on "
              f"{m['n_select']} ({m['select_split']}), figures on {m['n_eval']} ({m['eval_split']})")
    if m.get("task") == "embedding":
        con.print(f"  teacher            {m['teacher_parameters']:,} parameters")
        for label, s in (("student", m["student"]), ("before training", m["initial_student"])):
            con.print(f"  {label:<18} cosine to the teacher {s['cosine_mean']:.4f} mean / {s['cosine_min']:.4f} min, "
                      f"retrieval agreement {s['retrieval_agreement']:.1%}"
                      + (f" ({m['student_parameters']:,} parameters)" if label == "student" else ""))
    else:
        teacher = f"{result.teacher_accuracy:.2%}" if result.teacher_accuracy is not None else "n/a"
        con.print(f"  teacher accuracy   {teacher} ({m['teacher_parameters']:,} parameters)")
        con.print(f"  student accuracy   {result.student_accuracy:.2%} ({m['student_parameters']:,} parameters)")
    ran = len(m["history"])
    con.print(f"  best epoch         {result.best_epoch} of {ran} run"
              + (" (stopped early)" if m["stopped_early"] else "")
              + (f", resumed after epoch {m['resumed_from_epoch']}" if m["resumed_from_epoch"] else ""))
    for f in result.files:
        con.print(f"  wrote              {f}", markup=False)
