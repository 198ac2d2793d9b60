"""The task registry: what a bundle's eval set means and how it is scored.

Each task is one module with one :class:`Task` object; :data:`TASKS` lists them explicitly (no import side
effects). A task says which arrays its eval set holds besides the inputs and the PyTorch reference outputs,
checks their shapes before they are loaded, scores a model's outputs on them (the task's metrics), compares
them with the reference, and judges whether an export passes. The runner uses it on the device; the host
uses the same code to validate an export and to prepare the eval set (:mod:`edgekit.tasks`).

>>> get_task("classification").score({"logits": out}, {"labels": y}, {"logits": ref})  # doctest: +SKIP
{'task': 'classification', 'metric': 'accuracy', 'accuracy': 0.98, ...}
"""

from __future__ import annotations

from edgekit_runner.tasks.base import Task
from edgekit_runner.tasks.classification import CLASSIFICATION
from edgekit_runner.tasks.embedding import EMBEDDING
from edgekit_runner.tasks.language_model import LANGUAGE_MODEL

TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, EMBEDDING, LANGUAGE_MODEL)}


def get_task(name: str) -> Task:
    """The task called ``name``; ValueError (one line) naming the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; this edgekit knows {', '.join(TASKS)}") from None
