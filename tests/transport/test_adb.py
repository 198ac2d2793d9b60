"""The adb transport. There is no Android device here: the bundle runs through an EMULATION of the
adb client (adb_shim/adb: a folder as the device, its faults chosen per test); one test checks the
real Debian adb client with no device attached."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekit.transport import run_bundle
from edgekit.transport.base import INFRA_ERROR, OK

from .conftest import free_port
from .helpers import FAST, alive


def test_bundle_runs_through_adb_with_termux_python_found(adb_device, onnx_bundle, runner_python):
    adb_device.install_termux_python(runner_python)
    outcome = run_bundle(onnx_bundle, "adb", runs=5, warmup=1, retries=0, runner_args=FAST)
    assert outcome.status == OK, (outcome.error, outcome.stderr_tail)
    assert (outcome.attempts, outcome.warnings, outcome.target) == (1, [], "adb:emulator-5554")
    r, manifest = outcome.report, outcome.manifest
    n = manifest["eval"]["n_samples"]
    assert r["metrics"]["accuracy"] == pytest.approx(manifest["validation"]["value"], abs=1 / n + 1e-9)
    assert r["latency_ms"]["n"] >= 5
    # it ran from /data/local/tmp/edgekit/<id> (mapped into the emulated device) under Termux's Python
    assert r["bundle"]["path"].startswith(f"{adb_device.root}/data/local/tmp/edgekit/")
    log = (adb_device.root / "termux-python.log").read_text()
    assert f"-m edgekit_runner {adb_device.root}/data/local/tmp/edgekit/" in log
    assert adb_device.workdirs() == []  # removed after the run


@pytest.mark.parametrize("target, message, attempts", [
    ("adb:emulator-5554", "device emulator-5554 is offline: replug the USB cable or run `adb reconnect`", 3),
    ("adb", "device emulator-5554 is offline", 3),
    ("adb:R5CT0000", "device R5CT0000 is not connected; `adb devices` lists emulator-5554 (offline)", 1),
])
def test_offline_or_absent_device_is_infra_error(adb_device, onnx_bundle, target, message, attempts):
    adb_device.fault("offline")
    outcome = run_bundle(onnx_bundle, target, retries=2, backoff=0.01, connect_timeout=5)
    assert outcome.status == INFRA_ERROR and outcome.report is None
    assert message in outcome.error
    assert outcome.attempts == attempts  # offline may pass (retried); a device that is not there will not


def test_truncated_push_is_detected_on_the_device(adb_device, onnx_bundle, runner_python):
    adb_device.install_termux_python(runner_python)
    adb_device.fault("truncate")
    outcome = run_bundle(onnx_bundle, "adb", retries=1, backoff=0.01, connect_timeout=5)
    assert outcome.status == INFRA_ERROR and outcome.attempts == 2
    files = outcome.manifest["files"]
    largest = max(files, key=lambda f: files[f]["bytes"])  # the shim cuts the largest file it pushed
    assert f"the push to adb:emulator-5554 was incomplete: bundle/{largest} differs (sha256)" in outcome.error
    assert not (adb_device.root / "termux-python.log").exists()  # the runner never started on a bad copy
    assert adb_device.workdirs() == []


def test_hung_adb_is_killed_at_the_timeout(adb_device, onnx_bundle, runner_python):
    adb_device.install_termux_python(runner_python)
    adb_device.fault("hang")
    outcome = run_bundle(onnx_bundle, "adb", timeout=2, retries=2, backoff=0.01, connect_timeout=5)
    assert outcome.status == INFRA_ERROR and outcome.attempts == 1
    assert "did not finish within 2 s" in outcome.error
    pids = [int(p) for p in (adb_device.root / ".hang-pids").read_text().split()]
    assert len(pids) == 2 and not any(alive(p) for p in pids)  # the client and its child


@pytest.mark.parametrize("retries, status, attempts", [(2, OK, 3), (1, INFRA_ERROR, 2)])
def test_flaky_push_succeeds_within_the_retry_budget(adb_device, onnx_bundle, runner_python, retries, status,
                                                     attempts):
    adb_device.install_termux_python(runner_python)
    adb_device.fault("flaky:3")  # pushes 1 and 2 fail, push 3 works
    outcome = run_bundle(onnx_bundle, "adb", retries=retries, backoff=0.01, connect_timeout=5, runner_args=FAST)
    assert (outcome.status, outcome.attempts) == (status, attempts), outcome.error
    if status == INFRA_ERROR:
        assert "adb push on device emulator-5554 failed" in outcome.error and "Connection reset" in outcome.error


def test_real_adb_client_without_a_device(onnx_bundle, monkeypatch):
    """Debian's adb with its own server on a private port: 'no device' becomes a clear INFRA_ERROR."""
    adb = shutil.which("adb")
    assert adb and Path(adb).read_bytes()[:4] == b"\x7fELF", "the real adb client (apt-get install adb) is needed"
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", str(free_port()))
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    try:
        started = subprocess.run([adb, "start-server"], capture_output=True, text=True, timeout=20, check=False)
        assert started.returncode == 0, started.stderr
        for target, message in [("adb", "no Android device is connected (`adb devices` lists none)"),
                                ("adb:emulator-5554", "device emulator-5554 is not connected; `adb devices` lists no")]:
            outcome = run_bundle(onnx_bundle, target, retries=2, backoff=0.01, connect_timeout=10)
            assert outcome.status == INFRA_ERROR and outcome.attempts == 1
            assert message in outcome.error
    finally:
        subprocess.run([adb, "kill-server"], capture_output=True, timeout=20, check=False, env=os.environ)
