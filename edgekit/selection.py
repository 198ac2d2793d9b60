"""Which model ships when the distill stage made a challenger to the project's own ``[model]``.

Distillation is optional work that can fail to help (on digits with full labels, KD and the student alone
are within one seed's spread: ``benchmarks/results/kd_table.md``). The build therefore compares the
distilled student with the ``[model]`` as loaded, **on the calib split** (never eval: eval is what the
bundle reports), paired per sample, and ships:

- the distilled student when it is **significantly better** on calib: one-sided p < :data:`ALPHA` by an
  exact McNemar test on the samples the two classify differently (classifiers), or a paired t-test on
  the per-window negative log-likelihood (language models) or the per-sample cosine to the teacher
  (embeddings);
- otherwise the ``[model]``: a challenger within noise of the model the project already trusts does not
  replace it. The student's calib score is also its best epoch's, chosen on the same split, so it is
  optimistic: one more reason to ask for a margin rather than a tie;
- the distilled student, whatever its score, when it has fewer parameters than the ``[model]``: the
  project asked for a smaller network (``student_layers``, a smaller ``student`` entry), so the
  comparison is a trade the project chose, and the build reports it rather than undoing it;
- the distilled student, whatever its score, with ``[distill] ship = "student"``.

The decision, both calib scores, the test and its p-value are the manifest's ``selection``.

>>> choose("accuracy", 0.98, 0.95, 1000, 1000, "McNemar exact", 0.01, higher_is_better=True).shipped
'distilled'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALPHA = 0.05
SPLIT = "calib"


@dataclass(frozen=True)
class Selection:
    shipped: str  # "distilled" or "model"
    metric: str
    split: str
    distilled: float
    model: float
    distilled_parameters: int
    model_parameters: int
    test: str | None
    p_value: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_p(better: int, worse: int) -> float:
    """One-sided exact McNemar: P(at least ``better`` of the ``better + worse`` discordant samples go the
    challenger's way if either way were equally likely)."""
    n = better + worse
    return sum(math.comb(n, k) for k in range(better, n + 1)) / 2 ** n if n else 1.0


def paired_t_p(challenger: np.ndarray, model: np.ndarray, higher_is_better: bool) -> float:
    """One-sided paired t-test that the challenger's per-sample score is better than the model's."""
    from scipy import stats

    d = np.asarray(challenger, np.float64) - np.asarray(model, np.float64)
    if len(d) < 2 or not np.any(d != d[0]):  # no spread: better everywhere by the same amount, or identical
        return 0.0 if (d[0] > 0) == higher_is_better and d[0] != 0 else 1.0
    return float(stats.ttest_1samp(d, 0.0, alternative="greater" if higher_is_better else "less").pvalue)


def choose(metric: str, distilled: float, model: float, distilled_parameters: int, model_parameters: int,
           test: str, p_value: float, higher_is_better: bool, ship: str = "better", fmt: str = "{:.4g}") -> Selection:
    d, m = fmt.format(distilled), fmt.format(model)
    scores = f"{metric} on {SPLIT}: distilled student {d}, model entry {m}"
    if ship == "student":
        shipped, reason = "distilled", f'[distill] ship = "student" ({scores})'
    elif distilled_parameters < model_parameters:
        shipped, reason = "distilled", (f"the distilled student is the smaller network the project asked for "
                                        f"({distilled_parameters:,} against {model_parameters:,} parameters; {scores})")
    elif p_value < ALPHA:
        shipped, reason = "distilled", f"it is significantly better ({scores}; {test}, one-sided p = {p_value:.2g})"
    else:
        worse = (distilled < model) if higher_is_better else (distilled > model)
        verdict = "worse than" if worse else "not significantly better than"
        shipped, reason = "model", (f"the distilled student is {verdict} the model entry ({scores}; {test}, "
                                    f"one-sided p = {p_value:.2g} >= {ALPHA:g})")
    return Selection(shipped, metric, SPLIT, float(distilled), float(model), int(distilled_parameters),
                     int(model_parameters), test, float(p_value), reason)


def parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def after_distill(project: Any, splits: dict[str, Any], model: Any, student: Any, teacher: Any) -> Selection:
    """Compare the distilled ``student`` with the ``[model]`` as loaded (``model``) on calib and decide."""
    from edgekit.distill.spec import DistillSpec
    from edgekit.project import model_outputs

    ship = (project.distill or DistillSpec()).ship
    calib, sizes = splits[SPLIT], (parameters(student), parameters(model))
    for net in (model, student):
        net.eval()
    if project.task.kind == "language-model":
        from edgekit.lm.distill import window_nll

        s, m = window_nll(student, calib.x), window_nll(model, calib.x)
        return choose("perplexity", math.exp(s.mean()), math.exp(m.mean()), *sizes,
                      f"paired t-test on {len(s)} windows' log-likelihood", paired_t_p(s, m, False), False, ship,
                      "{:.2f}")
    inputs = [calib.named(project)[i.name] for i in project.inputs]
    outs = {name: model_outputs(net, inputs, f"the {name}")[0]
            for name, net in (("model entry", model), ("distilled student", student))}
    if project.task.kind == "classification":
        right = {k: o.reshape(len(o), -1).argmax(1) == calib.y for k, o in outs.items()}
        s, m = right["distilled student"], right["model entry"]
        better, worse = int(np.sum(s & ~m)), int(np.sum(m & ~s))
        return choose("accuracy", s.mean(), m.mean(), *sizes,
                      f"McNemar exact on {better + worse} of {len(s)} samples classified differently",
                      mcnemar_p(better, worse), True, ship, "{:.2%}")
    target = model_outputs(teacher, inputs, "the teacher")[0]
    cos = {k: _cosine(o, target) for k, o in outs.items()}
    s, m = cos["distilled student"], cos["model entry"]
    return choose("cosine to the teacher", s.mean(), m.mean(), *sizes,
                  f"paired t-test on {len(s)} samples", paired_t_p(s, m, True), True, ship, "{:.4f}")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def choose_shipped(b: Any, student: Any) -> bool:
    """The build's choice (``b``: :class:`edgekit.pipeline.Build` after its distill stage trained ``student``):
    keep ``b.model`` (the [model]) or replace it with the student. The decision goes into ``b.distilled``'s
    ``selection``. True when the student ships."""
    b.say("distill", "the distilled student against the model entry on the calib split")
    selection = after_distill(b.project, b.splits, b.model, student, b.teacher)
    b.distilled["selection"] = selection.to_dict()
    if selection.shipped == "distilled":
        b.model = student
    return selection.shipped == "distilled"
