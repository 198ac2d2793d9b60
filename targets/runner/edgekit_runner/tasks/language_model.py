"""Language model: scored on the bundle's eval text through the exported model with its KV cache
(:mod:`edgekit_runner.lm`). The headline metric is greedy agreement: the fraction of the PyTorch model's
greedy continuation of the bundle's prompt (``greedy_reference``, 32 tokens by default) that the export
reproduces before its first different token. Perplexity on the eval windows (``input.tokens``, each window
read from a fresh cache and scored on predicting its next tokens) is measured beside it and compared with
PyTorch's. A float build must reproduce the continuation exactly and match PyTorch's perplexity closely; a
quantized build is held to a perplexity budget."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit_runner.tasks.base import Judgement, Task

# (float build, quantized build) defaults of the [task] settings
THRESHOLDS = {"min_greedy_agreement": (1.0, 0.0), "max_perplexity_increase": (0.01, 0.10)}


def greedy_agreement(tokens: list[int] | np.ndarray, reference: list[int] | np.ndarray) -> float:
    """The share of ``reference`` that ``tokens`` reproduce before their first difference."""
    ref = [int(t) for t in np.asarray(reference).reshape(-1)]
    got = [int(t) for t in np.asarray(tokens).reshape(-1)]
    same = 0
    for a, b in zip(got, ref):
        if a != b:
            break
        same += 1
    return same / len(ref) if ref else 1.0


class LanguageModel(Task):
    name = "language-model"
    metric = "greedy_agreement"
    arrays = ("prompt", "greedy_reference")

    def check_arrays(self, shapes: dict[str, tuple[int, ...]], n_samples: int,
                     dtypes: dict[str, str] | None = None) -> str | None:
        for name in self.arrays:
            if len(shapes[name]) != 2 or shapes[name][0] != 1 or shapes[name][1] < 1:
                return f"{name} has shape {list(shapes[name])}; it is one token sequence [1, N]"
            if dtypes and dtypes[name] != "int64":
                return f"{name} holds {dtypes[name]}; token ids are int64"
        return None

    def score(self, outputs: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
              references: dict[str, np.ndarray] | None) -> dict[str, Any]:
        """``outputs``: ``greedy`` (the export's continuation of the prompt) and ``perplexity`` (a 0-d array);
        ``arrays``: ``greedy_reference`` and ``reference_perplexity`` (PyTorch's)."""
        metrics: dict[str, Any] = {"task": self.name, "metric": self.metric,
                                   "greedy_tokens": [int(t) for t in np.asarray(outputs["greedy"]).reshape(-1)],
                                   "greedy_agreement": greedy_agreement(outputs["greedy"], arrays["greedy_reference"]),
                                   "reference_greedy_agreement": 1.0}
        if "perplexity" in outputs:
            metrics["perplexity"] = float(outputs["perplexity"])
        if "reference_perplexity" in arrays:
            ref = float(arrays["reference_perplexity"])
            metrics["reference_perplexity"] = ref
            if "perplexity" in metrics:
                metrics["perplexity_increase"] = metrics["perplexity"] / ref - 1
        return metrics

    def judge(self, metrics: dict[str, Any], options: dict[str, Any], quantized: bool) -> Judgement:
        least = options.get("min_greedy_agreement", THRESHOLDS["min_greedy_agreement"][quantized])
        if not metrics.get("greedy_agreement", 0.0) >= least:
            return Judgement(False, f"greedy generation differs from PyTorch's after "
                                    f"{round(metrics.get('greedy_agreement', 0) * len(metrics['greedy_tokens']))} "
                                    f"of {len(metrics['greedy_tokens'])} tokens (min_greedy_agreement = {least:g})")
        most = options.get("max_perplexity_increase", THRESHOLDS["max_perplexity_increase"][quantized])
        increase = metrics.get("perplexity_increase")
        if increase is not None and not increase <= most:
            return Judgement(False, f"perplexity {metrics['perplexity']:.3f} is {increase:+.2%} against PyTorch's "
                                    f"{metrics['reference_perplexity']:.3f} (max_perplexity_increase = {most:g})")
        return Judgement(True)


LANGUAGE_MODEL = LanguageModel()
