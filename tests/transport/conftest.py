"""Fixtures for the transport tests: a real OpenSSH server on 127.0.0.1, the adb emulation, bundles.

The ssh server is the system's ``/usr/sbin/sshd``, started once per session on a free port,
listening on 127.0.0.1 only, key-only (a generated host key and client key pair in a temp
folder), no PAM. Run as root it allows root logins by key only (``prohibit-password``), which
nothing outside this host can reach. A missing sshd fails the tests (run .ci/prereqs.sh);
it does not skip them.

This folder is a package (``__init__.py``) so that this conftest does not take the module name
``conftest`` from tests/conftest.py, which other tests import helpers from.

The adb "device" is ``adb_shim/adb`` (an emulation of the client, see its docstring) put first
on PATH, with the device's filesystem in a temp folder.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SHIM_DIR = Path(__file__).parent / "adb_shim"


@dataclass
class SshServer:
    port: int
    user: str
    key: Path
    log: Path

    def spec(self, python: str | Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}?python={python}&identity={self.key}"

    def logins(self) -> int:
        return self.log.read_text(errors="replace").count("Accepted publickey")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    missing = [p for p in (binary, shutil.which("ssh"), shutil.which("scp"), shutil.which("ssh-keygen"))
               if not p or not Path(p).exists()]
    if missing:
        pytest.fail("the OpenSSH server or client is not installed; run .ci/prereqs.sh "
                    "(apt-get install openssh-server)", pytrace=False)
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgekit-test-{name}",
                        "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    user, port = getpass.getuser(), free_port()
    config = d / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
AllowTcpForwarding no
PermitUserEnvironment no
Subsystem sftp {_sftp_server()}
LogLevel INFO
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    check = subprocess.run([binary, "-t", "-f", str(config)], check=False, capture_output=True, text=True)
    if check.returncode != 0:
        pytest.fail(f"sshd refused the test configuration: {check.stderr.strip()}", pytrace=False)
    log = d / "sshd.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, log)
        yield SshServer(port, user, d / "client_key", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sftp_server() -> str:
    for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server"):
        if Path(p).exists():
            return p
    return "internal-sftp"


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited ({proc.returncode}): {log.read_text()[-2000:]}", pytrace=False)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port} within 10 s: {log.read_text()[-2000:]}", pytrace=False)


@pytest.fixture(autouse=True)
def edgekit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own $EDGEKIT_HOME (known_hosts lives there)."""
    home = tmp_path / "edgekit-home"
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def onnx_bundle(built) -> Path:
    """A real ONNX bundle (jetson-orin-nano's default path; runs in the CPU EP here)."""
    return built("jetson-orin-nano")


@pytest.fixture(scope="session")
def runner_python() -> Path:
    """An interpreter with only numpy and onnxruntime, as on a board (no torch, no edgekit)."""
    from conftest import runner_venv  # tests/conftest.py (this folder is a package, so no name clash)

    return runner_venv("onnx")


@pytest.fixture
def bundle_copy(onnx_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the ONNX bundle that a test may damage."""
    return Path(shutil.copytree(onnx_bundle, tmp_path / "bundle"))


@dataclass
class AdbDevice:
    root: Path  # the emulated device's filesystem: /data/... is root/data/...
    monkeypatch: pytest.MonkeyPatch

    def fault(self, name: str) -> None:
        self.monkeypatch.setenv("ADB_SHIM_FAULT", name)

    def install_termux_python(self, python: Path) -> Path:
        """Put an executable at Termux's path on the emulated device that runs ``python`` (and logs its calls)."""
        exe = self.root / "data/data/com.termux/files/usr/bin/python"
        exe.parent.mkdir(parents=True)
        exe.write_text(f'#!/bin/sh\necho "$@" >> {self.root}/termux-python.log\nexec {python} "$@"\n')
        exe.chmod(0o755)
        return exe

    def workdirs(self) -> list[Path]:
        base = self.root / "data/local/tmp/edgekit"
        return sorted(base.iterdir()) if base.exists() else []


@pytest.fixture
def adb_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AdbDevice:
    """The adb emulation first on PATH, with an empty device filesystem and no fault."""
    root = tmp_path / "device"
    (root / "data/local/tmp").mkdir(parents=True)
    bin_dir = tmp_path / "bin"  # `adb` here runs the shim with this interpreter, without site-packages (faster)
    bin_dir.mkdir()
    (bin_dir / "adb").write_text(f'#!/bin/sh\nexec {sys.executable} -I -S {SHIM_DIR / "adb"} "$@"\n')
    (bin_dir / "adb").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ADB_SHIM_ROOT", str(root))
    monkeypatch.delenv("ADB_SHIM_FAULT", raising=False)
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    assert shutil.which("adb") == str(bin_dir / "adb")
    return AdbDevice(root, monkeypatch)

