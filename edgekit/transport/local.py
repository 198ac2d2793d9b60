"""``local``: the runner as a subprocess on this host, in a clean environment.

The same steps as on a device, so a local number means the same thing: the staged
bundle and runner are copied into a fresh temporary work folder, the runner starts
there with only PATH, HOME, LANG, TMPDIR (the work folder) and PYTHONPATH (the
copied runner) set, so nothing of the caller's environment (a virtualenv, an
installed edgekit, ``OMP_NUM_THREADS``) leaks in. The interpreter defaults to the
one running edgekit; ``local?python=PATH`` or ``--python`` picks another (e.g. a
virtualenv with only numpy and one runtime, as on a board). At the timeout the
runner's whole process group is killed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from edgekit.transport.base import CommandTimeout, Completed, InfraError, Target, Transport, run_process


class LocalTransport(Transport):
    def __init__(self, target: Target, connect_timeout: float = 10.0, transfer_timeout: float = 300.0):
        super().__init__(target, connect_timeout, transfer_timeout)
        python = target.python or sys.executable
        self.python = os.path.abspath(python) if os.sep in python else python  # the runner starts in its work folder
        self._workdirs: list[str] = []

    def _env(self, **extra: str) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8",
                **extra}

    def connect(self) -> None:
        if shutil.which(self.python) is None:
            raise InfraError(f"no Python interpreter {self.python!r} on this host; pass --python PATH",
                             retryable=False)

    def make_workdir(self) -> str:
        workdir = tempfile.mkdtemp(prefix="edgekit-local-")
        self._workdirs.append(workdir)
        return workdir

    def push(self, local_dir: Path, remote_dir: str) -> None:
        shutil.copytree(local_dir, remote_dir, dirs_exist_ok=True)

    def run(self, argv: list[str], timeout: float) -> Completed:
        c = run_process(argv, timeout, env=self._env())
        if c.timed_out:
            raise CommandTimeout(f"{argv[0]} did not finish within {timeout:g} s; it was killed", stderr=c.stderr)
        return c

    def run_runner(self, workdir: str, args: list[str], timeout: float) -> Completed:
        argv = [self.python, "-m", "edgekit_runner", f"{workdir}/bundle", "--out", f"{workdir}/report.json", *args]
        c = run_process(argv, timeout, cwd=workdir, env=self._env(TMPDIR=workdir, PYTHONPATH=f"{workdir}/runner"))
        if c.timed_out:
            raise CommandTimeout(f"the runner did not finish within {timeout:g} s; it was killed "
                                 "(raise --timeout if the model is just slow)", retryable=False, stderr=c.stderr)
        return c

    def pull(self, remote_file: str, local_file: Path) -> None:
        try:
            shutil.copyfile(remote_file, local_file)
        except OSError as e:
            raise InfraError(f"cannot read {remote_file}: {e.strerror}", retryable=False) from None

    def cleanup(self) -> list[str]:
        for workdir in self._workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        self._workdirs.clear()
        return []
