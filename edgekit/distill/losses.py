"""Logit losses for distillation, registered by name and configured as ``{"name": ..., "kwargs": {...}}``.

Every loss is called as ``loss(student_logits, teacher_logits, labels=None, mask=None)`` and works on
classification logits ``[B, C]`` and on sequence logits ``[B, L, V]`` (per token, with a mask and an ignore label).

Hinton KD (Hinton, Vinyals & Dean 2015)::

    L = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(y, z_s),     p^T = softmax(z / T)

KL direction: teacher -> student, ``KL(p_t || p_s) = sum_c p_t,c * (log p_t,c - log p_s,c)``. This is what
``torch.nn.KLDivLoss()(log_softmax(z_s / T), softmax(z_t / T))`` computes (its *input* is the student's
log-probabilities, its *target* the teacher's probabilities); texts that write ``KL(p_s, p_t)`` with the
arguments the other way round mean the same quantity. Reduction is ``batchmean``: the KL summed over
classes, averaged over positions. For sequences a *position* is a token: the terms are averaged over
the counted tokens (so "batchmean" is per token, not per sequence). The ``T^2`` factor keeps the
gradient of the soft term at the scale of the hard term as ``T`` grows: ``d/dz_s [T^2 KL] =
T * (p_s^T - p_t^T)`` per position, which tends to ``(z_s - z_t)/C`` (zero-mean logits) for large ``T``.

Masking: ``mask`` (bool, shape of the logits without the class axis, True = the position exists, e.g.
not padding) leaves positions out of both terms; a label equal to ``ignore_index`` leaves its position
out of the hard-label term only, so unlabeled samples or tokens in a batch still learn from the
teacher (semi-supervised transfer data). Each term is averaged over its own counted positions; a term
with no position counted is 0.

Top-k teacher (language models): a vocabulary of 49k logits per token does not fit in memory for a corpus,
so the teacher's logits can be kept as its ``k`` largest per token (:class:`TopKLogits`: values, vocabulary
indices and, per token, ``logsumexp(z_t / T)`` over the whole vocabulary). The soft term is then the KL over
``k + 1`` outcomes (:func:`soft_kl_topk`): each of the teacher's top ``k`` tokens with its exact probability,
and "any other token" with the rest of the teacher's mass, against the student's probabilities of the same
``k`` tokens and of the rest. Nothing is renormalised: at T = 2 a small model's top 64 of 2,048 tokens can
hold a quarter of its mass only, and renormalising over them would teach a much sharper distribution than
the teacher's. With ``k`` = the vocabulary it is exactly the full KL. Without the per-token normaliser
(``log_norm=None``) the teacher is renormalised over its top ``k``, the common shortcut.

Registered: ``hinton`` (:class:`HintonKD`), ``soft`` (:class:`SoftKD`, alpha = 1, no labels needed:
for unlabeled transfer data), ``ce`` (:class:`CrossEntropy`, the student-alone baseline); for embeddings
``[B, D]`` (no labels, no temperature): ``cosine`` (:class:`CosineEmbedding`, ``1 - cos(e_s, e_t)``) and
``mse`` (:class:`MSEEmbedding`, the squared difference per component).
Registration is this module's explicit ``LOSSES`` table, nothing registers itself on import.

>>> loss = make_loss({"name": "hinton", "kwargs": {"temperature": 4.0, "alpha": 0.9}})
>>> # loss(student(x), teacher(x), y).backward()
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, NamedTuple

from edgekit.distill import DistillError


class TopKLogits(NamedTuple):
    """A teacher's ``k`` largest logits per position and their class (vocabulary) indices, ``[..., k]`` each;
    ``log_norm [...]``: ``logsumexp(logits / temperature)`` over every class, at that ``temperature``."""

    values: Any
    indices: Any
    log_norm: Any = None
    temperature: float | None = None


def check_logits(student: Any, teacher: Any) -> None:
    """Refuse a teacher/student pair whose outputs cannot be compared, naming both shapes."""
    if isinstance(teacher, TopKLogits):
        s, t = tuple(student.shape), tuple(teacher.values.shape)
        if s[:-1] != t[:-1] or tuple(teacher.indices.shape) != t:
            raise DistillError(f"teacher top-k logits {list(t)} (indices {list(teacher.indices.shape)}) and student "
                               f"logits {list(s)} differ in their positions; they must be computed on the same batch")
        if int(teacher.indices.max()) >= s[-1] or int(teacher.indices.min()) < 0:
            raise DistillError(f"teacher top-k indices go up to {int(teacher.indices.max())} but the student has "
                               f"{s[-1]} classes; distill into a student with the teacher's vocabulary")
        return
    s, t = tuple(student.shape), tuple(teacher.shape)
    if s[-1] != t[-1]:
        raise DistillError(f"the teacher outputs {t[-1]} classes but the student {s[-1]} (shapes {list(t)} and "
                           f"{list(s)}); distill into a student whose output size matches the teacher's")
    if s != t:
        raise DistillError(f"teacher logits {list(t)} and student logits {list(s)} differ in shape; "
                           "they must be computed on the same batch")


def _positions(logits: Any, mask: Any) -> Any:
    """Boolean tensor over positions (the logits without the class axis): True where a position exists."""
    import torch

    keep = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    if mask is not None:
        if tuple(mask.shape) != tuple(keep.shape):
            raise DistillError(f"mask has shape {list(mask.shape)}, expected {list(keep.shape)} "
                               "(the logits' shape without the class axis)")
        keep &= mask.to(device=logits.device, dtype=torch.bool)
    return keep


def _labelled(keep: Any, labels: Any, ignore_index: int) -> Any:
    """The kept positions that have a label."""
    if tuple(labels.shape) != tuple(keep.shape):
        raise DistillError(f"labels have shape {list(labels.shape)}, expected {list(keep.shape)}")
    return keep & (labels != ignore_index)


def _mean_over(values: Any, keep: Any) -> Any:
    """Mean of per-position ``values`` over kept positions; 0 (with a graph) when none is kept."""
    n = keep.sum()
    return (values * keep).sum() / n.clamp(min=1)


def soft_kl(student: Any, teacher: Any, temperature: float, keep: Any) -> Any:
    """``KL(p_t^T || p_s^T)`` summed over classes, averaged over kept positions (no ``T^2``)."""
    import torch.nn.functional as F

    log_ps = F.log_softmax(student / temperature, dim=-1)
    log_pt = F.log_softmax(teacher.detach() / temperature, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    return _mean_over(kl, keep)


def soft_kl_topk(student: Any, teacher: TopKLogits, temperature: float, keep: Any) -> Any:
    """``KL(p_t^T || p_s^T)`` over the teacher's top ``k`` classes plus one outcome for all the others (with
    ``teacher.log_norm``), or over the top ``k`` renormalised (without); averaged over kept positions (no
    ``T^2``)."""
    import torch
    import torch.nn.functional as F

    log_ps = F.log_softmax(student / temperature, dim=-1).gather(-1, teacher.indices.long())
    values = teacher.values.detach().to(student.dtype) / temperature
    if teacher.log_norm is None:
        log_pt = F.log_softmax(values, dim=-1)
        return _mean_over((log_pt.exp() * (log_pt - log_ps)).sum(-1), keep)
    if teacher.temperature is None or not math.isclose(teacher.temperature, temperature, rel_tol=1e-9):
        raise DistillError(f"the teacher's top-k logits were normalised at temperature {teacher.temperature}, "
                           f"the loss is at {temperature}; compute them again at the loss's temperature")
    log_pt = values - teacher.log_norm.detach().to(student.dtype).unsqueeze(-1)
    pt = log_pt.exp()
    kl = (pt * (log_pt - log_ps)).sum(-1)
    tiny = torch.finfo(student.dtype).tiny
    pt_rest = (1 - pt.sum(-1)).clamp(min=0)
    ps_rest = (1 - log_ps.exp().sum(-1)).clamp(min=tiny)
    kl = kl + pt_rest * (pt_rest.clamp(min=tiny).log() - ps_rest.log())
    return _mean_over(kl, keep)


def hard_ce(student: Any, labels: Any, keep: Any) -> Any:
    """Cross-entropy with the labels, averaged over kept positions."""
    import torch.nn.functional as F

    safe = labels.masked_fill(~keep, 0)  # ignored labels may be out of range; their terms are masked out
    ce = F.cross_entropy(student.flatten(0, -2), safe.flatten(), reduction="none").view(keep.shape)
    return _mean_over(ce, keep)


class _Loss:
    name: ClassVar[str]

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": asdict(self)}


@dataclass(frozen=True)
class HintonKD(_Loss):
    """``alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(y, z_s)`` (see the module docstring).
    ``alpha = 1`` needs no labels; ``alpha = 0`` is exactly the cross-entropy. ``teacher`` is the teacher's
    logits or its :class:`TopKLogits`."""

    name: ClassVar[str] = "hinton"
    temperature: float = 4.0
    alpha: float = 0.9
    ignore_index: int = -100

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise DistillError(f"temperature must be a number > 0, got {self.temperature!r}; "
                               "typical values are 1 to 8")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise DistillError(f"alpha must be in [0, 1] (the weight of the soft-label term), got {self.alpha!r}")

    def __call__(self, student: Any, teacher: Any, labels: Any = None, mask: Any = None) -> Any:
        if teacher is not None:
            check_logits(student, teacher)
        if labels is None and self.alpha < 1:
            raise DistillError(f"alpha = {self.alpha} needs labels for its hard-label term; "
                               "for unlabeled transfer data use alpha = 1 (soft labels only)")
        keep = _positions(student, mask)
        loss = None
        if self.alpha > 0:
            if teacher is None:
                raise DistillError("the soft-label term (alpha > 0) needs teacher logits")
            kl = soft_kl_topk if isinstance(teacher, TopKLogits) else soft_kl
            loss = self.alpha * self.temperature ** 2 * kl(student, teacher, self.temperature, keep)
        if self.alpha < 1:
            hard = (1 - self.alpha) * hard_ce(student, labels, _labelled(keep, labels, self.ignore_index))
            loss = hard if loss is None else loss + hard
        return loss


@dataclass(frozen=True)
class SoftKD(HintonKD):
    """Soft labels only (``alpha = 1``): ``T^2 * KL(p_t^T || p_s^T)``, for unlabeled transfer data."""

    name: ClassVar[str] = "soft"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha != 1.0:
            raise DistillError(f"the 'soft' loss uses soft labels only (alpha = 1), got alpha = {self.alpha}; "
                               "use 'hinton' to mix in the hard labels")


@dataclass(frozen=True)
class CrossEntropy(_Loss):
    """Plain cross-entropy with the labels; the teacher is ignored (the student-alone baseline)."""

    name: ClassVar[str] = "ce"
    ignore_index: int = -100

    def __call__(self, student: Any, teacher: Any = None, labels: Any = None, mask: Any = None) -> Any:
        if labels is None:
            raise DistillError("the 'ce' loss needs labels; for unlabeled data use the 'soft' loss")
        return hard_ce(student, labels, _labelled(_positions(student, mask), labels, self.ignore_index))


def check_embeddings(student: Any, teacher: Any) -> None:
    """Refuse a student whose embeddings cannot be compared with the teacher's, naming both shapes."""
    s, t = tuple(student.shape), tuple(teacher.shape)
    if s != t:
        raise DistillError(f"the teacher's embeddings have shape {list(t)} but the student's {list(s)}; an embedding "
                           "student must keep the teacher's width (its retrieval compares the two directly)")


@dataclass(frozen=True)
class CosineEmbedding(_Loss):
    """``mean_b (1 - cos(e_s,b, e_t,b))``: the direction of the teacher's embedding, which is what retrieval
    by cosine similarity reads; the length is left free (sentence-transformers normalise it anyway)."""

    name: ClassVar[str] = "cosine"

    def __call__(self, student: Any, teacher: Any, labels: Any = None, mask: Any = None) -> Any:
        import torch.nn.functional as F

        check_embeddings(student, teacher)
        return (1 - F.cosine_similarity(student.flatten(1), teacher.detach().flatten(1), dim=-1)).mean()


@dataclass(frozen=True)
class MSEEmbedding(_Loss):
    """``mean_b,d (e_s,bd - e_t,bd)^2``: the teacher's embedding itself, length included (the loss of
    DistilBERT-style and sentence-transformers' "MSE" model distillation)."""

    name: ClassVar[str] = "mse"

    def __call__(self, student: Any, teacher: Any, labels: Any = None, mask: Any = None) -> Any:
        import torch.nn.functional as F

        check_embeddings(student, teacher)
        return F.mse_loss(student, teacher.detach())


LOSSES: dict[str, type[_Loss]] = {cls.name: cls for cls in (HintonKD, SoftKD, CrossEntropy, CosineEmbedding,
                                                            MSEEmbedding)}
EMBEDDING_LOSSES = (CosineEmbedding.name, MSEEmbedding.name)


def make_loss(config: dict[str, Any]) -> Any:
    """Build a registered loss from ``{"name": ..., "kwargs": {...}}``; ``loss.to_config()`` gives it back."""
    if not isinstance(config, dict) or "name" not in config or set(config) - {"name", "kwargs"}:
        raise DistillError(f"a loss is configured as {{'name': ..., 'kwargs': {{...}}}}, got {config!r}")
    name = config["name"]
    if name not in LOSSES:
        raise DistillError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    kwargs = config.get("kwargs") or {}
    allowed = set(cls.__dataclass_fields__)
    if set(kwargs) - allowed:
        raise DistillError(f"loss {name!r} has no setting {', '.join(sorted(set(kwargs) - allowed))}; "
                           f"it takes {', '.join(sorted(allowed))}")
    return cls(**kwargs)


def kd_loss_fn(teacher: Any, loss_config: dict[str, Any]) -> Any:
    """A ``loss_fn(outputs, labels, inputs)`` for :func:`edgekit.train.fine_tune` that runs the (frozen,
    eval-mode) teacher on ``inputs``: QAT fine-tuning with this loss is quantization-aware distillation.

    >>> # fine_tune(prepared, x, y, epochs=3, loss_fn=kd_loss_fn(teacher, {"name": "hinton", "kwargs": {}}))
    """
    import torch

    from edgekit.distill.trainer import ensure_eval

    loss = make_loss(loss_config)
    ensure_eval(teacher)

    def loss_fn(outputs: Any, labels: Any, inputs: Any) -> Any:
        with torch.no_grad():
            target = teacher(inputs)
        return loss(outputs, target, labels)

    return loss_fn
