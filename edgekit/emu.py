"""Arm64 without the device: a Debian arm64 userland run under QEMU user-mode emulation, without root.

Every profile but host-cpu is an arm64 device, and the runtimes pick their kernels by the CPU's features
(XNNPACK has NEON, dot-product, i8mm, SVE and SME int8 paths). ``edgekit bench BUNDLE --on emu:PROFILE``
runs the same runner, the same runtime wheels and therefore the same arm64 kernels the device would run,
with QEMU emulating the *profile's* CPU model (``[cpu_isa] qemu_cpu``), and reports accuracy, agreement,
max error and memory. Timings under emulation say nothing about the device: the report marks them
(``device.emulation``) and budgets on speed are not judged on them.

What is built, once, under ``$EDGEKIT_EMU_HOME`` (default ``$EDGEKIT_HOME/emu``; ``edgekit emu setup``):

- ``debian-bookworm-arm64/root``: a Debian arm64 root filesystem (``debootstrap --variant=minbase`` with
  python3 and python3-venv). Building it needs root once (debootstrap makes device nodes and mounts /proc;
  its second stage runs through ``proot -q qemu-aarch64``: no binfmt handler). Running bundles on it needs
  no root: every run goes through proot and QEMU, with no mounts. A root whose stamp or key files are
  missing (an interrupted build, a deleted file) is rebuilt;
- ``.../root/opt/edgekit/venvs/<runtime>-<version>_numpy-<version>``: one virtualenv per runtime, made by
  the root's own ``python3 -m venv``; its packages are installed by ``uv`` on the host for the aarch64
  platform and the root's Python (``--python-platform``: markers are evaluated for the device, not the
  host), exactly the wheels pip would take on an arm64 board. The versions are this host's (pinned in
  pyproject.toml), so x86-64 and arm64 run the same release;
- ``sys/<cpu>-<n>cpu``: a small synthetic ``/sys/devices/system/cpu`` (``possible``, ``present``,
  ``online`` and each core's ``midr_el1``, read from the emulated CPU itself). The host's ``/sys`` must not
  be seen (onnxruntime's cpuinfo reads the x86 topology and dies with SIGSEGV); with none at all XNNPACK
  falls back to generic kernels, or, in ExecuTorch, fails to initialise.

The emulated CPU must be the device's: QEMU 7.2 (Debian 12's own) emulates SME wrongly, and under its
``max`` CPU the pixel8 int8 bundle scored 24.4% instead of 98.89%. QEMU >= 10 (Debian's
bookworm-backports) is required for a CPU model with SME and recommended for all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edgekit.fsutil import write_bytes_atomic
from edgekit.transport.base import InfraError

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
ROOT_NAME = f"debian-{SUITE}-arm64"
ROOT_STAMP = "edgekit-root.json"
VENV_STAMP = "edgekit-venv.json"
GLIBC = {"bookworm": "2_36"}  # the root's glibc, for the manylinux tag of the wheels
MIN_QEMU = (10, 0)
SME_CPUS = ("max",)  # QEMU's CPU models that have SME (the ones QEMU < 10 gets wrong)
QEMU_NAMES = ("qemu-aarch64-static", "qemu-aarch64")
QEMU_INSTALL = ("apt-get install -t bookworm-backports qemu-user-static (QEMU >= 10; add the bookworm-backports "
                "suite first)")
RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime",), "litert": ("ai-edge-litert",),
                    "executorch": ("executorch", "torch")}  # torch: ExecuTorch's Python runtime needs it, pip not
RUNTIME_IMPORTS = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert.interpreter",
                   "executorch": "executorch.runtime"}
GUEST_PATH = "/usr/local/bin:/usr/bin:/bin"
EXTENSIONS = ("asimddp", "i8mm", "bf16", "sve", "sve2", "sme", "sme2")  # the kernels' choices, for reports

Step = Callable[[str], None]


class EmuError(InfraError):
    """The arm64 emulation cannot be set up or used (a missing tool, a refused CPU, no wheel); not retried."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message, retryable=False, stderr=stderr)


@dataclass(frozen=True)
class Tools:
    qemu: str
    qemu_version: tuple[int, ...]
    proot: str

    @property
    def qemu_label(self) -> str:
        return f"{Path(self.qemu).name} {'.'.join(map(str, self.qemu_version))}"


def emu_home() -> Path:
    """``$EDGEKIT_EMU_HOME`` if set, else ``$EDGEKIT_HOME/emu`` (several GB once ExecuTorch's venv is in)."""
    from edgekit.results import edgekit_home

    value = os.environ.get("EDGEKIT_EMU_HOME", "").strip()
    return Path(value).expanduser() if value else edgekit_home() / "emu"


def find_tools() -> Tools:
    """QEMU's aarch64 user-mode emulator and proot, or EmuError naming the Debian packages."""
    qemu = next((p for p in map(shutil.which, QEMU_NAMES) if p), None)
    if qemu is None:
        raise EmuError(f"QEMU user-mode emulation is not installed (no {' or '.join(QEMU_NAMES)} on PATH): "
                       f"{QEMU_INSTALL}")
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, errors="replace", check=False).stdout
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    if m is None:
        raise EmuError(f"{qemu} --version printed no version: {out.strip()[:200]!r}")
    proot = shutil.which("proot")
    if proot is None:
        raise EmuError("proot is not installed (Debian package proot: apt-get install proot); edgekit runs the "
                       "arm64 root through it, which needs neither root nor a binfmt handler")
    return Tools(qemu, tuple(int(g) for g in m.groups() if g is not None), proot)


def check_cpu(tools: Tools, cpu: str) -> list[str]:
    """Refuse a CPU model that this QEMU is known to emulate wrongly; warnings for the rest."""
    if tools.qemu_version >= MIN_QEMU:
        return []
    old = f"{tools.qemu_label} is older than {'.'.join(map(str, MIN_QEMU))}"
    if cpu.split(",")[0] in SME_CPUS and "sme=off" not in cpu:
        raise EmuError(f"{old}, whose SME emulation is wrong (the pixel8 int8 bundle scored 24.4% instead of "
                       f"98.89% under QEMU 7.2's -cpu {cpu}); install a newer QEMU: {QEMU_INSTALL}")
    return [f"{old}; its arm64 emulation was checked here only for cortex-a76 and neoverse-n1 ({QEMU_INSTALL})"]


# ------------------------------------------------------------------------------------------------ the root

def root_dir() -> Path:
    return emu_home() / ROOT_NAME


def root_problems(folder: Path) -> list[str]:
    """Why the cached root at ``folder`` cannot be used (empty: it can)."""
    try:
        stamp = json.loads((folder / ROOT_STAMP).read_text())
    except (OSError, ValueError):
        return [f"{ROOT_STAMP} is missing or unreadable (a build that did not finish?)"]
    if stamp.get("suite") != SUITE or stamp.get("packages") != list(PACKAGES):
        return [f"it was built for {stamp.get('suite')} with {stamp.get('packages')}, not {SUITE} with "
                f"{list(PACKAGES)}"]
    root = folder / "root"
    need = ("etc/debian_version", "usr/bin/python3", "usr/lib/aarch64-linux-gnu/libc.so.6",
            f"usr/lib/python{stamp.get('python')}/os.py", f"usr/lib/python{stamp.get('python')}/venv/__init__.py")
    return [f"{rel} is missing" for rel in need if not (root / rel).is_file()]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One edgekit at a time builds in the cache (a second waits, then finds the work done)."""
    home = emu_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        f = open(home / ".lock", "a")  # noqa: SIM115 (held for the with-block below)
    except OSError as e:
        raise EmuError(f"cannot write to the emulation cache {home} ({e.strerror}): something is missing there "
                       "and only its owner can add it; run `sudo -E edgekit emu setup --runtime ...`, or set "
                       "EDGEKIT_EMU_HOME to a folder of yours") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_root(tools: Tools, step: Step = lambda _m: None, rebuild: bool = False) -> Path:
    """The cached root's folder (``root/`` inside it is the filesystem), built if missing or unusable."""
    if not root_problems(root_dir()) and not rebuild:
        return root_dir()
    if os.geteuid() != 0:
        raise EmuError(f"building the arm64 root needs root once (debootstrap makes its device nodes and mounts "
                       f"/proc); run `sudo -E edgekit emu setup --runtime ...` (-E keeps $EDGEKIT_EMU_HOME: "
                       f"{emu_home()}); running bundles on it needs no root")
    with _locked():
        return _ensure_root(tools, step, rebuild)


def _ensure_root(tools: Tools, step: Step, rebuild: bool) -> Path:
    folder = root_dir()
    problems = root_problems(folder)
    if not problems and not rebuild:
        return folder
    if folder.exists():
        step(f"rebuilding the arm64 root {folder}: "
             f"{'asked to' if not problems else 'the cached one is unusable: ' + problems[0]}")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise EmuError("debootstrap is not installed (Debian package debootstrap: apt-get install debootstrap); "
                       "it makes the Debian arm64 root filesystem")
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    root = partial / "root"
    t0 = time.monotonic()
    step(f"debootstrap, first stage: downloading and unpacking Debian {SUITE} arm64 (minbase + "
         f"{', '.join(PACKAGES)})")
    _stream([tools.proot, "-0", debootstrap, "--arch=arm64", "--variant=minbase", "--foreign",
             f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR], step, "debootstrap (first stage)",
            env={**os.environ})
    step("debootstrap, second stage: configuring the packages under emulation (minutes)")
    _stream([tools.proot, "-0", "-q", tools.qemu, "-r", str(root), "-w", "/", "/bin/sh",
             "/debootstrap/debootstrap", "--second-stage"], step, "debootstrap (second stage)",
            env={"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBOOTSTRAP_DIR": "/debootstrap",
                 "QEMU_CPU": "cortex-a76"})
    pythons = sorted(p.name.removeprefix("python") for p in (root / "usr/lib").glob("python3.*")
                     if (p / "os.py").is_file())
    if not pythons:
        raise EmuError(f"debootstrap finished but {root} has no python3 (see {root}/debootstrap/debootstrap.log)")
    with open(root / "var/lib/dpkg/status", encoding="utf-8", errors="replace") as f:
        packages = len(re.findall(r"^Status: install ok installed$", f.read(), re.MULTILINE))
    _write_json(partial / ROOT_STAMP, {
        "suite": SUITE, "mirror": MIRROR, "packages": list(PACKAGES), "python": pythons[-1],
        "dpkg_packages": packages, "seconds": round(time.monotonic() - t0, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    step(f"arm64 root ready: {folder} ({packages} packages, Python {pythons[-1]}, "
         f"{time.monotonic() - t0:.0f} s)")
    return folder


def root_python(folder: Path) -> str:
    return json.loads((folder / ROOT_STAMP).read_text())["python"]


# ----------------------------------------------------------------------------------------- the runtimes

def requirements(runtime: str, version: str | None = None) -> list[str]:
    """The pinned requirements of one runtime's venv: this host's versions (pyproject.toml's pins) unless
    ``version`` names another release of the runtime's main package."""
    if runtime not in RUNTIME_PACKAGES:
        raise EmuError(f"unknown runtime {runtime!r}; one of: {', '.join(RUNTIME_PACKAGES)}")
    reqs = []
    for i, name in enumerate((*RUNTIME_PACKAGES[runtime], "numpy")):
        pinned = version if i == 0 and version else _host_version(name)
        reqs.append(f"{name}=={pinned}")
    return reqs


def _host_version(name: str) -> str:
    try:
        return metadata.version(name).split("+")[0]  # torch 2.13.0+cpu here: the same release for aarch64
    except metadata.PackageNotFoundError:
        raise EmuError(f"{name} is not installed on this host, so there is no version to match on arm64; "
                       f"pass --runtime {name}==VERSION") from None


def venv_key(reqs: Sequence[str]) -> str:
    return "_".join(r.replace("==", "-") for r in reqs)


def ensure_venv(folder: Path, tools: Tools, runtime: str, version: str | None = None,
                step: Step = lambda _m: None) -> str:
    """The guest path of the python of ``runtime``'s venv inside the root, made if missing."""
    reqs = requirements(runtime, version)
    guest = f"/opt/edgekit/venvs/{venv_key(reqs)}"
    if not _venv_ready(folder, guest, reqs):
        with _locked():
            if not _venv_ready(folder, guest, reqs):  # another edgekit may have made it meanwhile
                _make_venv(folder, tools, runtime, reqs, guest, step)
    return f"{guest}/bin/python"


def _venv_ready(folder: Path, guest: str, reqs: list[str]) -> bool:
    try:
        stamp = json.loads((folder / "root" / guest.lstrip("/") / VENV_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("requirements") == reqs


def _make_venv(folder: Path, tools: Tools, runtime: str, reqs: list[str], guest: str, step: Step) -> None:
    key = guest.rsplit("/", 1)[1]
    host = folder / "root" / guest.lstrip("/")
    if not os.access(host.parent if host.parent.exists() else folder / "root" / "opt", os.W_OK):
        raise EmuError(f"the {runtime} venv is not in the arm64 root {folder}, and you cannot write there: run "
                       f"`sudo -E edgekit emu setup --runtime {runtime}` once")
    py = root_python(folder)
    partial_guest = f"/opt/edgekit/venvs/.{key}.partial"
    partial = folder / "root" / partial_guest.lstrip("/")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    step(f"venv for {runtime}: {' '.join(reqs)}")
    c = run_in_root(folder, tools, "cortex-a76", None, ["python3", "-m", "venv", "--without-pip", partial_guest],
                    timeout=300)
    if c.returncode != 0:
        raise EmuError(f"python3 -m venv failed in the arm64 root (exit {c.returncode}): {_last(c.stderr)}",
                       c.stderr)
    site = partial / "lib" / f"python{py}" / "site-packages"
    step(f"installing the aarch64 wheels with uv ({', '.join(reqs)})")
    platform = f"aarch64-manylinux_{GLIBC[SUITE]}"
    c = subprocess.run([_uv(), "pip", "install", "--quiet", "--target", str(site), "--python-platform", platform,
                        "--python-version", py, "--only-binary", ":all:", *reqs],
                       capture_output=True, text=True, errors="replace", check=False)
    if c.returncode != 0:
        raise EmuError(f"no aarch64 install of {' '.join(reqs)} for Python {py} ({platform}) from the package "
                       f"index: {_last(c.stderr)}", c.stderr)
    step(f"importing {RUNTIME_IMPORTS[runtime]} under emulation")
    c = run_in_root(folder, tools, "cortex-a76", None,
                    [f"{partial_guest}/bin/python", "-c", f"import numpy, {RUNTIME_IMPORTS[runtime]}"], timeout=900)
    if c.returncode != 0:
        raise EmuError(f"{runtime} was installed for aarch64 but does not import under emulation: "
                       f"{_last(c.stderr)}", c.stderr)
    _write_json(partial / VENV_STAMP, {"requirements": reqs, "python": py, "platform": platform,
                                       "seconds": round(time.monotonic() - t0, 1)})
    shutil.rmtree(host, ignore_errors=True)
    partial.rename(host)
    step(f"venv ready: {guest} ({time.monotonic() - t0:.0f} s)")


def _uv() -> str:
    try:
        from uv import find_uv_bin
    except ImportError:
        found = shutil.which("uv")
        if found:
            return found
        raise EmuError("uv is not installed: pip install 'edgekit[emu]' (it installs the aarch64 wheels for the "
                       "emulated root)") from None
    return find_uv_bin()


# ----------------------------------------------------------------------------------- the CPU's topology

def cpu_topology(folder: Path, tools: Tools, cpu: str, cores: int) -> Path:
    """A synthetic ``/sys`` for ``cores`` cores of the emulated ``cpu``: what XNNPACK's cpuinfo reads."""
    sysdir = emu_home() / "sys" / f"{re.sub(r'[^A-Za-z0-9_.=-]', '_', cpu)}-{cores}cpu"
    if (sysdir / "devices/system/cpu/present").is_file():
        return sysdir
    c = run_in_root(folder, tools, cpu, None, ["cat", "/proc/cpuinfo"], timeout=60)  # QEMU's own, for this CPU
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in c.stdout.splitlines()) if v}
    try:
        midr = (int(fields["CPU implementer"], 16) << 24 | int(fields["CPU variant"], 16) << 20 | 0xF << 16
                | int(fields["CPU part"], 16) << 4 | int(fields["CPU revision"]))
    except (KeyError, ValueError):
        raise EmuError(f"QEMU's /proc/cpuinfo for -cpu {cpu} has no CPU identification: {c.stdout[:300]!r}",
                       c.stderr) from None
    partial = sysdir.parent / f".{sysdir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    cpus = partial / "devices/system/cpu"
    span = "0" if cores == 1 else f"0-{cores - 1}"
    for i in range(cores):
        ident = cpus / f"cpu{i}" / "regs/identification"
        ident.mkdir(parents=True)
        (ident / "midr_el1").write_text(f"0x{midr:016x}\n")
        (cpus / f"cpu{i}" / "online").write_text("1\n")
    for name in ("possible", "present", "online"):
        (cpus / name).write_text(f"{span}\n")
    (cpus / "kernel_max").write_text(f"{cores - 1}\n")
    (partial / "features").write_text(fields.get("Features", "") + "\n")  # edgekit's record, not a /sys file
    partial.rename(sysdir) if not sysdir.exists() else shutil.rmtree(partial)
    return sysdir


# ------------------------------------------------------------------------------------------- running

def guest_command(folder: Path, tools: Tools, sysdir: Path | None, argv: Sequence[str], cwd: str = "/") -> list[str]:
    """The host command line that runs ``argv`` inside the root under QEMU (through proot: no root needed)."""
    binds = ["-b", "/dev", "-b", "/proc"] + (["-b", f"{sysdir}:/sys"] if sysdir else [])
    return [tools.proot, "-q", tools.qemu, "-r", str(folder / "root"), *binds, "-w", cwd, *argv]


def guest_env(cpu: str, **extra: str) -> dict[str, str]:
    return {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": cpu,
            "PROOT_TMP_DIR": os.environ.get("TMPDIR", "/tmp"), **extra}


def run_in_root(folder: Path, tools: Tools, cpu: str, sysdir: Path | None, argv: Sequence[str],
                timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(guest_command(folder, tools, sysdir, argv), env=guest_env(cpu), capture_output=True,
                              text=True, errors="replace", timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise EmuError(f"{argv[0]} did not finish within {timeout:g} s under emulation") from None


def _stream(argv: list[str], step: Step, what: str, env: dict[str, str]) -> None:
    """Run a long setup command, passing its ``I:`` progress lines to ``step``; EmuError on failure."""
    lines: list[str] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=env, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("I: "):
            step(line[3:].strip())
    if proc.wait() != 0:
        raise EmuError(f"{what} failed (exit {proc.returncode}): {_last(chr(10).join(lines))}", "\n".join(lines))


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:400] if lines else "no message"


def describe(tools: Tools, cpu: str, cores: int, sysdir: Path, profile: Any, warnings: list[str]) -> dict[str, Any]:
    """What a report records of the emulation (``device.emulation``), with the profile's ISA features the
    emulated CPU lacks and the SIMD/matrix features it has that the device lacks."""
    emulated = (sysdir / "features").read_text().split()
    wanted = list(profile.cpu_isa.features) if profile.cpu_isa else []
    extra = [f for f in EXTENSIONS if f in emulated and f not in wanted] if wanted else []
    return {"emulated": True, "emulator": tools.qemu_label, "qemu_cpu": cpu, "cores": cores, "via": "proot",
            "profile": profile.id, "profile_cpu": profile.cpu, "profile_features": wanted,
            "cpu_features": emulated, "missing_features": [f for f in wanted if f not in emulated],
            "extra_features": extra, "timings_representative": False, "warnings": warnings}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_bytes_atomic(path, json.dumps(data, indent=2).encode())
