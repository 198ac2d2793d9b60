"""Recipe search: ``edgekit build --device D --search``: build the recipes the profile allows, measure each
where it will run, keep the Pareto front, and ship the best one within the budgets.

A recipe (:class:`Recipe`) is a format/backend path of the profile and a scheme for it: fp32, fp16, int8
post-training (calibration samples, per-channel or per-tensor), int8 with dynamic activations, int8 QAT,
mixed precision, int8/int4 weight-only; with and without distillation when the project has a teacher; and, for
each ``--prune KIND:RATIO`` given, pruned that way (edgekit.prune) beside unpruned.
Recipes the planner refuses are not candidates. With the local target (the default) only paths whose
runtime runs on this host are candidates: a host twin's speed says nothing of the device.

Each trial builds the recipe's bundle (the normal build: export, quantize, validate against PyTorch) and
runs it with the runner where it will run (``--on``: ``local`` by default, or a device through a
transport), which measures latency, peak memory and the task metric; the run goes into the results store.
Objectives: the task metric, latency p50, size and peak memory (Pareto, not a weighted sum).

The search and its persistence are Optuna's: a multi-objective TPE sampler over the recipes, in an SQLite
study beside the output (``<out>.search/study.db``): an interrupted search resumes, and parallel workers
share the study. Each trial records its recipe, its content hash (the model's and the teacher's weights,
the project file, the recipe, the device, this edgekit's version) and its measurements; a failed trial
records why. A recipe already measured (or failed for a reason) in the study is never measured again;
a trial that was interrupted is. The first trials are the profile's default recipe and one per other
format, so every format is tried.

The pick: among trials within every budget, the Pareto front's best by ``objective`` (default the fastest);
when none is within budget, the search says which budgets no trial met and by how much, ships the closest
trial and exits with the budget code. ``<out>.search/report.html`` shows every trial.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, PlanError

OBJECTIVES = ("latency", "size", "metric", "memory")
INT8_VARIANTS = ((128, True), (32, True), (128, False))  # (calibration samples, per-channel)


@dataclass(frozen=True)
class Recipe:
    format: str
    backend: str
    quant: str  # "none" | a --quant scheme
    calib_samples: int = 128
    per_channel: bool = True
    distill: bool = False
    qat_epochs: int = 2
    prune: str | None = None  # --prune KIND:RATIO (edgekit.prune)

    @property
    def key(self) -> str:
        d = asdict(self)
        if d["prune"] is None:  # the key of an unpruned recipe is what it was before pruning was a dimension
            del d["prune"]
        return json.dumps(d, sort_keys=True)

    def describe(self) -> str:
        scheme = {"none": "fp32"}.get(self.quant, self.quant)
        if self.quant in ("int8", "mixed"):
            scheme += f" ({self.calib_samples} calib, {'per-channel' if self.per_channel else 'per-tensor'})"
        elif self.quant == "int8-qat":
            scheme += f" ({self.qat_epochs} epochs)"
        return (f"{self.format}/{self.backend} {scheme}" + (" + KD" if self.distill else "")
                + (f" + pruned {self.prune}" if self.prune else ""))


@dataclass
class Trial:
    number: int
    recipe: Recipe
    hash: str
    state: str  # "measured" | "failed" | "cached"
    error: str | None = None
    bundle: str | None = None
    metric: str | None = None
    value: float | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    size_bytes: int | None = None
    peak_memory_mb: float | None = None
    report: dict[str, Any] | None = None  # the run's report, as the runner wrote it
    run_id: str | None = None
    pareto: bool = False
    picked: bool = False
    budgets: list[dict[str, Any]] = field(default_factory=list)  # checked by check(), for the limits of this search

    def check(self, limits: dict[str, float], target: str) -> None:
        """The budgets against this trial's run (its bundle's manifest and the run's report)."""
        from edgekit.budgets import for_bench

        if self.state == "measured" and self.report and self.bundle and Path(self.bundle, "manifest.json").is_file():
            manifest = json.loads(Path(self.bundle, "manifest.json").read_text())
            self.budgets = [c.to_dict() for c in for_bench(limits, manifest, self.report, target)]

    @property
    def within_budgets(self) -> bool:
        return self.state == "measured" and not any(b["status"] == "fail" for b in self.budgets)


@dataclass
class SearchResult:
    trials: list[Trial]
    pick: Trial | None
    within_budgets: bool
    missed: list[str]  # budgets no trial met, with the best figure and by how much
    folder: Path
    report: Path | None = None


def candidates(profile: Any, project: Any, on_host: bool, fmt: str | None = None, quant: str = "auto",
               plan_options: dict[str, Any] | None = None, distill: bool = True,
               prune: tuple[str, ...] = ()) -> list[Recipe]:
    """Every recipe the profile allows and the planner accepts for this project, the profile's default first;
    ``prune``: the --prune settings offered beside no pruning (each is another candidate of every recipe)."""
    from edgekit.export import EXPORTERS
    from edgekit.plan import make_plan, valid_paths

    task = project.task.kind
    if prune:  # a bad --prune is refused here, not silently left out of every recipe
        from edgekit.plan import _with_pruning

        for p in prune:
            _with_pruning(make_plan(profile, task=task, language_model=project.language_model), p,
                          **{k[len("prune_"):]: v for k, v in (plan_options or {}).items() if k.startswith("prune_")})
    teacher = (False, True) if project.teacher is not None and distill else (False,)
    recipes: list[Recipe] = []
    paths = [(f, b) for f, b, _ in valid_paths(profile)
             if (fmt is None or f == fmt) and (not on_host or EXPORTERS[f].backends[b].runs_on_host)]
    default = (profile.default.format, profile.default.backend)
    paths.sort(key=lambda p: p != default)
    for f, b in paths:
        schemes: list[Recipe] = [Recipe(f, b, "none")]
        for q in ("fp16", "int8-dynamic", "int8-weight-only", "int4-weight-only", "int8-qat", "mixed"):
            schemes.append(Recipe(f, b, q))
        schemes += [Recipe(f, b, "int8", n, pc) for n, pc in INT8_VARIANTS]
        if task == "language-model":  # each format's own LLM recipes (the planner maps the other int8 names to them)
            schemes = [Recipe(f, b, q) for q in ("none", "int8-weight-only", "int4-weight-only")]
        for r in schemes:
            if quant != "auto" and r.quant != quant:
                continue
            for kd in teacher:
                for pr in (None, *prune):
                    recipe = Recipe(**{**asdict(r), "distill": kd, "prune": pr})
                    try:
                        make_plan(profile, f, b, quant=recipe.quant, calib_samples=recipe.calib_samples,
                                  qat_epochs=recipe.qat_epochs, distill=kd, task=task,
                                  language_model=project.language_model, prune=pr, **(plan_options or {}))
                    except PlanError:
                        continue
                    recipes.append(recipe)
    return recipes


def model_digest(project: Any) -> str:
    """The content the recipe is applied to: the [model]'s (and the teacher's) weights and the project file."""
    import torch

    from edgekit.project import load_model

    h = hashlib.sha256(Path(project.file).read_bytes())
    torch.manual_seed(project.seed)
    nets = [load_model(project)] + ([load_model(project, project.teacher, "teacher")] if project.teacher else [])
    for net in nets:
        for name, t in sorted(net.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def trial_hash(digest: str, recipe: Recipe, device: str, target: str) -> str:
    from edgekit import __version__

    text = json.dumps({"model": digest, "recipe": recipe.key, "device": device, "target": target,
                       "edgekit": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _directions(task: str) -> list[str]:
    return ["minimize" if task == "language-model" else "maximize", "minimize", "minimize", "minimize"]


def search(profile: Any, project: Any, out: Path, *, max_trials: int = 12, target: str = "local",
           objective: str = "latency", budget: dict[str, float] | None = None, fmt: str | None = None,
           quant: str = "auto", say: Callable[[str], None] = print, plan_options: dict[str, Any] | None = None,
           seed: int = 0, distill: bool = True, prune: tuple[str, ...] = ()) -> SearchResult:
    """Run (or resume) the search for ``project`` on ``profile``; the picked bundle is written to ``out``."""
    import logging

    import optuna

    from edgekit.budgets import resolve
    from edgekit.transport.base import parse_target

    if objective not in OBJECTIVES:
        raise PlanError(f"--objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if max_trials < 1:
        raise PlanError("--max-trials must be at least 1")
    optuna.logging.set_verbosity(logging.WARNING)
    tgt = parse_target(target, python=sys.executable if target == "local" else None)
    limits = {**resolve(profile), **(budget or {})}
    recipes = candidates(profile, project, tgt.kind == "local", fmt, quant, plan_options, distill, prune)
    if not recipes:
        raise PlanError(f"no recipe of {profile.id} can be built and measured on {target} for this project")
    folder = Path(str(Path(out).absolute()) + ".search")
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    say(f"search: {len(recipes)} candidate recipes on {profile.id}, measured on {tgt}; study {folder / 'study.db'}")
    say("search: hashing the model (a recipe measured before is not measured again)")
    digest = model_digest(project)
    by_key = {r.key: r for r in recipes}
    import warnings

    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9; resuming needs them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}", heartbeat_interval=30,
                                             grace_period=90)
    space = "\n".join(r.key for r in recipes)  # Optuna keeps one set of choices per study: another set, another study
    name = f"{project.name}-{profile.id}-{hashlib.sha256((digest + str(tgt) + space).encode()).hexdigest()[:12]}"
    study = optuna.create_study(study_name=name, storage=storage, directions=_directions(project.task.kind),
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
                                load_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a worker that died mid-trial: its recipe is free again

    def done() -> dict[str, Trial]:
        """Measured or failed-with-a-reason trials by content hash (interrupted ones are not done)."""
        found: dict[str, Trial] = {}
        for t in study.get_trials(deepcopy=False):
            trial = _from_optuna(t, by_key)
            if trial is not None and trial.state in ("measured", "failed") and trial.hash not in found:
                found[trial.hash] = trial
        return found

    first = {r.format: r for r in reversed(recipes)
             if not r.distill and not r.prune and r.quant in ("none", profile.default.quant)}
    seeds = [recipes[0], *(r for r in first.values() if r != recipes[0])]
    queued = {t.params.get("recipe") for t in study.get_trials(deepcopy=False)}
    for r in seeds:
        if r.key not in queued:
            study.enqueue_trial({"recipe": r.key})
    store = _store()

    def objective_fn(trial: Any) -> tuple[float, ...]:
        key = trial.suggest_categorical("recipe", [r.key for r in recipes])
        recipe = by_key[key]
        h = trial_hash(digest, recipe, profile.id, str(tgt))
        trial.set_user_attr("hash", h)
        previous = done().get(h)
        if previous is not None:  # measured (or failed) before: its numbers, not a new measurement
            trial.set_user_attr("cached_from", previous.number)
            if previous.state == "failed":
                trial.set_user_attr("error", previous.error)
                raise _Failed(previous.error or "failed")
            for k in ("bundle", "metric", "value", "latency_p50_ms", "latency_p90_ms", "size_bytes",
                      "peak_memory_mb", "report", "run_id"):
                trial.set_user_attr(k, getattr(previous, k))
            return _values(previous)
        n = len(done()) + 1
        say(f"trial #{trial.number} ({n} of {max_trials}): {recipe.describe()}")
        try:
            measured = _measure(profile, project, recipe, folder / "trials" / h, tgt, store, plan_options,
                                lambda msg: say(f"  {msg}"))
        except Exception as e:  # noqa: BLE001 - any failure of one recipe is that trial's result, with its reason
            reason = str(e) if isinstance(e, EdgekitError) else f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", reason.splitlines()[0][:500] if reason else type(e).__name__)
            say(f"  failed: {reason}")
            raise _Failed(reason) from None
        for k, v in measured.items():
            trial.set_user_attr(k, v)
        t = _from_optuna(trial, by_key, measured)
        t.check(limits, str(tgt))
        budgets_note = "within budgets" if t.within_budgets else "misses " + ", ".join(
            b["key"] for b in t.budgets if b["status"] == "fail")
        say(f"  {_fmt_metric(t)}, p50 {t.latency_p50_ms:.3f} ms, {t.size_bytes / 1024:.1f} KiB, peak "
            f"{t.peak_memory_mb if t.peak_memory_mb is not None else float('nan'):.1f} MB: {budgets_note}")
        return _values(t)

    asks = 0
    while len(done()) < min(max_trials, len(recipes)) and asks < 4 * max_trials + 8:
        asks += 1
        if asks > 2 * max_trials + len(seeds):  # the sampler keeps proposing measured recipes: take the next new one
            measured_keys = {t.recipe.key for t in done().values()}
            fresh = [r for r in recipes if r.key not in measured_keys]
            if fresh:
                study.enqueue_trial({"recipe": fresh[0].key})
        study.optimize(objective_fn, n_trials=1, catch=(_Failed,))
    trials = [t for t in (_from_optuna(t, by_key) for t in study.get_trials(deepcopy=False)) if t is not None]
    for t in trials:
        t.check(limits, str(tgt))
    return _pick_and_ship(trials, objective, limits, out, folder, project.task.kind, say, store, str(tgt))


class _Failed(Exception):
    """A trial that failed for a reason recorded in its user attributes."""


def _store() -> Any:
    from edgekit.results import ResultsError
    from edgekit.results.store import ResultsStore

    try:
        return ResultsStore()
    except ResultsError:
        return None


def _values(t: Trial) -> tuple[float, ...]:
    """The objectives, finite (Optuna fails a trial that returns NaN): a run without a figure is a failure."""
    if t.value is None or t.latency_p50_ms is None:
        raise _Failed(f"the run reported no {t.metric or 'metric'} or no latency")
    return (float(t.value), float(t.latency_p50_ms), float(t.size_bytes or 0), float(t.peak_memory_mb or 0.0))


def _fmt_metric(t: Trial) -> str:
    if t.value is None:
        return f"{t.metric} n/a"
    return f"{t.metric} {t.value:.3f}" if t.metric == "perplexity" else f"{t.metric} {t.value:.2%}"


def _from_optuna(t: Any, by_key: dict[str, Recipe], attrs: dict[str, Any] | None = None) -> Trial | None:
    import optuna

    key = t.params.get("recipe")
    if key not in by_key:
        return None
    a = {**t.user_attrs, **(attrs or {})}
    state = getattr(t, "state", None)
    if state == optuna.trial.TrialState.COMPLETE or attrs is not None:
        kind = "cached" if "cached_from" in a else "measured"
    elif state == optuna.trial.TrialState.FAIL and a.get("error"):
        kind = "failed"
    else:
        return None  # running, or interrupted before it measured anything
    return Trial(t.number, by_key[key], a.get("hash", ""), kind, a.get("error"), a.get("bundle"), a.get("metric"),
                 a.get("value"), a.get("latency_p50_ms"), a.get("latency_p90_ms"), a.get("size_bytes"),
                 a.get("peak_memory_mb"), a.get("report"), a.get("run_id"))


def _measure(profile: Any, project: Any, recipe: Recipe, folder: Path, target: Any, store: Any,
             plan_options: dict[str, Any] | None, say: Callable[[str], None]) -> dict[str, Any]:
    """Build the recipe's bundle (reused when an interrupted trial left it complete), run it on the target."""
    from edgekit.bundle import verify
    from edgekit.pipeline import build
    from edgekit.plan import make_plan
    from edgekit.transport import run_bundle
    from edgekit.transport.base import OK

    bundle = folder / "bundle"
    manifest, problems = verify(bundle) if (bundle / "manifest.json").is_file() else (None, ["none"])
    if problems:
        plan = make_plan(profile, recipe.format, recipe.backend, quant=recipe.quant,
                         calib_samples=recipe.calib_samples, qat_epochs=recipe.qat_epochs, distill=recipe.distill,
                         task=project.task.kind, language_model=project.language_model, prune=recipe.prune,
                         **(plan_options or {}))
        if plan.quant_scheme and "per_channel" in plan.quant_scheme:
            plan = plan.model_copy(update={"quant_scheme": {**plan.quant_scheme, "per_channel": recipe.per_channel}})
        if bundle.exists():
            shutil.rmtree(bundle)
        say("build")
        result = build(profile, project, plan, bundle, force=True, on_stage=lambda stage, detail: None)
        manifest = result.manifest
    say(f"run on {target}")
    outcome = run_bundle(bundle, target, runner_args=["--min-seconds", "1", "--warmup-seconds", "0.2"])
    if outcome.status != OK or outcome.report is None:
        raise EdgekitError(f"the run on {target} ended {outcome.status}: {outcome.error}")
    report = outcome.report
    if store is not None:
        store.add(report, manifest=manifest)
    task = project.task.kind
    from edgekit.results.store import peak_rss_mb

    met, lat = report.get("metrics") or {}, report.get("latency_ms") or {}
    metric = "perplexity" if task == "language-model" else (manifest.get("validation") or {}).get("metric")
    return {"bundle": str(bundle), "metric": metric, "value": met.get(metric),
            "latency_p50_ms": lat.get("p50", lat.get("median")), "latency_p90_ms": lat.get("p90"),
            "size_bytes": manifest["model"]["bytes"], "peak_memory_mb": peak_rss_mb(report.get("memory") or {}),
            "report": report, "run_id": report.get("run_id")}


def pareto_front(trials: list[Trial], task: str) -> list[Trial]:
    """Trials no other measured trial beats on every objective (metric, latency p50, size, peak memory)."""
    sign = -1.0 if task == "language-model" else 1.0

    def vec(t: Trial) -> tuple[float, ...]:  # larger is better everywhere
        return (sign * t.value, -t.latency_p50_ms, -float(t.size_bytes), -(t.peak_memory_mb or 0.0))

    rows = [t for t in trials if t.state == "measured" and t.value is not None and t.latency_p50_ms is not None]
    front = []
    for t in rows:
        v = vec(t)
        if not any(all(a >= b for a, b in zip(vec(o), v)) and vec(o) != v for o in rows if o is not t):
            front.append(t)
    return front


def _pick_and_ship(trials: list[Trial], objective: str, limits: dict[str, float], out: Path, folder: Path,
                   task: str, say: Callable[[str], None], store: Any, target: str = "local") -> SearchResult:
    from edgekit.budgets import KEYS

    measured = [t for t in trials if t.state == "measured"]
    front = pareto_front(measured, task)
    for t in front:
        t.pareto = True
    sign = -1.0 if task == "language-model" else 1.0
    rank = {"latency": lambda t: (t.latency_p50_ms, -sign * t.value),
            "size": lambda t: (t.size_bytes, t.latency_p50_ms),
            "metric": lambda t: (-sign * t.value, t.latency_p50_ms),
            "memory": lambda t: (t.peak_memory_mb or math.inf, t.latency_p50_ms)}[objective]
    feasible = [t for t in front if t.within_budgets] or [t for t in measured if t.within_budgets]
    missed: list[str] = []
    if feasible:
        pick = min(feasible, key=rank)
    elif measured:
        def shortfall(t: Trial) -> float:
            return sum(max(0.0, b["excess"] or 0.0) / max(b["limit"], 1e-12) for b in t.budgets
                       if b["status"] == "fail")

        pick = min(measured, key=shortfall)
        for key in limits:
            checks = [b for t in measured for b in t.budgets if b["key"] == key and b["measured"] is not None]
            if checks and all(b["status"] == "fail" for b in checks):
                best = min(checks, key=lambda b: b["excess"])
                op = "<=" if KEYS[key].upper else ">="
                missed.append(f"{key}: no trial is {op} {best['limit']:g} {best['unit']}; the best is "
                              f"{best['measured']:.4g} {best['unit']} (off by {best['excess']:.4g} {best['unit']})")
    else:
        pick = None
    if pick is not None:
        pick.picked = True
        _ship(Path(pick.bundle), out, pick, target)
    report = _write_report(trials, folder, store)
    if pick is None:
        say("search: every trial failed; see the report")
    elif feasible:
        say(f"search: picked trial #{pick.number} {pick.recipe.describe()}: the {_best_word(objective)} of "
            f"{len(feasible)} trial(s) within budgets on the Pareto front ({len(front)} of {len(measured)} measured)")
    else:
        say(f"search: no trial is within every budget; shipped the closest, trial #{pick.number} "
            f"{pick.recipe.describe()}")
        for m in missed:
            say(f"  {m}")
    return SearchResult(trials, pick, bool(feasible), missed, folder, report)


def _best_word(objective: str) -> str:
    return {"latency": "fastest", "size": "smallest", "metric": "most accurate", "memory": "leanest"}[objective]


def _ship(bundle: Path, out: Path, pick: Trial, target: str) -> None:
    """The picked trial's bundle to ``out``, atomically (its manifest says which search trial it is)."""
    from edgekit.bundle import BundleWriter, verify

    manifest, problems = verify(bundle)
    if problems:
        raise EdgekitError(f"the picked trial's bundle {bundle} is damaged: {problems[0]}")
    with BundleWriter(out, force=True) as writer:
        for item in bundle.iterdir():
            if item.name == "manifest.json":
                continue
            dest = writer.staging / item.name
            shutil.copytree(item, dest) if item.is_dir() else shutil.copy2(item, dest)
        manifest["search"] = {"trial": pick.number, "recipe": asdict(pick.recipe), "hash": pick.hash, "target": target,
                              "pareto": pick.pareto, "within_budgets": pick.within_budgets,
                              "measured": {"latency_p50_ms": pick.latency_p50_ms, "peak_memory_mb": pick.peak_memory_mb,
                                           pick.metric or "metric": pick.value}}
        writer.commit(manifest)


def _write_report(trials: list[Trial], folder: Path, store: Any) -> Path | None:
    """Every trial in one report (``<out>.search/report.html``): its artifact as built, its run where it ran,
    and the failed ones with their reasons."""
    from edgekit.report import Report, Variant, from_bundle, from_run, write_report

    variants: list[Variant] = []
    for t in sorted(trials, key=lambda t: t.number):
        name = f"trial #{t.number}: {t.recipe.describe()}"
        if t.state == "failed":
            variants.append(Variant(name, "search", "trial", note=f"failed: {t.error}", where="not measured"))
            continue
        if t.state != "measured" or not t.bundle or not Path(t.bundle, "manifest.json").is_file():
            continue
        built = from_bundle(Path(t.bundle))[0][-1]  # the artifact that ships (quantized, or the fp32 one)
        built.name, built.budgets = name + " (as validated)", []  # the budgets are the run's, below
        variants.append(built)
        run = None
        if store is not None and t.run_id:
            try:
                run = store.get(t.run_id)
            except Exception:  # noqa: BLE001 - a store that lost the run: the build row still stands
                run = None
        if run is not None:
            row = from_run(run)
            row.name, row.note, row.source = name, "picked" if t.picked else "", t.bundle
            row.pareto = t.pareto  # the search's front: metric, latency, size and memory as measured by the runs
            variants.append(row)
    for i, v in enumerate(variants, 1):
        v.number = i
    distinct = [t for t in trials if t.state in ("measured", "failed")]
    notes = [f"{len(distinct)} recipes tried ({sum(t.state == 'failed' for t in distinct)} failed); "
             f"{len(trials) - len(distinct)} more proposals of the sampler were recipes already measured. "
             "Pareto: on the front of the runs' metric, latency p50, size and peak memory."]
    return write_report(Report(f"edgekit search — {len(distinct)} recipes", variants, notes=notes), folder)["html"]
