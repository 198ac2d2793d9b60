"""``adb`` / ``adb:SERIAL``: an Android device through the platform tools' ``adb`` client.

Only the client's own commands: ``adb devices`` (which devices, in which state),
``adb -s SERIAL get-state``, ``push``, ``shell`` and ``pull``. The work folder is
``/data/local/tmp/edgekit/<id>``, the place where adb's shell user may write and
execute. The interpreter is ``--python`` / ``adb:SERIAL?python=PATH`` if given, else
Termux's (:data:`TERMUX_PYTHON`), else ``python3`` or ``python`` on the device's PATH.
Termux's files belong to the Termux app, so adb's shell user can run them only on a
rooted device or an emulator; on a stock phone run Termux's sshd and use ``ssh://``
(see targets/android/README.md).
"""

from __future__ import annotations

import re
import shlex
import uuid
from pathlib import Path

from edgekit.transport.base import CommandTimeout, Completed, InfraError, Target, run_process, tail
from edgekit.transport.shell import ShellTransport, shell_word

TERMUX_PYTHON = "/data/data/com.termux/files/usr/bin/python"
REMOTE_ROOT = "/data/local/tmp/edgekit"
_CLIENT_ERROR = re.compile(r"^(adb: )?error: (.*)$", re.MULTILINE)  # how the adb client reports its own failures

# device states from `adb devices` other than "device": (what to tell the user, worth retrying)
_STATES = {
    "offline": ("is offline: replug the USB cable or run `adb reconnect`", True),
    "unauthorized": ("has not authorised this computer: unlock it and accept 'Allow USB debugging'", False),
    "authorizing": ("is still authorising this computer: accept the prompt on the device", True),
    "connecting": ("is still connecting", True),
    "no permissions": ("cannot be opened by this user: add a udev rule for it (see targets/android/README.md)",
                       False),
}


def parse_devices(text: str) -> dict[str, str]:
    """``adb devices`` output -> {serial: state}."""
    devices = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("List of devices", "*")):
            serial, _, state = line.replace("\t", " ", 1).partition(" ")
            devices[serial] = state.strip()
    return devices


class AdbTransport(ShellTransport):
    def __init__(self, target: Target, connect_timeout: float = 10.0, transfer_timeout: float = 300.0):
        super().__init__(target, connect_timeout, transfer_timeout)
        self.serial = target.serial
        self.python = target.python  # None until found on the device

    def _adb(self, args: list[str], timeout: float) -> Completed:
        argv = ["adb", *(["-s", self.serial] if self.serial else []), *args]
        c = run_process(argv, timeout)
        if c.timed_out:
            raise CommandTimeout(f"`adb {args[0]}` on {self._name()} did not finish within {timeout:g} s "
                                 "(the device or its USB connection stopped answering)", stderr=c.stderr)
        return c

    @property
    def name(self) -> str:
        return f"adb:{self.serial}" if self.serial else "adb"

    def _name(self) -> str:
        return f"device {self.serial}" if self.serial else "the Android device"

    def _state_error(self, state: str) -> InfraError:
        key = next((k for k in _STATES if state.startswith(k)), None)
        message, retryable = _STATES.get(key, (f"is in {state!r} mode, not booted into Android", False))
        return InfraError(f"{self._name()} {message}", retryable=retryable)

    def _client_error(self, stderr: str, what: str) -> InfraError:
        found = _CLIENT_ERROR.findall(stderr)
        detail = found[-1][1].strip() if found else (tail(stderr, 2) or "no message")
        for state in ("offline", "unauthorized"):
            if f"device {state}" in detail:
                return self._state_error(state)
        if "not found" in detail or "no devices" in detail:
            return InfraError(f"{self._name()} is not connected ({detail}); see `adb devices`", retryable=False,
                              stderr=stderr)
        if "more than one" in detail:
            return InfraError(f"several Android devices are connected; pick one with --on adb:SERIAL ({detail})",
                              retryable=False, stderr=stderr)
        return InfraError(f"adb {what} on {self._name()} failed: {detail}", stderr=stderr)

    def connect(self) -> None:
        if self.serial:
            c = self._adb(["get-state"], self.connect_timeout)
            if c.rc != 0 or c.stdout.strip() != "device":
                self._explain_state(c)
        else:
            self._pick_device()
        if self.python is None:
            self.python = self._find_python()
        elif self.sh(f"command -v {shell_word(self.python)}", self.connect_timeout).rc != 0:
            raise self._no_python()

    def _explain_state(self, get_state: Completed) -> None:
        """`get-state` failed: say why from `adb devices` (offline, unauthorised, absent...)."""
        listing = run_process(["adb", "devices"], self.connect_timeout)
        devices = parse_devices(listing.stdout)
        state = devices.get(self.serial or "")
        if state and state != "device":
            raise self._state_error(state)
        if state is None and listing.rc == 0:
            raise InfraError(f"{self._name()} is not connected; `adb devices` lists "
                             f"{', '.join(f'{s} ({st})' for s, st in devices.items()) or 'no device'}",
                             retryable=False, stderr=get_state.stderr)
        raise self._client_error(get_state.stderr, "get-state")

    def _pick_device(self) -> None:
        c = self._adb(["devices"], self.connect_timeout)
        if c.rc != 0:
            raise self._client_error(c.stderr, "devices")
        devices = parse_devices(c.stdout)
        if not devices:
            raise InfraError("no Android device is connected (`adb devices` lists none): plug it in with USB "
                             "debugging on (see targets/android/README.md)", retryable=False)
        if len(devices) > 1:
            raise InfraError(f"{len(devices)} Android devices are connected ({', '.join(devices)}); pick one with "
                             "--on adb:SERIAL", retryable=False)
        self.serial, state = next(iter(devices.items()))
        if state != "device":
            raise self._state_error(state)

    def _find_python(self) -> str:
        script = (f'for p in {TERMUX_PYTHON} python3 python; do if command -v "$p" >/dev/null 2>&1; then '
                  'command -v "$p"; exit 0; fi; done; exit 1')
        c = self.sh(script, self.connect_timeout)
        if c.rc != 0 or not c.stdout.strip():
            raise InfraError(f"no Python on {self._name()}: install Termux and `pkg install python` (see "
                             "targets/android/README.md), or pass --python PATH", retryable=False)
        return c.stdout.strip().splitlines()[-1]

    def make_workdir(self) -> str:
        workdir = f"{REMOTE_ROOT}/{uuid.uuid4().hex[:12]}"
        c = self.sh(f"mkdir -p {shlex.quote(workdir)}", self.connect_timeout)
        if c.rc != 0:
            raise InfraError(f"cannot create {workdir} on {self._name()}: {tail(c.stderr, 2)}", retryable=False,
                             stderr=c.stderr)
        return self._remember(workdir)

    def run(self, argv: list[str], timeout: float) -> Completed:
        c = self._adb(["shell", shlex.join(argv)], timeout)
        if c.rc != 0 and _CLIENT_ERROR.search(c.stderr):
            raise self._client_error(c.stderr, "shell")
        return c

    def _copy(self, sources: list[Path], remote_dir: str) -> None:
        c = self._adb(["push", *map(str, sources), f"{remote_dir}/"], self.transfer_timeout)
        if c.rc != 0:
            raise self._client_error(c.stderr, "push")

    def pull(self, remote_file: str, local_file: Path) -> None:
        c = self._adb(["pull", remote_file, str(local_file)], self.transfer_timeout)
        if c.rc != 0:
            raise self._client_error(c.stderr, "pull")
