"""The runner on real bundles: a full schema-2 report, loud fallbacks, and the status of each failure.

Bundles come from the session's real builds (``built``); the runner runs as on a device where it
matters (its own copy in the bundle, cwd = bundle, a torch-free venv for ONNX).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from edgekit_runner import memory
from edgekit_runner.__main__ import main, run_bundle
from edgekit_runner.measure import Settings
from edgekit_runner.report import FIELDS, INFRA_ERROR, MODEL_ERROR, OK

pytestmark = pytest.mark.slow  # builds two bundles (once per session)

QUICK = ["--runs", "20", "--min-seconds", "0.2", "--warmup-seconds", "0.1"]


def _runner(python: Path | str, bundle: Path, *args: str) -> tuple[int, dict, str]:
    """The bundle's own runner, as on a device: cwd = bundle, nothing else on the path."""
    proc = subprocess.run([str(python), "-m", "edgekit_runner", ".", *args], cwd=bundle, capture_output=True, check=False,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def _copy_with(bundle: Path, dest: Path, file: str, data: bytes, update_manifest: bool) -> Path:
    """A copy of ``bundle`` with ``file`` replaced by ``data`` (and its sha256 in the manifest, if asked)."""
    shutil.copytree(bundle, dest)
    (dest / file).write_bytes(data)
    if update_manifest:
        manifest = json.loads((dest / "manifest.json").read_text())
        manifest["files"][file] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def _undocumented(report: dict) -> set[str]:
    keys = {k for k in report}
    for section in ("bundle", "runtime", "metrics", "latency_ms", "timing", "memory", "device"):
        keys |= {f"{section}.{k}" for k in report[section]}
    return keys - set(FIELDS)


def test_executorch_bundle_gives_a_full_v2_report(built, tmp_path):
    bundle = built("pixel8")
    out = tmp_path / "report.json"
    rc, report, stderr = _runner(sys.executable, bundle, *QUICK, "--threads", "1", "--out", str(out))
    assert rc == 0, stderr
    assert json.loads(out.read_text()) == report
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert report["schema_version"] == 2 and report["status"] == OK and report["error"] is None
    assert report["fallback"] is None and "WARNING" not in stderr
    assert _undocumented(report) == set()
    assert report["bundle"]["model_sha256"] == manifest["files"]["model.pte"]["sha256"]
    rt = report["runtime"]
    assert rt["runtime"] == "executorch" and rt["delegate"] == "XnnpackBackend"
    assert rt["threads"] == 1 and rt["threads_effective"] == 1

    m = report["metrics"]
    assert m["n_samples"] == 360 and m["accuracy"] == pytest.approx(manifest["validation"]["value"])
    assert m["reference_accuracy"] == pytest.approx(manifest["validation"]["reference_value"])
    assert m["top1_agreement"] == 1.0 and m["max_abs_error"] < 1e-4 and m["cosine_min"] > 0.99999

    lat, timing = report["latency_ms"], report["timing"]
    assert lat["n"] == timing["timed_runs"] >= 20 and lat["batch"] == 1
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["mean"] * lat["n"] <= timing["timed_seconds"] * 1e3  # the runs fit in the phase that timed them
    assert timing["timed_seconds"] >= 0.2 and timing["warmup_seconds"] >= 0.1 and timing["warmup_runs"] >= 1
    assert timing["settings"] == {"warmup_runs": 1, "warmup_seconds": 0.1, "min_runs": 20, "min_seconds": 0.2,
                                  "max_seconds": 60.0}
    assert timing["import_ms"] > 0 and timing["load_ms"] > 0 and timing["first_inference_ms"] > 0
    assert not timing["capped"] and timing["cpus"] is None

    mem = report["memory"]
    assert mem["unavailable"] == {} and mem["model_file_bytes"] == manifest["files"]["model.pte"]["bytes"]
    assert 0 < mem["baseline_rss_mb"] < mem["after_import_rss_mb"]  # torch + ExecuTorch are not free
    assert mem["peak_rss_load_mb"] >= mem["after_import_rss_mb"] - 1  # the peak was reset to the RSS at that point
    assert mem["peak_rss_run_mb"] >= mem["rss_after_runs_mb"] > 0
    assert report["device"]["cores_logical"] >= 1 and report["device"]["python"]


def test_onnx_provider_fallback_is_loud_in_a_torch_free_venv(built):
    from conftest import runner_venv

    rc, report, stderr = _runner(runner_venv("onnx"), built("jetson-orin-nano"), *QUICK)
    assert rc == 0, stderr
    assert report["status"] == OK and report["runtime"]["provider"] == "CPUExecutionProvider"
    assert report["fallback"] == report["runtime"]["fallback"]
    assert report["fallback"].startswith("ran on CPUExecutionProvider instead of TensorrtExecutionProvider: ")
    assert "TensorrtExecutionProvider is not available" in report["fallback"]
    assert "CUDAExecutionProvider is not available" in report["fallback"]
    assert f"edgekit_runner: WARNING: fallback: {report['fallback']}" in stderr
    assert set(report["runtime"]["nodes_per_provider"]) == {"CPUExecutionProvider"}
    assert report["metrics"]["top1_agreement"] == 1.0


def test_pinning_and_no_accuracy(built):
    from conftest import runner_venv

    rc, report, stderr = _runner(runner_venv("onnx"), built("jetson-orin-nano"), *QUICK, "--cpus", "0",
                                 "--threads", "1", "--no-accuracy")
    assert rc == 0, stderr
    assert report["timing"]["cpus"] == {"requested": [0], "applied": True, "affinity": [0]}
    assert report["metrics"] == {} and report["latency_ms"]["n"] >= 20


def test_truncated_onnx_is_a_model_error_with_the_runtimes_words(built, tmp_path, capsys):
    src = built("jetson-orin-nano")
    data = (src / "model.onnx").read_bytes()
    bundle = _copy_with(src, tmp_path / "b", "model.onnx", data[: len(data) // 2], update_manifest=True)
    assert main([str(bundle), *QUICK]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == MODEL_ERROR and report["metrics"] == {} and report["latency_ms"] == {}
    assert "INVALID_PROTOBUF" in report["error"] and "Protobuf parsing failed" in report["error"]
    assert report["memory"]["model_file_bytes"] == len(data) // 2


def test_truncated_pte_is_a_model_error_naming_the_executorch_error(built, tmp_path):
    src = built("pixel8")
    data = (src / "model.pte").read_bytes()
    bundle = _copy_with(src, tmp_path / "b", "model.pte", data[: len(data) // 2], update_manifest=True)
    report = run_bundle(bundle, Settings(min_runs=5, min_seconds=0))
    assert report.status == MODEL_ERROR and report.exit_code == 3
    assert "Failed to load program" in report.error and "InvalidProgram" in report.error


def test_file_changed_after_the_build_is_refused_before_loading(built, tmp_path, capsys):
    src = built("jetson-orin-nano")
    data = bytearray((src / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    bundle = _copy_with(src, tmp_path / "b", "model.onnx", bytes(data), update_manifest=False)
    assert main([str(bundle)]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == INFRA_ERROR and report["runtime"] == {}
    assert "model.onnx does not match the sha256 in manifest.json" in report["error"]


def test_missing_bundle_is_an_infra_error(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == INFRA_ERROR and "no manifest.json in" in report["error"]
    assert report["device"]["python"]  # the device facts still say where it failed


def test_runtime_not_installed_is_an_infra_error(built):
    from conftest import runner_venv

    rc, report, _ = _runner(runner_venv("tflite"), built("jetson-orin-nano"))  # that venv has no onnxruntime
    assert rc == 2 and report["status"] == INFRA_ERROR
    assert "runtime 'onnxruntime' is not installed on this device" in report["error"]


def test_memory_unavailable_is_null_with_a_reason_not_zero(built, monkeypatch):
    monkeypatch.setattr(memory, "PROC_STATUS", Path("/nonexistent/status"))
    monkeypatch.setattr(memory, "PROC_CLEAR_REFS", Path("/nonexistent/clear_refs"))
    report = run_bundle(built("jetson-orin-nano"), Settings(min_runs=5, min_seconds=0, warmup_seconds=0))
    mem = report.memory
    assert report.status == OK and mem["model_file_bytes"] > 0
    for key in ("baseline_rss_mb", "after_import_rss_mb", "peak_rss_load_mb", "peak_rss_run_mb", "rss_after_runs_mb"):
        assert mem[key] is None and mem["unavailable"][key], key
