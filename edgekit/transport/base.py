"""The transport contract: how edgekit reaches a device, and how a run on it ends.

A transport copies a staged folder (the bundle and the runner) to a device, runs
the runner there, pulls the report back and removes what it created. ``TARGET``
strings name one:

    local                                  a subprocess on this host
    ssh://user@host[:port]                 the system's OpenSSH client, key-based
    adb | adb:SERIAL                       the Android platform tools' adb client
    emu:PROFILE[?cpu=MODEL]                the profile's arm64 CPU under QEMU on this host (edgekit.emu)

Each takes ``?python=PATH`` (the device's interpreter); ssh also takes
``identity=FILE`` and ``ssh_option=Key=Value`` (repeatable), e.g.
``ssh://pi@raspberrypi.local?python=/home/pi/edgekit/bin/python``.

Failures come in two kinds that the caller treats differently: :class:`InfraError`
(device unreachable, transfer cut short, runner hung; retried when ``retryable``)
and a runner report with status ``MODEL_ERROR`` (the runtime refused the model;
never retried, retrying cannot change the answer).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edgekit_runner.report import INFRA_ERROR, MODEL_ERROR, OK

from edgekit.errors import EdgekitError

__all__ = [
    "INFRA_ERROR",
    "MODEL_ERROR",
    "OK",
    "CommandTimeout",
    "Completed",
    "InfraError",
    "ModelError",
    "RunOutcome",
    "Target",
    "TargetError",
    "Transport",
    "parse_target",
    "run_process",
    "tail",
]

TARGET_FORMS = "local, ssh://user@host[:port], adb, adb:SERIAL or emu:PROFILE"


class TargetError(EdgekitError):
    """The ``--on`` target is malformed or names no known transport."""

    exit_code = 2


class InfraError(EdgekitError):
    """The device or the way to it failed (not the model). ``retryable``: another attempt may succeed."""

    exit_code = 8

    def __init__(self, message: str, *, retryable: bool = True, stderr: str = ""):
        super().__init__(message)
        self.retryable = retryable
        self.stderr = stderr


class CommandTimeout(InfraError):
    """A command on or towards the device did not finish in time; its local process group was killed."""


class ModelError(EdgekitError):
    """The device's runtime refused or failed to run the model (status MODEL_ERROR)."""

    exit_code = 9


@dataclass(frozen=True)
class Target:
    kind: str  # "local" | "ssh" | "adb" | "emu"
    host: str | None = None
    user: str | None = None
    port: int | None = None
    serial: str | None = None
    python: str | None = None
    identity: Path | None = None
    ssh_options: tuple[str, ...] = ()
    profile: str | None = None  # emu: the device profile whose CPU is emulated
    cpu: str | None = None  # emu: a QEMU CPU model instead of the profile's

    def __str__(self) -> str:
        if self.kind == "ssh":
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            return f"ssh://{self.user + '@' if self.user else ''}{host}{f':{self.port}' if self.port else ''}"
        if self.kind == "adb":
            return f"adb:{self.serial}" if self.serial else "adb"
        if self.kind == "emu":
            return f"emu:{self.profile}" + (f"?cpu={self.cpu}" if self.cpu else "")
        return "local"


def parse_target(spec: str, *, python: str | None = None, identity: Path | None = None,
                 ssh_options: tuple[str, ...] = ()) -> Target:
    """Parse a ``--on`` value; keyword options (from CLI flags) override the spec's query.

    >>> t = parse_target("ssh://pi@raspberrypi.local:2222?python=/usr/bin/python3")
    >>> t.user, t.host, t.port, t.python
    ('pi', 'raspberrypi.local', 2222, '/usr/bin/python3')
    """
    spec = spec.strip()
    base, _, query = spec.partition("?")
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise TargetError(f"target {spec!r}: cannot read the options after '?' (use key=value&key=value)") from None
    allowed = {"python"} | ({"identity", "ssh_option"} if base.startswith("ssh://") else set())
    if base.startswith("emu:"):
        allowed = {"cpu"}  # the interpreter is the emulated root's (one venv per runtime)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise TargetError(f"target {spec!r}: unknown option {unknown[0]!r}; "
                          f"this target takes: {', '.join(sorted(allowed))}")
    python = python or (params.get("python") or [None])[-1] or None
    if base == "local":
        return Target("local", python=python)
    if base == "adb" or base.startswith("adb:"):
        serial = base[4:] or None
        if base.startswith("adb:") and not serial:
            raise TargetError(f"target {spec!r}: give the device serial after 'adb:' (see `adb devices`) or use 'adb'")
        return Target("adb", serial=serial, python=python)
    if base.startswith("emu:"):
        profile, cpu = base[4:], (params.get("cpu") or [None])[-1] or None
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", profile):
            raise TargetError(f"target {spec!r}: give a device profile after 'emu:', e.g. emu:raspberry-pi-5")
        if cpu is not None and not re.fullmatch(r"[a-z0-9][a-z0-9,=.-]*", cpu):
            raise TargetError(f"target {spec!r}: cpu must be a QEMU CPU model, e.g. cpu=cortex-a76 or cpu=max")
        if python:
            raise TargetError(f"target {spec!r}: --python does not apply; the emulated root has one venv per "
                              "runtime")
        return Target("emu", profile=profile, cpu=cpu)
    if base.startswith("ssh://"):
        return _parse_ssh(spec, base, params, python, identity, ssh_options)
    raise TargetError(f"unknown target {spec!r}; use one of: {TARGET_FORMS}")


def _parse_ssh(spec: str, base: str, params: dict[str, list[str]], python: str | None, identity: Path | None,
               ssh_options: tuple[str, ...]) -> Target:
    url = urlsplit(base)
    try:
        port = url.port
        if port == 0:
            raise ValueError("port 0")
    except ValueError:
        raise TargetError(f"target {spec!r}: the port must be a number from 1 to 65535") from None
    if not url.hostname:
        raise TargetError(f"target {spec!r}: no host; write ssh://user@host[:port]")
    if url.path not in ("", "/"):
        raise TargetError(f"target {spec!r}: a path is not allowed after the host (options go after '?')")
    if url.password is not None:
        raise TargetError(f"target {spec!r}: passwords are not supported; ssh uses keys (see --identity)")
    identity = identity or (Path(params["identity"][-1]).expanduser() if params.get("identity") else None)
    if identity is not None and not identity.is_file():
        raise TargetError(f"target {spec!r}: the identity file {identity} does not exist")
    options = tuple(params.get("ssh_option", [])) + tuple(ssh_options)
    for opt in options:
        if "=" not in opt or opt.startswith("-"):
            raise TargetError(f"ssh option {opt!r} must be Key=Value, as for `ssh -o` (e.g. ProxyJump=gateway)")
    return Target("ssh", host=url.hostname, user=url.username, port=port, python=python, identity=identity,
                  ssh_options=options)


@dataclass
class Completed:
    rc: int
    stdout: str
    stderr: str
    timed_out: bool = False


def run_process(argv: list[str], timeout: float, *, env: dict[str, str] | None = None,
                cwd: str | Path | None = None) -> Completed:
    """Run ``argv`` in its own process group; at ``timeout`` kill the whole group (children included).

    A program that is not installed raises a non-retryable InfraError naming it.
    """
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=cwd, start_new_session=True, text=True, errors="replace")
    except FileNotFoundError:
        raise InfraError(f"{argv[0]} is not installed on this host (or not on PATH)", retryable=False) from None
    try:
        out, err = proc.communicate(timeout=timeout)
        return Completed(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
    except BaseException:  # Ctrl-C: leave nothing running
        _kill_group(proc)
        raise
    try:  # a process outside the group (e.g. on a device) may still hold the pipes: read briefly, then let go
        out, err = proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        out, err = "", ""
        for stream in (proc.stdout, proc.stderr):
            stream.close()
    return Completed(proc.returncode if proc.returncode is not None else -signal.SIGKILL, out, err, timed_out=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def tail(text: str, lines: int = 20, chars: int = 4000) -> str:
    """The last lines of a program's output, for messages and outcomes."""
    return "\n".join(text.strip().splitlines()[-lines:])[-chars:]


@dataclass
class RunOutcome:
    """How one ``edgekit bench`` run ended: the status, the runner's report if one came back, what it took."""

    status: str  # OK | MODEL_ERROR | INFRA_ERROR
    target: str
    attempts: int
    report: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    error: str | None = None
    stderr_tail: str = ""
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # push / run / pull of the last attempt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Transport(ABC):
    """One device. ``connect`` first; ``cleanup`` always (it removes every work folder made)."""

    def __init__(self, target: Target, connect_timeout: float = 10.0, transfer_timeout: float = 300.0):
        self.target = target
        self.connect_timeout = connect_timeout
        self.transfer_timeout = transfer_timeout
        self.on_step: Callable[[str], None] = lambda _message: None  # progress of long steps (run_bundle's)

    @property
    def name(self) -> str:
        """The device, as messages name it."""
        return str(self.target)

    @abstractmethod
    def connect(self) -> None:
        """Check that the device answers and has an interpreter; raise InfraError if not."""

    @abstractmethod
    def make_workdir(self) -> str:
        """Create a fresh empty folder on the device and return its path."""

    @abstractmethod
    def push(self, local_dir: Path, remote_dir: str) -> None:
        """Copy the contents of ``local_dir`` into the existing ``remote_dir``; a short copy raises InfraError."""

    @abstractmethod
    def run(self, argv: list[str], timeout: float) -> Completed:
        """Run ``argv`` on the device; a transport failure raises InfraError, a timeout CommandTimeout."""

    @abstractmethod
    def run_runner(self, workdir: str, args: list[str], timeout: float) -> Completed:
        """Run ``python -m edgekit_runner`` in ``workdir`` with a clean environment; kill it at ``timeout``."""

    @abstractmethod
    def pull(self, remote_file: str, local_file: Path) -> None:
        """Copy one file back from the device."""

    def annotate(self, report: dict[str, Any]) -> None:
        """Add what the transport knows of where the report was made (emu: the emulator); nothing by default."""

    @abstractmethod
    def cleanup(self) -> list[str]:
        """Remove what this transport created on the device; return warnings for what could not be removed."""
