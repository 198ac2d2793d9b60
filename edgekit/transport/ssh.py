"""``ssh://user@host[:port]``: a board reached with the system's OpenSSH client (ssh, scp).

Key-based only: ``BatchMode=yes`` means ssh never waits for a password or a prompt.
Host keys are trusted on first use (``StrictHostKeyChecking=accept-new``) and kept in
``$EDGEKIT_HOME/known_hosts``, so a device whose key later changes is refused, and
edgekit never edits ``~/.ssh/known_hosts``. The work folder is ``mktemp -d`` under the
device's ``$TMPDIR`` (default ``/tmp``) and is removed after the run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from edgekit.results import checked_home
from edgekit.transport.base import CommandTimeout, Completed, InfraError, Target, run_process, tail
from edgekit.transport.shell import ShellTransport, shell_word

SSH_FAILED = 255  # ssh's own exit status for connection, authentication and protocol failures
_UNREACHABLE = re.compile(r"connection refused|timed out|no route to host|network is unreachable|"
                          r"could not resolve hostname|connection (reset|closed)|broken pipe", re.IGNORECASE)


class SshTransport(ShellTransport):
    def __init__(self, target: Target, connect_timeout: float = 10.0, transfer_timeout: float = 300.0,
                 known_hosts: Path | None = None):
        super().__init__(target, connect_timeout, transfer_timeout)
        self.known_hosts = known_hosts or checked_home() / "known_hosts"

    def _options(self) -> list[str]:
        t = self.target
        opts = {"BatchMode": "yes", "StrictHostKeyChecking": "accept-new", "UserKnownHostsFile": str(self.known_hosts),
                "ConnectTimeout": str(max(1, round(self.connect_timeout))), "ServerAliveInterval": "5",
                "ServerAliveCountMax": "3", "LogLevel": "ERROR"}
        if t.port:
            opts["Port"] = str(t.port)
        if t.identity:
            opts |= {"IdentityFile": str(t.identity), "IdentitiesOnly": "yes"}
        # ssh keeps the first value it sees for an option, so the user's come first and win
        return [a for opt in [*t.ssh_options, *(f"{k}={v}" for k, v in opts.items())] for a in ("-o", opt)]

    def _user_host(self, bracket_ipv6: bool = False) -> str:
        host = self.target.host or ""
        if bracket_ipv6 and ":" in host:
            host = f"[{host}]"
        return f"{self.target.user}@{host}" if self.target.user else host

    def _ssh(self, command: str, timeout: float) -> Completed:
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        c = run_process(["ssh", *self._options(), self._user_host(), command], timeout)
        if c.timed_out:
            raise CommandTimeout(f"ssh to {self.target} did not answer within {timeout:g} s", stderr=c.stderr)
        if c.rc == SSH_FAILED:
            raise self._error(c.stderr)
        return c

    def _scp(self, args: list[str], what: str) -> None:
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        c = run_process(["scp", "-q", *self._options(), *args], self.transfer_timeout)
        if c.timed_out:
            raise CommandTimeout(f"{what} via scp did not finish within {self.transfer_timeout:g} s", stderr=c.stderr)
        if c.rc != 0:
            raise self._error(c.stderr, what)

    def _error(self, stderr: str, what: str = "ssh") -> InfraError:
        t, detail = self.target, tail(stderr, 3).replace("\r", "").replace("\n", " | ") or "no message"
        if "Permission denied" in stderr:
            return InfraError(f"{t} refused the key ({detail}); install your public key on the device "
                              f"(ssh-copy-id {self._user_host()}) or pass --identity FILE", retryable=False,
                              stderr=stderr)
        if "Host key verification failed" in stderr or "IDENTIFICATION HAS CHANGED" in stderr:
            port = f"[{t.host}]:{t.port}" if t.port else t.host
            return InfraError(f"{t}'s host key differs from the one recorded in {self.known_hosts}; if the device "
                              f"was reinstalled, remove the old key: ssh-keygen -R '{port}' -f {self.known_hosts}",
                              retryable=False, stderr=stderr)
        if _UNREACHABLE.search(stderr):
            return InfraError(f"cannot reach {t} ({detail}); is the device on and its ssh server running?",
                              stderr=stderr)
        return InfraError(f"{what} to {t} failed: {detail}", stderr=stderr)

    def connect(self) -> None:
        """One round trip: the shell runs a command, and the interpreter is there."""
        py = shell_word(self.python)
        c = self._ssh(f"echo edgekit-ready; command -v {py} >/dev/null 2>&1 || echo edgekit-no-python",
                      self.connect_timeout + 5)
        if "edgekit-ready" not in c.stdout:
            raise InfraError(f"{self.target} answered but the shell did not run a command (exit {c.rc}): "
                             f"{tail(c.stderr, 2)}", retryable=False, stderr=c.stderr)
        if "edgekit-no-python" in c.stdout:
            raise self._no_python()

    def make_workdir(self) -> str:
        c = self._ssh('mktemp -d "${TMPDIR:-/tmp}/edgekit-XXXXXXXX"', self.connect_timeout + 10)
        path = c.stdout.strip().splitlines()[-1] if c.stdout.strip() else ""
        if c.rc != 0 or not path.startswith("/"):
            raise InfraError(f"cannot create a work folder on {self.target} (mktemp exit {c.rc}): {tail(c.stderr, 2)}",
                             retryable=False, stderr=c.stderr)
        return self._remember(path)

    def run(self, argv: list[str], timeout: float) -> Completed:
        return self._ssh(shlex.join(argv), timeout)

    def _copy(self, sources: list[Path], remote_dir: str) -> None:
        self._scp(["-r", *map(str, sources), f"{self._user_host(True)}:{remote_dir}/"], f"push to {self.target}")

    def pull(self, remote_file: str, local_file: Path) -> None:
        self._scp([f"{self._user_host(True)}:{remote_file}", str(local_file)], f"pull from {self.target}")
