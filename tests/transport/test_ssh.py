"""The ssh transport against a real OpenSSH server on 127.0.0.1 (see conftest.sshd)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.errors import BundleError
from edgekit.transport import run_bundle
from edgekit.transport.base import INFRA_ERROR, OK

from .conftest import free_port
from .helpers import FAST, alive


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid() and alive(int(proc.name)):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline}")
    return found


def test_bundle_runs_end_to_end_over_ssh(sshd, onnx_bundle, runner_python, edgekit_home):
    logins = sshd.logins()
    outcome = run_bundle(onnx_bundle, sshd.spec(runner_python), runs=5, warmup=1, retries=0, runner_args=FAST,
                         connect_timeout=5)
    assert outcome.status == OK, (outcome.error, outcome.stderr_tail)
    print(outcome.seconds)
    assert outcome.attempts == 1 and outcome.warnings == []  # the report file was pulled, the work folder removed
    r, manifest = outcome.report, outcome.manifest
    n = manifest["eval"]["n_samples"]
    assert r["metrics"]["n_samples"] == n
    assert r["metrics"]["accuracy"] == pytest.approx(manifest["validation"]["value"], abs=1 / n + 1e-9)
    assert r["latency_ms"]["n"] >= 5 and r["latency_ms"]["p50"] > 0
    assert r["bundle"]["model_sha256"] == manifest["files"]["model.onnx"]["sha256"]
    remote = Path(r["bundle"]["path"]).parent  # same host: the "remote" folder is visible here
    assert remote.name.startswith("edgekit-") and not remote.exists()
    assert set(outcome.seconds) == {"push", "run", "pull"}
    assert sshd.logins() > logins  # it really went through sshd
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(edgekit_home / "known_hosts")],
                           capture_output=True, text=True, check=False)
    assert found.returncode == 0 and "ssh-ed25519" in found.stdout  # trusted on first use, recorded there


def test_hung_runner_is_killed_on_the_device_at_the_timeout(sshd, onnx_bundle, tmp_path):
    hang = tmp_path / "hang-python"
    hang.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 300\n")
    hang.chmod(0o755)
    t0 = time.monotonic()
    outcome = run_bundle(onnx_bundle, sshd.spec(hang), timeout=2, retries=2, backoff=0.01, connect_timeout=5)
    assert outcome.status == INFRA_ERROR and outcome.attempts == 1  # a hang is not retried
    assert "did not finish within 2 s" in outcome.error and "killed" in outcome.error
    assert time.monotonic() - t0 < 15
    assert not alive(int((tmp_path / "pid").read_text()))
    assert _processes_mentioning(str(hang)) == []  # nor the device-side `timeout` wrapping it


def test_ctrl_c_stops_the_runner_on_the_device(sshd, onnx_bundle, tmp_path):
    hang = tmp_path / "hang-python"
    hang.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 300\n")
    hang.chmod(0o755)
    code = (f"from edgekit.transport import run_bundle\n"
            f"run_bundle({str(onnx_bundle)!r}, {sshd.spec(hang)!r}, timeout=120, connect_timeout=5)")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as typed in a terminal
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_file.exists(), proc.stderr.read() if proc.poll() is not None else "the runner never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    assert not alive(int(pid_file.read_text()))
    assert _processes_mentioning(str(hang)) == []


def test_closed_port_is_infra_error_after_bounded_retries(onnx_bundle, tmp_path):
    (tmp_path / "a-key").write_text("not a real key")  # the target names a file that exists
    spec = f"ssh://nobody@127.0.0.1:{free_port()}?python=python3&identity={tmp_path / 'a-key'}"
    outcome = run_bundle(onnx_bundle, spec, retries=2, backoff=0.05, connect_timeout=2)
    assert outcome.status == INFRA_ERROR and outcome.attempts == 3
    assert "cannot reach" in outcome.error and "Connection refused" in outcome.error
    assert outcome.report is None


def test_key_the_server_does_not_accept_is_not_retried(sshd, onnx_bundle, tmp_path):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    spec = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}?identity={key}"
    outcome = run_bundle(onnx_bundle, spec, retries=2, backoff=0.01, connect_timeout=5)
    assert outcome.status == INFRA_ERROR and outcome.attempts == 1
    assert "refused the key" in outcome.error and "ssh-copy-id" in outcome.error


def test_missing_remote_python_is_named(sshd, onnx_bundle):
    outcome = run_bundle(onnx_bundle, sshd.spec("/opt/no-such/python3"), retries=2, backoff=0.01, connect_timeout=5)
    assert outcome.status == INFRA_ERROR and outcome.attempts == 1
    assert "no Python interpreter '/opt/no-such/python3'" in outcome.error


def test_tampered_bundle_is_refused_before_connecting(sshd, bundle_copy, runner_python):
    (bundle_copy / "model.onnx").write_bytes(b"\0" + (bundle_copy / "model.onnx").read_bytes()[1:])
    logins = sshd.logins()
    with pytest.raises(BundleError, match="model.onnx: sha256 mismatch"):
        run_bundle(bundle_copy, sshd.spec(runner_python))
    assert sshd.logins() == logins


def test_a_language_model_is_benchmarked_over_ssh_and_stored(sshd, lm_built, runner_python, edgekit_home):
    """`edgekit bench` of the tiny language model's ONNX bundle on a torch-free interpreter over ssh: decode
    tokens/s, time to first token, peak memory and perplexity come back and land in the results store."""
    from click.testing import CliRunner

    from edgekit.cli import cli
    from edgekit.results.store import ResultsStore

    logins = sshd.logins()
    result = CliRunner().invoke(cli, ["bench", str(lm_built("onnx")), "--on", sshd.spec(runner_python),
                                      "--retries", "0", "--", "--runs", "3", *FAST])
    assert result.exit_code == 0, result.output
    assert sshd.logins() > logins and "tokens/s" in result.output
    run = ResultsStore(edgekit_home / "results.db").list_runs()[0]
    assert run.status == OK and run.peak_rss_mb > 0
    assert run.metrics["decode_tokens_per_s"] > 0 and run.metrics["time_to_first_token_ms"] > 0
    assert run.metrics["perplexity"] > 1 and run.metrics["greedy_agreement"] == 1.0


def test_the_recipe_search_measures_every_trial_on_the_device_over_ssh(sshd, runner_python, root, edgekit_home,
                                                                      tmp_path):
    """`edgekit build --search --on ssh://...`: each trial's bundle runs on the device (a torch-free interpreter
    behind a real sshd), its run lands in the store, and the pick says where it was measured."""
    from click.testing import CliRunner

    from edgekit.bundle import verify
    from edgekit.cli import cli
    from edgekit.results.store import ResultsStore

    logins = sshd.logins()
    out = tmp_path / "pi5"
    result = CliRunner().invoke(cli, ["build", "-d", "raspberry-pi-5", "--project", str(root), "--search",
                                      "--format", "onnx", "--no-distill", "--max-trials", "1",
                                      "--on", sshd.spec(runner_python), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"measured on ssh://{sshd.user}@127.0.0.1:{sshd.port}" in text
    assert len(re.findall(r"trial #\d+ \(\d of 1\)", text)) == 1  # one trial keeps CI short; local runs more
    assert sshd.logins() > logins
    runs = ResultsStore(edgekit_home / "results.db").list_runs()
    assert len(runs) == 1 and runs[0].format == "onnx" and runs[0].precision == "fp32"
    assert all(r.status == OK and r.profile == "raspberry-pi-5" and r.metric_value > 0.9 for r in runs)
    manifest, problems = verify(out)
    assert problems == [] and manifest["search"]["target"] == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    (shipped,) = [r for r in runs if r.precision == manifest["model"]["precision"]]  # its run over ssh
    assert manifest["search"]["measured"]["latency_p50_ms"] == shipped.latency_p50_ms
