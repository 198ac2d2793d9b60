"""``python -m edgekit_runner BUNDLE``: measure a bundle in its runtime and print a JSON report (schema 2).

Order of a run: device facts; CPU pinning (--cpus); the bundle is read and its model and eval
files checked against the manifest's sha256; the runtime is imported, then the model loaded
(memory peak of the load); first inference, warm-up and timed runs (memory peak of the runs);
the eval set for accuracy and agreement with the host's reference outputs (--no-accuracy skips).
A delegate / execution provider fallback is in the report's ``fallback`` and on stderr.

Exit codes: 0 OK, 2 the bundle or runtime cannot be used (INFRA_ERROR), 3 the runtime refused
or failed on the model (MODEL_ERROR).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_runner import evaluate, measure, runtimes, sysinfo
from edgekit_runner.files import UnsafeFile, describe_error, link_on_the_way, load_npz, sha256_file
from edgekit_runner.manifest import Manifest, ManifestError, read_manifest
from edgekit_runner.memory import MemoryProbe
from edgekit_runner.report import EXIT_CODES, INFRA_ERROR, MODEL_ERROR, OK, RunReport, write_atomic

TIMED_CALL = ("one inference on inputs handed to the runtime once (session.run / interpreter.invoke / "
              "method.execute); input conversion, int8 (de)quantization and output copies are not timed")


class BundleError(Exception):
    """The bundle cannot be used (missing, unreadable, or not what its manifest says)."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = measure.Settings(warmup_runs=args.warmup, warmup_seconds=args.warmup_seconds,
                                    min_runs=args.runs, min_seconds=args.min_seconds, max_seconds=args.max_seconds)
        cpus = measure.parse_cpus(args.cpus) if args.cpus else None
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1 (got {args.threads})")
        if args.collector:
            from edgekit_runner.upload import collector_settings

            collector_settings(args.collector, os.environ.get("EDGEKIT_TOKEN", "").strip())
    except ValueError as e:
        parser.error(str(e))
    report = run_bundle(args.bundle, settings, args.threads, cpus, accuracy=not args.no_accuracy)
    ok = _emit(report, args.out)
    if args.collector:
        _deliver(report.to_json(), args.collector, args.spool)
    return report.exit_code if ok else EXIT_CODES[INFRA_ERROR]


def _parser() -> argparse.ArgumentParser:
    d = measure.Settings()
    ap = argparse.ArgumentParser(prog="python -m edgekit_runner", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="bundle folder (holds manifest.json)")
    ap.add_argument("--runs", type=int, default=d.min_runs, help=f"minimum timed runs (default {d.min_runs})")
    ap.add_argument("--min-seconds", type=float, default=d.min_seconds,
                    help=f"minimum time in timed runs (default {d.min_seconds})")
    ap.add_argument("--warmup", type=int, default=d.warmup_runs,
                    help=f"minimum warm-up runs (default {d.warmup_runs})")
    ap.add_argument("--warmup-seconds", type=float, default=d.warmup_seconds,
                    help=f"minimum warm-up time (default {d.warmup_seconds})")
    ap.add_argument("--max-seconds", type=float, default=d.max_seconds,
                    help=f"stop warm-up and timed runs after this long, minimums met or not (default {d.max_seconds})")
    ap.add_argument("--threads", type=int, default=None, help="runtime intra-op threads (default: runtime's choice)")
    ap.add_argument("--cpus", default=None, help="pin to these CPUs, e.g. 0,1 or 4-7 (Linux/Android)")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the eval set (latency and memory only)")
    ap.add_argument("--out", "--output", dest="out", type=Path, default=None,
                    help="also write the report to this file (atomically)")
    ap.add_argument("--collector", default=None, metavar="URL",
                    help="also POST the report to this edgekit collector (token from $EDGEKIT_TOKEN); "
                         "kept in --spool and retried while it is unreachable")
    ap.add_argument("--spool", type=Path, default=None,
                    help="where undelivered reports wait (default: $EDGEKIT_HOME/spool, else ~/.edgekit/spool)")
    return ap


def _deliver(text: str, collector: str, spool: Path | None) -> None:
    """POST the report (signed); if the collector cannot have it now it stays in the spool, and stderr says so."""
    from edgekit_runner import upload

    token, spool_dir = os.environ["EDGEKIT_TOKEN"].strip(), spool or upload.default_spool_dir()
    try:
        outcome = upload.deliver(collector, token, text, spool_dir)
        if outcome.delivered:
            upload.flush_spool(collector, token, spool_dir)  # reports earlier runs could not deliver
    except OSError as e:  # the spool itself cannot be written
        print(f"edgekit_runner: WARNING: report not delivered and not spooled: {e}", file=sys.stderr)
        return
    level = "" if outcome.delivered else "WARNING: "
    print(f"edgekit_runner: {level}{outcome.describe()}", file=sys.stderr)


def _emit(report: RunReport, out: Path | None) -> bool:
    """Warn on stderr about what a reader must not miss, print the report, write --out; False if that failed.

    Delivery to a collector (--collector) follows, in main().
    """
    for warning in _warnings(report):
        print(f"edgekit_runner: WARNING: {warning}", file=sys.stderr)
    text = report.to_json()
    print(text, flush=True)
    if out:
        try:
            write_atomic(out, text)
        except OSError as e:
            print(f"edgekit_runner: error: cannot write the report to {out}: {e.strerror or e}; "
                  "pass --out a path in an existing, writable folder", file=sys.stderr)
            return False
    return True


def _warnings(report: RunReport) -> list[str]:
    found = []
    if report.fallback:
        found.append(f"fallback: {report.fallback}")
    cpus = report.timing.get("cpus")
    if cpus and not cpus["applied"]:
        found.append(f"--cpus not applied: {cpus['reason']}")
    if report.timing.get("capped"):
        found.append(f"stopped at --max-seconds {report.timing['settings']['max_seconds']:g} before the minimum "
                     f"runs and seconds were met ({report.timing['timed_runs']} timed runs)")
    return found


def run_bundle(bundle: Path, settings: measure.Settings | None = None, threads: int | None = None,
               cpus: list[int] | None = None, accuracy: bool = True) -> RunReport:
    """Measure ``bundle`` on this device; never raises for a bad bundle or model (the status says).

    >>> run_bundle(Path("build/pixel8"), measure.Settings(min_runs=100), threads=2).latency_ms["p50"]  # doctest: +SKIP
    """
    report = RunReport(INFRA_ERROR, {"path": str(bundle)}, device=sysinfo.collect())
    report.timing["cpus"] = measure.pin_cpus(cpus) if cpus else None  # before any runtime thread starts
    try:
        manifest, data = read_bundle(bundle)
    except BundleError as e:
        report.error = str(e)
        return report
    model_info = manifest.data["model"]
    report.bundle.update(profile=manifest.data["profile"]["id"], format=model_info["format"],
                         backend=model_info["backend"], precision=model_info["precision"],
                         model_sha256=manifest.files[manifest.model_file]["sha256"])
    inputs = [data[manifest.eval_inputs[t.name]] for t in manifest.forward.inputs]
    probe = MemoryProbe()
    probe.file_size("model_file_bytes", bundle / model_info["file"])
    probe.rss("baseline_rss_mb")
    if manifest.task == "language-model":
        _run_language_model(report, probe, bundle, manifest, data, settings or measure.Settings(), threads, accuracy)
        report.memory = probe.result()
        return report
    model = _load_and_time(report, probe, bundle / model_info["file"], model_info, inputs,
                           settings or measure.Settings(), threads)
    report.memory = probe.result()
    if model is not None and accuracy:
        try:
            outputs = dict(zip([t.name for t in manifest.forward.outputs], evaluate.run_dataset(model, inputs)))
            references = {name: data[key] for name, key in manifest.eval_references.items()}
            report.metrics = evaluate.score(manifest.task, outputs, data, references or None)
        except Exception as e:  # noqa: BLE001 -- any runtime error on the model is recorded, not raised
            _failed(report, e, model_info["runtime"])
    return report


def _import_runtime(report: RunReport, probe: MemoryProbe, runtime: str) -> bool:
    """Import the runtime (timed, RSS after); False with the report's error set when it is not installed."""
    try:
        t0 = time.perf_counter_ns()
        runtimes.import_runtime(runtime)
        report.timing["import_ms"] = (time.perf_counter_ns() - t0) / 1e6
    except ImportError as e:
        report.error = f"runtime {runtime!r} is not installed on this device: {e}"
        return False
    probe.rss("after_import_rss_mb")
    return True


def _run_language_model(report: RunReport, probe: MemoryProbe, bundle: Path, manifest: Manifest,
                        data: dict[str, np.ndarray], settings: measure.Settings, threads: int | None,
                        accuracy: bool) -> None:
    """A language-model bundle: decoding with its KV cache (:func:`edgekit_runner.lm.measure_bundle`)."""
    from edgekit_runner import lm

    runtime = manifest.data["model"]["runtime"]
    if not _import_runtime(report, probe, runtime):
        return
    try:
        lm.measure_bundle(report, probe, bundle / manifest.model_file, manifest, data, settings, threads, accuracy)
    except Exception as e:  # noqa: BLE001 -- any runtime error on the model is recorded, not raised
        _failed(report, e, runtime)


def _load_and_time(report: RunReport, probe: MemoryProbe, model_path: Path, model_info: dict[str, Any],
                   inputs: list[np.ndarray], settings: measure.Settings,
                   threads: int | None) -> runtimes.LoadedModel | None:
    """Import the runtime, load the model, time it; fills runtime, timing, latency, memory and the status."""
    runtime = model_info["runtime"]
    if not _import_runtime(report, probe, runtime):
        return None
    probe.reset_peak()
    try:
        t0 = time.perf_counter_ns()
        model = runtimes.load(model_path, runtime, threads, model_info.get("runtime_target"),
                              (model_info.get("export_details") or {}).get("qnn"))
        report.timing["load_ms"] = (time.perf_counter_ns() - t0) / 1e6
        probe.peak("peak_rss_load_mb")
        report.runtime, report.fallback = model.info, model.info.get("fallback")
        probe.reset_peak()
        batch = evaluate.batch_size(model)
        call = model.bound([np.ascontiguousarray(a[:batch]) for a in inputs])
        timing, report.latency_ms = measure.measure(call, settings)
    except Exception as e:  # noqa: BLE001 -- any runtime error on the model is recorded, not raised
        _failed(report, e, runtime)
        return None
    probe.peak("peak_rss_run_mb")
    probe.rss("rss_after_runs_mb")
    report.latency_ms["batch"] = batch
    report.timing.update(timing, timed_call=TIMED_CALL)
    report.status = OK
    return model


def _failed(report: RunReport, e: Exception, runtime: str) -> None:
    """Record why the runtime failed: a missing piece of it is INFRA_ERROR, anything else MODEL_ERROR."""
    if isinstance(e, ImportError):
        report.status, report.error = INFRA_ERROR, f"runtime {runtime!r} is incomplete on this device: {e}"
    else:  # the runtime refused or failed on the model: record its words, the host interprets
        report.status, report.error = MODEL_ERROR, f"{type(e).__name__}: {e}".splitlines()[0][:500]


def read_bundle(bundle: Path) -> tuple[Manifest, dict[str, np.ndarray]]:
    """The manifest and the eval arrays, after checking the manifest against its schema, the model and eval
    files against their sha256, and the eval arrays against the model's inputs and outputs and the task
    (declared shapes before anything is loaded, dtypes after)."""
    try:
        manifest = read_manifest(bundle)
    except ManifestError as e:
        raise BundleError(str(e)) from None
    for name in (manifest.model_file, manifest.eval_file):
        if link := link_on_the_way(bundle, name):
            raise BundleError(f"bundle file {name} is reached through the symbolic link {link}; a bundle holds its "
                              "files themselves: push the bundle again")
        expected = manifest.files.get(name, {}).get("sha256")
        if not expected:
            raise BundleError(f"manifest.json has no sha256 for {name}; rebuild the bundle")
        try:
            actual = sha256_file(bundle / name)
        except (OSError, UnsafeFile) as e:
            raise BundleError(f"bundle file {name} is missing or unusable: {describe_error(e)}; push the bundle "
                              "again") from None
        if actual != expected:
            raise BundleError(f"bundle file {name} does not match the sha256 in manifest.json (modified, or cut "
                              "short in transfer); push the bundle again or rebuild it")
    where = f"the eval set {bundle / manifest.eval_file}"
    problem = eval_problem(manifest)
    if problem is None:  # the declared shapes fit the model: load (load_npz checks the file against them)
        try:
            data = load_npz(bundle / manifest.eval_file, manifest.eval_arrays)
        except UnsafeFile as e:
            raise BundleError(f"cannot read the eval set: {e}") from None
        problem = eval_problem(manifest, {name: a.dtype.name for name, a in data.items()})
    if problem:
        raise BundleError(f"{where} {problem}; rebuild the bundle")
    return manifest, data


def eval_problem(manifest: Manifest, dtypes: dict[str, str] | None = None) -> str | None:
    """What is wrong with the eval arrays for the model and task the manifest describes, or None: each input
    and reference like its tensor (batch first), the task's own arrays (:mod:`edgekit_runner.tasks`).
    Checked on the declared shapes before anything is loaded, and with the loaded ``dtypes`` after."""
    from edgekit_runner.tasks import TASKS

    shapes, n = manifest.eval_arrays, manifest.data["eval"]["n_samples"]
    method = manifest.forward
    declared = [(t, manifest.eval_inputs.get(t.name)) for t in method.inputs]
    declared += [(t, manifest.eval_references[t.name]) for t in method.outputs if t.name in manifest.eval_references]
    if n == 0:
        return "has no samples"
    for spec, key in declared:
        if key is None or key not in shapes:
            return f"has no array for {spec.name!r}"
        shape = shapes[key]
        fixed = [(got, want) for got, want in zip(shape[1:], spec.shape[1:]) if isinstance(want, int)]
        if len(shape) != len(spec.shape) or shape[0] != n or any(got != want for got, want in fixed):
            return f"holds {key} of shape {list(shape)}; {spec.name!r} is {list(spec.shape)} (batch first, {n} samples)"
        if dtypes and dtypes[key] != spec.dtype:
            return f"holds {key} as {dtypes[key]}; {spec.name!r} is {spec.dtype}"
    task = TASKS.get(manifest.task)
    if task is not None:
        missing = [a for a in task.arrays if a not in shapes]
        if missing:
            return f"has no {missing[0]} array ({manifest.task} needs it)"
        problem = task.check_arrays(shapes, n, dtypes)
        if problem:
            return f"does not fit the task: {problem}"
    return None


if __name__ == "__main__":
    sys.exit(main())
