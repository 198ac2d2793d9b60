"""Device-side steps shared by the transports that reach a POSIX shell: ssh and adb.

The device needs ``sh``, ``find``, ``sha256sum``, ``env`` and ``kill`` (coreutils on a
Linux board, toybox on Android) and, as a backstop, ``timeout``.

A push is checked on the device: every file's sha256 must equal the local copy's, so a
transfer cut short is an INFRA_ERROR, never a confusing runtime error later.

The runner is started by a short script that records its process id in the work folder
(``runner.pid``; the remote shell is a session leader, so that is also its process group)
and execs the interpreter with an empty environment plus PATH, HOME, LANG, TMPDIR (the
work folder) and PYTHONPATH (the pushed runner). At the run timeout the local client's
process group is killed, then the device's group through a fresh connection; a device-side
``timeout`` :data:`BACKSTOP_S` later kills the runner if the device could not be reached.
"""

from __future__ import annotations

import shlex
from abc import abstractmethod
from pathlib import Path

from edgekit.bundle import sha256_file
from edgekit.transport.base import CommandTimeout, Completed, InfraError, Target, Transport, tail

BACKSTOP_S = 30
NO_WORKDIR, NO_PYTHON = 90, 91  # exit codes of the start script itself
DEVICE_TIMEOUT_RC = (124, 137)  # `timeout` fired (137: it had to send KILL)
PID_FILE = "runner.pid"


class ShellTransport(Transport):
    default_python = "python3"

    def __init__(self, target: Target, connect_timeout: float = 10.0, transfer_timeout: float = 300.0):
        super().__init__(target, connect_timeout, transfer_timeout)
        self.python = target.python or self.default_python
        self._workdirs: list[str] = []
        self._running: set[str] = set()  # work folders whose runner may still be running

    @abstractmethod
    def _copy(self, sources: list[Path], remote_dir: str) -> None:
        """Copy files/folders into the existing ``remote_dir`` (each lands under its own name)."""

    def sh(self, script: str, timeout: float) -> Completed:
        return self.run(["sh", "-c", script], timeout)

    def push(self, local_dir: Path, remote_dir: str) -> None:
        self._copy(sorted(Path(local_dir).iterdir()), remote_dir)
        self._verify(Path(local_dir), remote_dir)

    def _verify(self, local_dir: Path, remote_dir: str) -> None:
        expected = {p.relative_to(local_dir).as_posix(): sha256_file(p)
                    for p in sorted(local_dir.rglob("*")) if p.is_file()}
        c = self.sh(f"cd {shlex.quote(remote_dir)} && find . -type f -exec sha256sum {{}} +", self.transfer_timeout)
        if c.rc != 0:
            raise InfraError(f"cannot check the pushed files on {self.name} (sha256sum exit {c.rc}): "
                             f"{tail(c.stderr, 2)}", retryable=c.rc != 127, stderr=c.stderr)
        found = {}
        for line in c.stdout.splitlines():
            digest, _, name = line.strip().partition(" ")
            found[name.strip().lstrip("*").removeprefix("./")] = digest
        problems = [f"{rel} missing" for rel in expected if rel not in found]
        problems += [f"{rel} differs (sha256)" for rel, d in expected.items() if rel in found and found[rel] != d]
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise InfraError(f"the push to {self.name} was incomplete: {'; '.join(problems[:3])}{more} "
                             "(the transfer was cut short or corrupted)")

    def run_runner(self, workdir: str, args: list[str], timeout: float) -> Completed:
        self._running.add(workdir)  # until it is known to have ended (cleanup kills it otherwise, e.g. on Ctrl-C)
        try:
            c = self.sh(runner_script(workdir, self.python, args, timeout + BACKSTOP_S), timeout)
        except CommandTimeout as e:
            self._kill_runner(workdir)
            raise CommandTimeout(f"the runner did not finish within {timeout:g} s on {self.name}; it was killed "
                                 "(raise --timeout if the model is just slow)", retryable=False,
                                 stderr=e.stderr) from None
        self._running.discard(workdir)
        if c.rc in DEVICE_TIMEOUT_RC:
            raise CommandTimeout(f"the runner was killed by the device-side timeout on {self.name}",
                                 retryable=False, stderr=c.stderr)
        if c.rc == NO_WORKDIR:
            raise InfraError(f"the work folder {workdir} vanished on {self.name}", stderr=c.stderr)
        if c.rc == NO_PYTHON:
            raise self._no_python()
        return c

    def _no_python(self) -> InfraError:
        return InfraError(f"no Python interpreter {self.python!r} on {self.name}; set one up (see targets/) "
                          "or pass --python PATH", retryable=False)

    def _kill_runner(self, workdir: str) -> None:
        """Kill the runner's process group on the device (best effort: the backstop timeout remains)."""
        try:
            self.sh(kill_script(workdir), self.connect_timeout + 10)
            self._running.discard(workdir)
        except InfraError:
            pass

    def _remember(self, workdir: str) -> str:
        self._workdirs.append(workdir)
        return workdir

    def cleanup(self) -> list[str]:
        warnings = []
        for workdir in self._workdirs:
            if workdir in self._running:  # interrupted mid-run (Ctrl-C): stop the runner first
                self._kill_runner(workdir)
            try:
                c = self.sh(f"rm -rf {shlex.quote(workdir)}", self.connect_timeout + 10)
                if c.rc != 0:
                    warnings.append(f"could not remove {workdir} on {self.name}: {tail(c.stderr, 1)}")
            except InfraError as e:
                warnings.append(f"could not remove {workdir} on {self.name}: {e}")
        self._workdirs.clear()
        return warnings


def shell_word(path: str) -> str:
    """``path`` quoted for sh, except that a leading ``~/`` still means the device user's home."""
    return f'"$HOME"/{shlex.quote(path[2:])}' if path.startswith("~/") else shlex.quote(path)


def kill_script(workdir: str) -> str:
    """Kill the process group recorded in ``workdir/runner.pid`` (its children if it is not a group leader)."""
    pid_file = shlex.quote(f"{workdir}/{PID_FILE}")
    return (f'p=$(cat {pid_file} 2>/dev/null) && [ -n "$p" ] && '
            '{ kill -s KILL -- "-$p" 2>/dev/null || { pkill -KILL -P "$p"; kill -s KILL "$p"; }; }; true')


def runner_script(workdir: str, python: str, args: list[str], backstop_s: float) -> str:
    """The device-side start script (POSIX sh; dash, bash, mksh and toybox all run it)."""
    w, py = shlex.quote(workdir), shell_word(python)
    missing = shlex.quote(f"edgekit: no Python interpreter {python!r} on this device")
    clean_env = f'env -i PATH="$PATH" HOME="${{HOME:-/}}" LANG=C.UTF-8 TMPDIR={w} PYTHONPATH={w}/runner'
    runner = shlex.join(["-m", "edgekit_runner", f"{workdir}/bundle", "--out", f"{workdir}/report.json", *args])
    return "\n".join([
        f"cd {w} || exit {NO_WORKDIR}",
        f"echo $$ > {PID_FILE}",
        f"command -v {py} >/dev/null 2>&1 || {{ echo {missing} >&2; exit {NO_PYTHON}; }}",
        f"if command -v timeout >/dev/null 2>&1; then set -- timeout -k 5 {int(backstop_s)}; fi",
        f'exec {clean_env} "$@" {py} {runner}',
    ])
