"""``emu:PROFILE``: the runner on the profile's arm64 CPU, emulated by QEMU on this host (:mod:`edgekit.emu`).

The same steps as on a device: the staged bundle and runner are copied into a fresh work folder under the
root's ``/tmp``, the runner starts there with a clean environment, under the python of the venv that holds
the bundle's runtime (made on first use), with QEMU emulating the profile's CPU model (``[cpu_isa]
qemu_cpu``; ``?cpu=MODEL`` picks another, e.g. ``max``) on as many cores as this host has, at most the
profile's. The report comes back with ``device.emulation``: the emulator, its version and CPU model, and
``timings_representative: false``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgekit import emu
from edgekit.transport.base import (
    CommandTimeout,
    Completed,
    InfraError,
    Target,
    Transport,
    run_process,
)


class EmuTransport(Transport):
    def __init__(self, target: Target, connect_timeout: float = 10.0, transfer_timeout: float = 300.0):
        super().__init__(target, connect_timeout, transfer_timeout)
        self._workdirs: list[Path] = []
        self.python: str | None = None
        self.warnings: list[str] = []

    def connect(self) -> None:
        from edgekit.errors import ProfileError
        from edgekit.profiles import load_profile

        try:
            self.profile = load_profile(self.target.profile or "")
        except ProfileError as e:
            raise emu.EmuError(str(e)) from None
        p = self.profile
        if p.arch != "arm64" or p.os not in ("linux", "android"):
            raise emu.EmuError(f"{p.id} is {p.os}/{p.arch}; emu: emulates arm64 Linux and Android devices only"
                               + (" (use --on local for this host)" if p.arch == "x86_64" else ""))
        if p.cpu_isa is None and not self.target.cpu:
            raise emu.EmuError(f"the profile {p.id} does not say which CPU to emulate: add a [cpu_isa] table with "
                               "qemu_cpu, or give one: emu:{p.id}?cpu=MODEL")
        self.cpu = self.target.cpu or p.cpu_isa.qemu_cpu  # type: ignore[union-attr]
        self.tools = emu.find_tools()
        self.warnings += emu.check_cpu(self.tools, self.cpu)
        self.cores = max(1, min(p.cpu_cores, os.cpu_count() or 1))
        self.root = emu.ensure_root(self.tools, self.on_step)
        self.sysdir = emu.cpu_topology(self.root, self.tools, self.cpu, self.cores)

    def make_workdir(self) -> str:
        tmp = self.root / "root" / "tmp"
        tmp.mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="edgekit-emu-", dir=tmp))
        self._workdirs.append(workdir)
        return "/tmp/" + workdir.name

    def _host(self, guest: str) -> Path:
        return self.root / "root" / guest.lstrip("/")

    def push(self, local_dir: Path, remote_dir: str) -> None:
        from edgekit.bundle import MANIFEST

        try:
            runtime = json.loads((Path(local_dir) / "bundle" / MANIFEST).read_text())["model"]["runtime"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InfraError(f"cannot tell the bundle's runtime: {e}", retryable=False) from None
        self.python = emu.ensure_venv(self.root, self.tools, runtime, step=self.on_step)
        shutil.copytree(local_dir, self._host(remote_dir), dirs_exist_ok=True)

    def run(self, argv: list[str], timeout: float) -> Completed:
        c = run_process(emu.guest_command(self.root, self.tools, self.sysdir, argv), timeout,
                        env=emu.guest_env(self.cpu))
        if c.timed_out:
            raise CommandTimeout(f"{argv[0]} did not finish within {timeout:g} s under emulation; it was killed",
                                 stderr=c.stderr)
        return c

    def run_runner(self, workdir: str, args: list[str], timeout: float) -> Completed:
        assert self.python is not None, "push() picks the runtime's venv"
        argv = [self.python, "-m", "edgekit_runner", f"{workdir}/bundle", "--out", f"{workdir}/report.json", *args]
        c = run_process(emu.guest_command(self.root, self.tools, self.sysdir, argv, cwd=workdir), timeout,
                        env=emu.guest_env(self.cpu, TMPDIR=workdir, PYTHONPATH=f"{workdir}/runner"))
        if c.timed_out:
            raise CommandTimeout(f"the runner did not finish within {timeout:g} s under emulation (about 10-50x "
                                 "slower than native); it was killed (raise --timeout)", retryable=False,
                                 stderr=c.stderr)
        return c

    def pull(self, remote_file: str, local_file: Path) -> None:
        try:
            shutil.copyfile(self._host(remote_file), local_file)
        except OSError as e:
            raise InfraError(f"cannot read {remote_file} in the emulated root: {e.strerror}", retryable=False) from None

    def annotate(self, report: dict[str, Any]) -> None:
        device = report.setdefault("device", {})
        if isinstance(device, dict):
            device["emulation"] = emu.describe(self.tools, self.cpu, self.cores, self.sysdir, self.profile,
                                                self.warnings)

    def cleanup(self) -> list[str]:
        for workdir in self._workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        self._workdirs.clear()
        return []
