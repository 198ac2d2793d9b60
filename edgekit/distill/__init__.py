"""Knowledge distillation: a small student learns from a larger teacher.

Modules (import the one you need; this package itself imports no torch, so the CLI stays fast):

- :mod:`edgekit.distill.losses`   losses by name (Hinton KD, soft-labels-only, CE; cosine, MSE of embeddings)
- :mod:`edgekit.distill.embedding` ``distill_embeddings``: a smaller encoder learns the teacher's embeddings
- :mod:`edgekit.distill.hints`    FitNet hints: features by module path through forward hooks, regressors
- :mod:`edgekit.distill.trainer`  the seeded training loop: AdamW + cosine, eval, early stopping,
                                  safetensors checkpoints with resume, torch.distributed data parallel
- :mod:`edgekit.distill.api`      ``distill(student, teacher, splits, method=...)``, what the CLI and build call
- :mod:`edgekit.distill.project`  the project's ``[distill]`` settings, the untrained student, a run over a project
- :mod:`edgekit.distill.cli`      the ``edgekit distill`` command

>>> # from edgekit.distill.api import distill
>>> # result = distill(student, teacher, splits, method="hinton", temperature=4, alpha=0.9, epochs=30)
"""

from __future__ import annotations

from edgekit.errors import EdgekitError


class DistillError(EdgekitError):
    """A distillation setting, model pair or checkpoint is wrong (bad T or alpha, class mismatch,
    unknown module path, checkpoint of another model)."""

    exit_code = 2


class DistillWarning(UserWarning):
    """Something was fixed up for the user (e.g. the teacher was in training mode) and they should know."""
