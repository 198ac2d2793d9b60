"""The recipe search's bookkeeping (edgekit.search): candidates from the profile and the planner, the trials read
back from the Optuna study (a failure kept with its reason, an interrupted trial free to run again), the Pareto
front, and the pick within budgets or the closest with the miss named."""

from __future__ import annotations

import optuna
import pytest

from edgekit.profiles import load_profile
from edgekit.project import load_project
from edgekit.search import Recipe, Trial, _from_optuna, _pick_and_ship, candidates, pareto_front


def test_candidates_are_what_the_profile_and_planner_allow(root):
    project = load_project(root)
    pi5 = candidates(load_profile("raspberry-pi-5"), project, on_host=True)
    assert pi5[0] == Recipe("tflite", "xnnpack", "none")  # the profile's default path first
    assert {r.format for r in pi5} == {"tflite", "executorch", "onnx"}
    assert Recipe("onnx", "cpu", "int8", 32, True, True) in pi5 and Recipe("tflite", "xnnpack", "int8", 128, False) in pi5
    assert not any(r.quant == "fp16" for r in pi5)  # no path of the Pi 5 runs fp16
    assert not any(r.format == "tflite" and r.quant == "int4-weight-only" for r in pi5)  # the planner refuses it
    jetson = load_profile("jetson-orin-nano")
    assert all(r.backend != "tensorrt" for r in candidates(jetson, project, on_host=True))  # a twin's speed is not
    assert any(r.backend == "tensorrt" for r in candidates(jetson, project, on_host=False))  # the device's
    assert not any(r.distill for r in candidates(jetson, project, on_host=True, distill=False))


def _study(tmp_path):
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize"] + ["minimize"] * 3)


def test_a_failure_is_kept_with_its_reason_and_an_interruption_is_not(tmp_path):
    recipes = [Recipe("onnx", "cpu", "none"), Recipe("onnx", "cpu", "int8")]
    by_key = {r.key: r for r in recipes}
    dist = {"recipe": optuna.distributions.CategoricalDistribution([r.key for r in recipes])}
    study = _study(tmp_path)
    failed = optuna.trial.TrialState.FAIL
    study.add_trial(optuna.trial.create_trial(params={"recipe": recipes[0].key}, distributions=dist, state=failed,
                                              user_attrs={"hash": "a", "error": "ExportError: lowering refused"}))
    study.add_trial(optuna.trial.create_trial(params={"recipe": recipes[1].key}, distributions=dist, state=failed,
                                              user_attrs={"hash": "b"}))  # Ctrl-C: no reason recorded
    got = [_from_optuna(t, by_key) for t in study.get_trials()]
    assert got[0].state == "failed" and got[0].error == "ExportError: lowering refused" and got[0].recipe == recipes[0]
    assert got[1] is None  # interrupted: free to run again
    assert _from_optuna(study.get_trials()[0], {recipes[1].key: recipes[1]}) is None  # a recipe no longer offered


def _trial(n, value, p50, size, memory, budgets=()):
    return Trial(n, Recipe("onnx", "cpu", "int8", 32 * (n + 1)), f"h{n}", "measured", bundle=f"trial-{n}", value=value, metric="accuracy",
                 latency_p50_ms=p50, size_bytes=size, peak_memory_mb=memory, budgets=list(budgets))


def test_the_front_and_the_pick(tmp_path, monkeypatch):
    fast = _trial(0, 0.95, 1.0, 100, 50)
    accurate = _trial(1, 0.99, 2.0, 100, 50)
    dominated = _trial(2, 0.94, 1.5, 120, 60)  # slower and worse than `fast`
    assert {t.number for t in pareto_front([fast, accurate, dominated], "classification")} == {0, 1}
    lm = [_trial(0, 20.0, 1.0, 1, 1), _trial(1, 25.0, 1.0, 1, 1)]  # perplexity: lower is better
    assert [t.number for t in pareto_front(lm, "language-model")] == [0]
    monkeypatch.setattr("edgekit.search._ship", lambda *a: None)
    monkeypatch.setattr("edgekit.search._write_report", lambda *a: None)
    said = []
    picked = _pick_and_ship([fast, accurate, dominated], "latency", {}, tmp_path / "o", tmp_path, "classification",
                            said.append, None)
    assert picked.pick is fast and picked.within_budgets and fast.picked
    assert _pick_and_ship([fast, accurate, dominated], "metric", {}, tmp_path / "o", tmp_path, "classification",
                          said.append, None).pick is accurate
    slow = {"key": "latency_p90_ms", "status": "fail", "limit": 0.5, "measured": None, "unit": "ms", "excess": None}
    for t, p90 in ((fast, 1.2), (accurate, 2.4), (dominated, 1.8)):
        t.budgets = [{**slow, "measured": p90, "excess": p90 - 0.5}]
    missed = _pick_and_ship([fast, accurate, dominated], "latency", {"latency_p90_ms": 0.5}, tmp_path / "o",
                            tmp_path, "classification", said.append, None)
    assert missed.pick is fast and not missed.within_budgets  # the closest to the limit
    assert missed.missed == ["latency_p90_ms: no trial is <= 0.5 ms; the best is 1.2 ms (off by 0.7 ms)"]
    with pytest.raises(StopIteration):
        next(t for t in [fast, accurate, dominated] if t.within_budgets)
