"""The local transport end to end with real bundles, the orchestrator's refusals, and ``edgekit bench``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgekit.bundle import MANIFEST, sha256_file
from edgekit.cli import EdgekitGroup
from edgekit.errors import BundleError
from edgekit.transport import run_bundle
from edgekit.transport.base import INFRA_ERROR, MODEL_ERROR, OK, Target
from edgekit.transport.cli import make_bench_command
from edgekit.transport.local import LocalTransport

from .helpers import FAST, alive


def _wrapper(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _replace_model(bundle: Path, data: bytes) -> None:
    """Swap the model file and update its manifest entry, so that the bundle still verifies."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    name = manifest["model"]["file"]
    (bundle / name).write_bytes(data)
    manifest["files"][name] = {"sha256": sha256_file(bundle / name), "bytes": len(data)}
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_local_run_of_a_real_bundle_in_a_clean_environment(onnx_bundle, runner_python, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_LEAK_CHECK", "1")
    python = _wrapper(tmp_path / "python", f'env > {tmp_path}/env.txt; pwd > {tmp_path}/cwd.txt\n'
                                           f'exec {runner_python} "$@"')
    outcome = run_bundle(onnx_bundle, f"local?python={python}", runs=5, warmup=1, retries=0, runner_args=FAST)
    assert outcome.status == OK, outcome.error
    r, manifest = outcome.report, outcome.manifest
    assert (r["status"], outcome.attempts) == (OK, 1)
    # the same eval set in the same runtime as the host's validation: the same accuracy (one flip allowed)
    n = manifest["eval"]["n_samples"]
    assert r["metrics"]["n_samples"] == n
    assert r["metrics"]["accuracy"] == pytest.approx(manifest["validation"]["value"], abs=1 / n + 1e-9)
    assert r["metrics"]["top1_agreement"] >= manifest["validation"]["top1_agreement"] - 1 / n - 1e-9
    assert r["bundle"]["model_sha256"] == manifest["files"][manifest["model"]["file"]]["sha256"]
    assert r["latency_ms"]["n"] >= 5 and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    # built for TensorRT, ran on the CPU EP here: said so
    assert r["runtime"]["provider"] == "CPUExecutionProvider" and "TensorrtExecutionProvider" in r["fallback"]
    env = {line.split("=", 1)[0] for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line}
    assert "EDGEKIT_LEAK_CHECK" not in env and "VIRTUAL_ENV" not in env
    assert {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH"} <= env
    # the same minimal environment for any command the local transport runs
    c = LocalTransport(Target("local")).run(["sh", "-c", "echo ${EDGEKIT_LEAK_CHECK:-clean} $LANG"], 10)
    assert c.stdout.split() == ["clean", "C.UTF-8"]
    workdir = Path((tmp_path / "cwd.txt").read_text().strip())
    assert r["bundle"]["path"] == f"{workdir}/bundle"
    assert not workdir.exists()  # cleaned up


def test_model_the_runtime_refuses_is_model_error_with_its_message_and_not_retried(bundle_copy, runner_python):
    _replace_model(bundle_copy, b"this is not an ONNX model" * 10)
    outcome = run_bundle(bundle_copy, f"local?python={runner_python}", retries=3, backoff=0.01, runner_args=FAST)
    assert outcome.status == MODEL_ERROR and outcome.attempts == 1
    assert outcome.report["status"] == MODEL_ERROR
    assert "INVALID_PROTOBUF" in outcome.error or "Protobuf parsing failed" in outcome.error  # ORT's own words


@pytest.mark.parametrize("damage, problem", [
    (lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:-1] + b"\0"),
     "model.onnx: sha256 mismatch"),
    (lambda b: (b / "eval.npz").unlink(), "eval.npz: missing"),
])
def test_tampered_or_incomplete_bundle_is_refused_before_anything_is_staged(bundle_copy, tmp_path, monkeypatch,
                                                                            damage, problem):
    damage(bundle_copy)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(BundleError, match=f"nothing was pushed: {problem}"):
        run_bundle(bundle_copy, "local")
    assert list(scratch.iterdir()) == []


def test_hung_runner_is_killed_at_the_timeout_and_not_retried(onnx_bundle, tmp_path):
    hang = _wrapper(tmp_path / "python", f'echo $$ > {tmp_path}/pid\nexec sleep 300')
    outcome = run_bundle(onnx_bundle, f"local?python={hang}", timeout=1, retries=2, backoff=0.01)
    assert outcome.status == INFRA_ERROR and outcome.attempts == 1
    assert "did not finish within 1 s" in outcome.error and outcome.report is None
    assert not alive(int((tmp_path / "pid").read_text()))


def test_bench_command_stores_each_report_and_maps_status_to_exit_code(onnx_bundle, bundle_copy, runner_python):
    stored = []

    @click.group(cls=EdgekitGroup)  # as in edgekit/cli.py, which maps EdgekitError to exit codes
    def bench() -> None:
        pass

    bench.add_command(make_bench_command(store=lambda report, manifest: stored.append((report, manifest))))
    args = ["bench", "--on", "local", "--python", str(runner_python), "--runs", "5", "--", *FAST]

    ok = CliRunner().invoke(bench, [*args[:1], str(onnx_bundle), *args[1:]])
    assert ok.exit_code == 0, ok.output
    assert len(stored) == 1 and stored[0][0]["status"] == OK
    assert stored[0][1]["model"]["file"] == "model.onnx"
    for text in ("OK", "onnxruntime", "latency p50 / p90 / p99", "FALLBACK", "TensorrtExecutionProvider", "accuracy",
                 "memory peak"):
        assert text in ok.output
    assert f"{stored[0][0]['metrics']['accuracy']:.2%}" in ok.output

    _replace_model(bundle_copy, b"garbage")
    bad = CliRunner().invoke(bench, [*args[:1], str(bundle_copy), "--json", *args[1:]])
    assert bad.exit_code == 9
    assert len(stored) == 2 and stored[1][0]["status"] == MODEL_ERROR  # a MODEL_ERROR report is kept too
    printed = json.loads(bad.stdout)
    assert printed["status"] == MODEL_ERROR and printed["report"]["run_id"] == stored[1][0]["run_id"]
    assert "refused the model" in bad.stderr


def test_bench_checks_the_devices_budgets_against_what_it_measured(onnx_bundle, runner_python):
    """jetson-orin-nano's budgets against the local run's numbers: an impossible p90 latency fails, by how much,
    with exit code 10, and the report is stored all the same; --no-fail-on-budget exits 0 and still says FAIL."""
    stored = []

    @click.group(cls=EdgekitGroup)
    def group() -> None:
        pass

    group.add_command(make_bench_command(store=lambda report, manifest: stored.append(report)))
    args = ["bench", str(onnx_bundle), "--on", "local", "--python", str(runner_python), "--runs", "5",
            "--budget", "latency_p90_ms=0.001"]
    missed = CliRunner().invoke(group, [*args, "--json", "--", *FAST])
    assert missed.exit_code == 10, missed.output
    assert len(stored) == 1 and stored[0]["status"] == OK
    checks = {c["key"]: c for c in json.loads(missed.stdout)["budgets"]}
    p90, memory = stored[0]["latency_ms"]["p90"], max(stored[0]["memory"]["peak_rss_load_mb"],
                                                      stored[0]["memory"]["peak_rss_run_mb"])
    assert checks["latency_p90_ms"] | {"excess": None} == {
        "key": "latency_p90_ms", "label": "p90 latency", "limit": 0.001, "unit": "ms", "upper": True, "measured": p90,
        "where": "local", "status": "fail", "excess": None}
    assert checks["latency_p90_ms"]["excess"] == pytest.approx(p90 - 0.001)
    assert checks["peak_memory_mb"]["measured"] == memory and checks["peak_memory_mb"]["limit"] == 2048
    assert checks["peak_memory_mb"]["status"] == "pass" and checks["model_mb"]["status"] == "pass"
    assert checks["accuracy_drop"]["status"] == "not measured"  # an fp32 bundle: held to a tolerance instead
    assert "misses 1 budget: latency_p90_ms" in missed.stderr and "exit code 10" in missed.stderr

    shown = CliRunner().invoke(group, [*args, "--no-fail-on-budget", "--", *FAST])
    assert shown.exit_code == 0, shown.output
    assert "FAIL latency_p90_ms" in shown.output and "pass peak_memory_mb" in shown.output
    assert len(stored) == 2
    bad = CliRunner().invoke(group, [*args[:-1], "latency=3", "--", *FAST])
    assert bad.exit_code == 3 and "--budget 'latency=3': give KEY=VALUE with KEY one of model_mb" in bad.output
    assert len(stored) == 2  # refused before anything ran
