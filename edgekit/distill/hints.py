"""FitNet hints (Romero et al. 2015): a student layer learns to predict a teacher layer's output.

Layers are named by *module path* (``"features.3"``, as ``model.named_modules()`` lists them) and read
with forward hooks, so neither model is rewritten. A wrong path is refused with the nearest names.

When the two outputs differ in shape, a learned regressor maps the student's to the teacher's:
a 1x1 convolution for 4-D features ``[B, C, H, W]`` whose channels differ, a linear layer on the
last axis for 2-D ``[B, D]`` / 3-D ``[B, L, D]`` features. If 4-D features also differ in height or
width, both are average-pooled (``adaptive_avg_pool2d``) to the smaller height and width: the
regressor stays 1x1 and the hint compares the same receptive fields at a coarser grid. Features of
different rank, or 3-D features of different length, are refused.

The hint loss is the mean squared error between regressed student and teacher features (mean over
elements: the paper's ``1/2 ||u_h - r(v_g)||^2`` up to a constant the hint weight absorbs).

>>> hints = [Hint.parse("features.4=features.2")]          # TEACHER_PATH=STUDENT_PATH
>>> # loss = HintLoss.for_models(student, teacher, hints, sample_x)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import nn

from edgekit.distill import DistillError


@dataclass(frozen=True)
class Hint:
    """The teacher's hint layer, the student's guided layer, and the weight of their L2 loss."""

    teacher: str
    student: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Hint:
        """``"TEACHER_PATH=STUDENT_PATH"``, as the CLI's ``--hint-layer`` takes it."""
        teacher, sep, student = text.partition("=")
        if not sep or not teacher.strip() or not student.strip():
            raise DistillError(f"hint layer {text!r} must be TEACHER_PATH=STUDENT_PATH, e.g. features.4=features.2")
        return cls(teacher.strip(), student.strip())


def find_module(model: nn.Module, path: str, what: str) -> nn.Module:
    """The submodule at ``path``; a wrong path is an error that lists the nearest names."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    names = [n for n in modules if n]
    near = difflib.get_close_matches(path, names, n=5, cutoff=0.3)
    listing = f"nearest: {', '.join(near)}" if near else f"its modules: {', '.join(names[:12])}"
    raise DistillError(f"{what} ({type(model).__name__}) has no module {path!r}; {listing}")


class FeatureTap:
    """Records the outputs of modules (by path) during forward passes, while entered.

    >>> # with FeatureTap(student, ["features.2"], "student") as tap:
    >>> #     logits = student(x); feats = tap.take()
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], what: str):
        self.what = what
        self.modules = {p: find_module(model, p, what) for p in dict.fromkeys(paths)}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> Self:
        for path, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._recorder(path)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.outputs.clear()

    def _recorder(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise DistillError(f"{self.what} module {path!r} returns {type(output).__name__}, not a tensor; "
                                   "pick a layer whose output is one tensor")
            self.outputs[path] = output
        return hook

    def take(self) -> dict[str, torch.Tensor]:
        """The outputs recorded since the last call; every tapped module must have run."""
        missing = [p for p in self.modules if p not in self.outputs]
        if missing:
            raise DistillError(f"{self.what} module(s) {', '.join(missing)} did not run in the forward pass; "
                               "pick layers the model's forward actually calls")
        out, self.outputs = self.outputs, {}
        return out


class HintRegressor(nn.Module):
    """Maps a student feature to the teacher feature's shape (see the module docstring)."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        s, t = tuple(student_shape[1:]), tuple(teacher_shape[1:])  # without the batch axis
        self.pool_to: tuple[int, int] | None = None
        if len(s) != len(t) or len(s) not in (1, 2, 3):
            raise DistillError(f"cannot map a student feature of shape {list(student_shape)} onto a teacher hint of "
                               f"shape {list(teacher_shape)}; pick layers with [B, C, H, W], [B, L, D] or [B, D] "
                               "outputs of the same rank")
        if len(s) == 3:
            self.map = nn.Identity() if s[0] == t[0] else nn.Conv2d(s[0], t[0], kernel_size=1)
            if s[1:] != t[1:]:
                self.pool_to = (min(s[1], t[1]), min(s[2], t[2]))
        else:
            if s[:-1] != t[:-1]:
                raise DistillError(f"student feature {list(student_shape)} and teacher hint {list(teacher_shape)} "
                                   "differ in length; only the feature axis may differ")
            self.map = nn.Identity() if s[-1] == t[-1] else nn.Linear(s[-1], t[-1])

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mapped = self.map(student)
        if self.pool_to is not None:
            pool = nn.functional.adaptive_avg_pool2d
            mapped, teacher = pool(mapped, self.pool_to), pool(teacher, self.pool_to)
        return mapped, teacher


class HintLoss(nn.Module):
    """``sum_i weight_i * MSE(regressor_i(student feature_i), teacher hint_i)``; regressors are trainable."""

    def __init__(self, hints: list[Hint], student_shapes: dict[str, tuple[int, ...]],
                 teacher_shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        self.hints = list(hints)
        self.regressors = nn.ModuleList(HintRegressor(student_shapes[h.student], teacher_shapes[h.teacher])
                                        for h in self.hints)

    @classmethod
    def for_models(cls, student: nn.Module, teacher: nn.Module, hints: list[Hint], sample: torch.Tensor) -> HintLoss:
        """Check the paths and size the regressors from one forward pass of both models on ``sample``."""
        if not hints:
            raise DistillError("FitNet needs at least one hint layer (TEACHER_PATH=STUDENT_PATH)")
        with torch.no_grad(), FeatureTap(student, [h.student for h in hints], "student") as s_tap, \
                FeatureTap(teacher, [h.teacher for h in hints], "teacher") as t_tap:
            student(sample)
            teacher(sample)
            s_shapes = {p: tuple(v.shape) for p, v in s_tap.take().items()}
            t_shapes = {p: tuple(v.shape) for p, v in t_tap.take().items()}
        return cls(hints, s_shapes, t_shapes)

    def forward(self, student_feats: dict[str, torch.Tensor], teacher_feats: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for hint, regressor in zip(self.hints, self.regressors):
            mapped, target = regressor(student_feats[hint.student], teacher_feats[hint.teacher].detach())
            term = hint.weight * nn.functional.mse_loss(mapped, target)
            total = term if total is None else total + term
        return total


def parameters_up_to(model: nn.Module, paths: list[str], sample: torch.Tensor) -> list[nn.Parameter]:
    """The parameters the outputs at ``paths`` depend on (FitNet stage 1 trains only these): found by
    autograd on one forward pass, so no assumption about the model's structure is made."""
    params = [p for p in model.parameters() if p.requires_grad]
    with FeatureTap(model, paths, "student") as tap:
        model(sample)
        feats = tap.take()
    grads = torch.autograd.grad(sum(f.sum() for f in feats.values()), params, allow_unused=True)
    used = [p for p, g in zip(params, grads) if g is not None]
    if not used:
        raise DistillError(f"the student's guided layer(s) {', '.join(paths)} depend on no trainable parameter")
    return used
