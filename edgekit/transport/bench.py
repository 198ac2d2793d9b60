"""Run a bundle on a target: verify -> stage -> connect -> push -> run -> pull -> parse, with retries.

The bundle is verified before anything moves: a missing or modified file refuses the
run (BundleError) and nothing is pushed. What travels is a staged copy: the files the
manifest lists under ``bundle/`` and this host's runner under ``runner/edgekit_runner``
(the runner's flags are the ones this edgekit passes; the bundle's own copy stays as
it was built). Infrastructure failures are retried ``retries`` times with exponential
backoff when they may be transient; a MODEL_ERROR report and a hung runner are not
(the same model would fail or hang again, and each retry of a hang costs ``timeout``).

>>> outcome = run_bundle(Path("build/pixel8"), "ssh://pi@raspberrypi.local", runs=100)  # doctest: +SKIP
>>> outcome.status, outcome.report["latency_ms"]["p50"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgekit_runner import safejson
from edgekit_runner.files import UnsafeFile, open_regular, read_regular
from edgekit_runner.report import EXIT_CODES
from edgekit_runner.upload import MAX_REPORT_BYTES

from edgekit.bundle import MANIFEST, verify
from edgekit.errors import BundleError
from edgekit.transport.base import (
    INFRA_ERROR,
    OK,
    Completed,
    InfraError,
    RunOutcome,
    Target,
    TargetError,
    Transport,
    parse_target,
    tail,
)

RUNNER_EXIT = {code: status for status, code in EXIT_CODES.items()}  # the runner's exit code -> status
MAX_BACKOFF_S = 30.0


def open_transport(target: Target, connect_timeout: float = 10.0, transfer_timeout: float = 300.0) -> Transport:
    """The transport for a parsed target (imports only the one needed)."""
    if target.kind == "local":
        from edgekit.transport.local import LocalTransport as cls
    elif target.kind == "ssh":
        from edgekit.transport.ssh import SshTransport as cls
    elif target.kind == "adb":
        from edgekit.transport.adb import AdbTransport as cls
    elif target.kind == "emu":
        from edgekit.transport.emu import EmuTransport as cls
    else:
        raise TargetError(f"unknown target kind {target.kind!r}")
    return cls(target, connect_timeout, transfer_timeout)


def run_bundle(bundle: Path, target: str | Target, runs: int | None = None, warmup: int | None = None,
               threads: int | None = None, timeout: float = 600.0, retries: int = 2, *,
               runner_args: Sequence[str] = (), connect_timeout: float = 10.0, transfer_timeout: float = 300.0,
               backoff: float = 1.0, on_step: Callable[[str], None] | None = None) -> RunOutcome:
    """Measure ``bundle`` on ``target``; the outcome's status is OK, MODEL_ERROR or INFRA_ERROR.

    ``runs``/``warmup``/``threads`` go to the runner (None: the runner's defaults), then ``runner_args``
    unchanged (e.g. ``["--min-seconds", "2", "--cpus", "4-7"]``). ``timeout``
    bounds the runner's run; ``connect_timeout`` each control command; ``transfer_timeout``
    each push/pull. Raises BundleError (nothing pushed) for a bundle that fails verification.
    """
    bundle = Path(bundle)
    target = parse_target(target) if isinstance(target, str) else target
    manifest, problems = verify(bundle)
    if problems:
        raise BundleError(f"{bundle} failed verification, nothing was pushed: {'; '.join(problems)}; "
                          "rebuild it (edgekit build --force) or restore the files")
    args = [a for flag, v in (("--runs", runs), ("--warmup", warmup), ("--threads", threads)) if v is not None
            for a in (flag, str(v))] + list(runner_args)
    step = on_step or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        staging = stage(bundle, manifest, Path(tmp) / "push")
        staged_manifest, problems = verify(staging / "bundle")  # what is pushed is what was checked
        if problems or staged_manifest != manifest:
            raise BundleError(f"{bundle} changed while it was copied for the push (rebuilt meanwhile?); nothing was "
                              f"pushed; run bench again")
        attempt = 0
        while True:
            attempt += 1
            transport = open_transport(target, connect_timeout, transfer_timeout)
            transport.on_step = step
            seconds: dict[str, float] = {}
            try:
                outcome = _attempt(transport, staging, args, timeout, Path(tmp) / f"report-{attempt}.json",
                                   seconds, step)
            except InfraError as e:
                warnings = transport.cleanup()
                if e.retryable and attempt <= retries:
                    delay = min(MAX_BACKOFF_S, backoff * 2 ** (attempt - 1))
                    step(f"attempt {attempt} failed: {e}; retrying in {delay:g} s")
                    time.sleep(delay)
                    continue
                return RunOutcome(INFRA_ERROR, transport.name, attempt, manifest=manifest, error=str(e),
                                  stderr_tail=tail(e.stderr), warnings=warnings, seconds=seconds)
            except BaseException:  # Ctrl-C included: stop the runner on the device and remove its folder
                transport.cleanup()
                raise
            outcome.attempts, outcome.manifest, outcome.seconds = attempt, manifest, seconds
            outcome.warnings += transport.cleanup()
            return outcome


def stage(bundle: Path, manifest: dict[str, Any], dest: Path) -> Path:
    """``dest/bundle`` (the listed files and the manifest) and ``dest/runner/edgekit_runner`` (this host's)."""
    import edgekit_runner

    for rel in [*manifest["files"], MANIFEST]:
        target = dest / "bundle" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open_regular(bundle / rel) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        except (OSError, UnsafeFile) as e:
            raise BundleError(f"{bundle / rel} cannot be copied for the push: {e}; nothing was pushed") from None
    shutil.copytree(Path(edgekit_runner.__file__).parent, dest / "runner" / "edgekit_runner",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _attempt(transport: Transport, staging: Path, args: list[str], timeout: float, report_file: Path,
             seconds: dict[str, float], step: Callable[[str], None]) -> RunOutcome:
    step(f"connecting to {transport.name}")
    transport.connect()
    t = transport.name  # after connect: adb knows the serial
    workdir = transport.make_workdir()
    step(f"pushing the bundle and the runner to {t}:{workdir}")
    with _timed(seconds, "push"):
        transport.push(staging, workdir)
    step(f"running on {t} (timeout {timeout:g} s)")
    with _timed(seconds, "run"):
        c = transport.run_runner(workdir, args, timeout)
    status = RUNNER_EXIT.get(c.rc)
    if status is None:
        last = tail(c.stderr, 1) or "no message"
        hint = ("; install numpy and the bundle's runtime for that Python (see targets/)"
                if "ModuleNotFoundError" in last or "ImportError" in last else "")
        raise InfraError(f"the runner on {t} stopped without a report (exit {c.rc}): {last}{hint}",
                         retryable=False, stderr=c.stderr)
    with _timed(seconds, "pull"):
        report, warnings = _fetch_report(transport, f"{workdir}/report.json", report_file, c)
    transport.annotate(report)
    status = report.get("status", status)
    if status not in RUNNER_EXIT.values():
        raise InfraError(f"the runner on {t} returned a report with an unknown status {status!r}", retryable=False)
    error = report.get("error") if status != OK else None
    return RunOutcome(status, t, 0, report=report, error=error, stderr_tail=tail(c.stderr), warnings=warnings)


def _fetch_report(transport: Transport, remote: str, local: Path, run: Completed) -> tuple[dict[str, Any], list[str]]:
    """The pulled report file, or the copy the runner printed on stdout if the pull failed (with a warning)."""
    warnings = []
    try:
        transport.pull(remote, local)
        text = read_regular(local, MAX_REPORT_BYTES).decode("utf-8", "replace")
    except (InfraError, UnsafeFile) as e:
        text = run.stdout
        warnings.append(f"the report file could not be pulled ({e}); used the copy the runner printed")
    try:
        report = safejson.loads(text, "the report")
    except safejson.JsonError as e:
        if text.strip():  # something came back, but not a report this host can use
            raise InfraError(f"the report from {transport.name} is unusable: {e}", retryable=False,
                             stderr=run.stderr) from None
        report = None
    if not isinstance(report, dict):  # the runner exited without writing one (e.g. it refused its arguments)
        raise InfraError(f"no report came back from {transport.name} (runner exit {run.rc}): "
                         f"{tail(run.stderr, 1) or 'no message'}", retryable=False, stderr=run.stderr)
    return report, warnings


@contextlib.contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = round(time.perf_counter() - t0, 3)
