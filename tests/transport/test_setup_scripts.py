"""The device setup scripts in targets/: their checks here, and the Raspberry Pi one with a faked arch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from edgekit.transport import run_bundle
from edgekit.transport.base import OK

from .helpers import FAST

TARGETS = Path(__file__).resolve().parents[2] / "targets"


@pytest.mark.parametrize("device, message", [
    ("android", "run this inside Termux on the phone"),
    ("jetson", "this is not a Jetson running JetPack (L4T)"),
    ("raspberry-pi", "needs a 64-bit OS (aarch64)"),
])
def test_setup_script_refuses_the_wrong_machine(device, message, tmp_path):
    script = TARGETS / device / "setup.sh"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    if os.uname().machine == "aarch64" and device == "raspberry-pi":
        pytest.skip("this host is aarch64: the Raspberry Pi script would not refuse it")
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert r.returncode == 2 and message in r.stderr
    assert list(tmp_path.iterdir()) == []  # refused before creating anything
    r = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, env=env, timeout=60,
                       check=False)
    assert r.returncode == 2 and "unknown argument '--bogus'" in r.stderr


@pytest.mark.slow
def test_raspberry_pi_setup_builds_a_venv_that_runs_a_bundle(tmp_path, onnx_bundle):
    """With `uname -m` saying aarch64, the script installs numpy + onnxruntime from PyPI (x86_64 wheels
    here) into a fresh venv; that venv then runs a real bundle through the local transport."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uname").write_text('#!/bin/sh\n[ "$1" = "-m" ] && echo aarch64 && exit 0\nexec /usr/bin/uname "$@"\n')
    (fake / "uname").chmod(0o755)
    venv = tmp_path / "venv"
    env = {"PATH": f"{fake}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(["bash", str(TARGETS / "raspberry-pi" / "setup.sh"), "--venv", str(venv), "onnxruntime"],
                       capture_output=True, text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert "ok: onnxruntime" in r.stdout and f"?python={venv}/bin/python'" in r.stdout
    outcome = run_bundle(onnx_bundle, f"local?python={venv}/bin/python", runs=5, retries=0, runner_args=FAST)
    assert outcome.status == OK, outcome.error
    assert outcome.report["runtime"]["runtime"] == "onnxruntime"
