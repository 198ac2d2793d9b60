"""The ``[distill]`` table of ``edgekit.toml`` as a typed object (settings only: no model, no data).

:mod:`edgekit.project` reads it as part of the project file and :mod:`edgekit.distill.project` runs it;
keeping the settings apart is what lets the second import the first without a cycle.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit.distill import DistillError


class DistillSpec(BaseModel):
    """Settings for ``edgekit distill`` and the build's distill stage; CLI options override them.
    Out-of-range values in ``edgekit.toml`` are refused when the project is read, naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    student: str | None = Field(default=None, pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$",
                                description="entry point returning the untrained student")
    student_layers: tuple[Annotated[int, Field(ge=0)], ...] | None = Field(
        default=None, min_length=1, description="embedding student: these of the [teacher] hf model's layers")
    method: Literal["hinton", "fitnet", "fitnet+hinton", "cosine", "mse"] = "hinton"
    temperature: float = Field(default=4.0, gt=0, allow_inf_nan=False)
    alpha: float = Field(default=0.9, ge=0, le=1)
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                             description="default 3e-3 (classifier from scratch), 5e-4 (embedding student)")
    weight_decay: float = Field(default=1e-2, ge=0)
    patience: int | None = Field(default=None, ge=1)
    hints: dict[str, str] = Field(default_factory=dict, description="teacher module path -> student module path")
    hint_weight: float = Field(default=1.0, ge=0)
    hint_epochs: int | None = Field(default=None, ge=1)
    hint_schedule: Literal["two-stage", "joint"] = "two-stage"
    cache_teacher: bool = False
    top_k: int | None = Field(default=64, ge=1, description="language models: the teacher's largest logits kept per "
                              "token (None: all, computed on every batch)")
    ship: Literal["better", "student"] = Field(
        default="better", description="edgekit build: 'better' ships the distilled student only when it is "
        "significantly better than the [model] on the calib split (edgekit.selection); 'student' always ships it")

    @model_validator(mode="after")
    def _fitnet_needs_hints(self) -> Self:
        if self.method.startswith("fitnet") and not self.hints:
            raise ValueError(f"method {self.method!r} needs hints = {{ \"TEACHER_PATH\" = \"STUDENT_PATH\" }}")
        if self.student is not None and self.student_layers is not None:
            raise ValueError("give one of student (an entry) and student_layers (the teacher's layers to keep)")
        if self.embedding and self.hints:
            raise ValueError(f"method {self.method!r} matches the teacher's embeddings; hints are for fitnet")
        return self

    @property
    def embedding(self) -> bool:
        """An embedding method (the student learns the teacher's embeddings, no labels)."""
        return self.method in ("cosine", "mse")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 5e-4 if self.embedding else 3e-3

    def check(self) -> None:
        """Refuse bad values before any model is loaded (the same checks distill() makes)."""
        from edgekit.distill.losses import HintonKD
        from edgekit.distill.trainer import TrainConfig

        HintonKD(self.temperature, self.alpha)
        TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.learning_rate, weight_decay=self.weight_decay,
                    patience=self.patience)
        if self.method.startswith("fitnet") and not self.hints:
            raise DistillError(f"method {self.method!r} needs at least one hint layer: --hint-layer "
                               "TEACHER_PATH=STUDENT_PATH (or hints = {...} under [distill])")

    def distill_kwargs(self) -> dict[str, Any]:
        """These settings as keyword arguments of :func:`edgekit.distill.api.distill`."""
        return {**self.model_dump(exclude={"student", "student_layers", "hints", "top_k", "ship"}), "lr": self.learning_rate,
                "hints": [f"{t}={s}" for t, s in self.hints.items()]}
