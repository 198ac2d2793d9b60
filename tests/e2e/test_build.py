"""`edgekit build` end to end through the CLI, for every shipped profile, and its failure modes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.bundle import sha256_file, verify
from edgekit.cli import cli

pytestmark = pytest.mark.slow

DEVICES = {  # device -> (format, backend, where validated)
    "pixel8": ("executorch", "xnnpack", "target-runtime"),
    "galaxy-s24": ("onnx", "qnn", "htp-emulator"),  # compiled for SM8650, run on Qualcomm's emulator
    "iphone-15-pro": ("executorch", "coreml", "host-twin"),
    "jetson-orin-nano": ("onnx", "tensorrt", "host-twin"),
    "raspberry-pi-5": ("tflite", "xnnpack", "target-runtime"),
    "host-cpu": ("executorch", "xnnpack", "target-runtime"),
}


@pytest.mark.parametrize("device", list(DEVICES))
def test_build_every_profile(device, built):
    out = built(device)
    manifest, problems = verify(out)
    assert problems == []
    fmt, backend, where = DEVICES[device]
    model = manifest["model"]
    assert (model["format"], model["backend"], model["precision"]) == (fmt, backend, "fp32")
    assert manifest["profile"]["id"] == device and manifest["plan"]["device"] == device
    v = manifest["validation"]
    assert v["where"] == where and v["passed"]
    assert v["top1_agreement"] == 1.0
    if where == "htp-emulator":  # fp32 runs in fp16 on the HTP; the same file on the CPU EP is held to 1e-4
        assert v["cpu"]["max_abs_error"] < 1e-4 and v["max_abs_error"] < 0.1
        assert set(v["runtime"]["nodes_per_provider"]) == {"QNNExecutionProvider"}
    else:
        assert v["max_abs_error"] < 1e-4
    assert v["n_samples"] == 360 and v["value"] > 0.93  # digits accuracy of the student
    assert v["runtime_io"]["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert v["runtime_io"]["outputs"][0]["shape"] == [1, 10]
    assert v["runtime_io"]["inputs"][0]["dtype"] == "float32"
    if fmt == "onnx":  # names declared in edgekit.toml reach the file
        assert [v["runtime_io"]["inputs"][0]["name"], v["runtime_io"]["outputs"][0]["name"]] == ["image", "logits"]
    assert manifest["files"][model["file"]]["sha256"] == sha256_file(out / model["file"])
    assert {"torch", "executorch", "onnx", "onnxruntime", "litert-torch"} <= set(manifest["versions"])
    assert (out / "edgekit_runner" / "__main__.py").is_file()
    data = np.load(out / "eval.npz")
    assert data["input.image"].shape == (360, 1, 8, 8) and data["reference.logits"].shape == (360, 10)
    assert float((data["reference.logits"].argmax(1) == data["labels"]).mean()) == pytest.approx(v["reference_value"])
    budgets = manifest["budgets"]  # checked on what the build measured: size, and latency on this host
    assert budgets["passed"] and budgets["limits"] == manifest["plan"]["budgets"]
    checks = {c["key"]: c for c in budgets["checks"]}
    assert set(checks) == {"model_mb", "peak_memory_mb", "latency_p90_ms", "accuracy_drop"}
    assert checks["model_mb"]["measured"] == model["bytes"] / 1e6 and checks["model_mb"]["status"] == "pass"
    if where == "target-runtime":  # the device's runtime, on this host: a proxy, and said so
        assert checks["latency_p90_ms"]["measured"] == v["host_latency_ms"]["p90"]
        assert checks["latency_p90_ms"]["where"].startswith("this host (x86_64), not the device")
    else:  # a host twin's (or the HTP emulator's) latency is not the device's path's
        assert checks["latency_p90_ms"]["status"] == "not measured"
        assert ("HTP emulator" if where == "htp-emulator" else "host twin") in checks["latency_p90_ms"]["where"]
    assert checks["peak_memory_mb"]["status"] == checks["accuracy_drop"]["status"] == "not measured"  # fp32


def test_an_impossible_budget_fails_the_build_after_writing_the_bundle(root, tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(cli, ["build", "-d", "raspberry-pi-5", "--project", str(root), "--out", str(out),
                                      "--quant", "int8", "--no-distill", "--budget", "latency_p90_ms=0.001",
                                      "--budget", "model_mb=0.01"])
    assert result.exit_code == 10, result.output
    manifest, problems = verify(out)  # complete and intact: only a budget was missed
    assert problems == [] and manifest["validation"]["passed"] and not manifest["budgets"]["passed"]
    checks = {c["key"]: c for c in manifest["budgets"]["checks"]}
    assert checks["latency_p90_ms"]["status"] == checks["model_mb"]["status"] == "fail"
    assert checks["accuracy_drop"]["status"] == "pass"  # the profile's 1 point, measured on the int8 model
    assert checks["accuracy_drop"]["measured"] == pytest.approx(manifest["validation"]["accuracy_drop"])
    size = manifest["model"]["bytes"] / 1e6
    text = " ".join(result.output.split())
    assert f"FAIL model_mb {size:.4g} MB misses the limit <= 0.01 MB by {size - 0.01:.4g} MB" in text
    assert "misses 2 budgets: model_mb" in text and "(exit code 10; --no-fail-on-budget to exit 0)" in text
    again = CliRunner().invoke(cli, ["build", "-d", "raspberry-pi-5", "--project", str(root), "--out", str(out),
                                     "--quant", "none", "--no-distill", "--budget", "model_mb=0.01", "--force",
                                     "--no-fail-on-budget"])
    assert again.exit_code == 0 and "FAIL model_mb" in again.output


def test_pixel8_vulkan_option_lowers_and_is_marked_unverified(built):
    manifest, _ = verify(built("pixel8", "--backend", "vulkan"))
    assert manifest["model"]["export_details"]["delegate_backends"] == ["VulkanBackend"]
    assert manifest["validation"]["where"] == "host-twin"
    assert "portable kernels" in manifest["plan"]["host_twin"]


def _run_runner(python: Path, bundle: Path) -> dict:
    """Run the bundle's own copy of the runner, as on a device: cwd = bundle, nothing else on the path."""
    proc = subprocess.run([str(python), "-m", "edgekit_runner", ".", "--runs", "5", "--warmup", "1"],
                          cwd=bundle, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("device,venv,runtime", [("raspberry-pi-5", "tflite", "tflite-runtime"),
                                                 ("jetson-orin-nano", "onnx", "onnxruntime")])
def test_runner_runs_without_torch(device, venv, runtime, built):
    from conftest import runner_venv

    python = runner_venv(venv)
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "the runner venv must not have torch"
    bundle = built(device)
    report = _run_runner(python, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert report["status"] == "OK" and report["runtime"]["runtime"] == runtime
    assert report["metrics"]["accuracy"] == pytest.approx(manifest["validation"]["value"])
    assert report["metrics"]["top1_agreement"] == 1.0 and report["metrics"]["max_abs_error"] < 1e-4
    assert report["latency_ms"]["median"] > 0 and report["latency_ms"]["n"] >= 5
    assert report["timing"]["settings"]["min_runs"] == 5
    if device == "jetson-orin-nano":  # built for TensorRT; honest about running on CPU here
        assert "TensorrtExecutionProvider is not available" in report["runtime"]["fallback"]


def test_runner_runs_executorch_bundle(built):
    report = _run_runner(Path(sys.executable), built("pixel8"))
    assert report["status"] == "OK" and report["runtime"]["runtime"] == "executorch"
    assert report["metrics"]["top1_agreement"] == 1.0


def test_runner_reports_bad_bundle(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgekit_runner", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["status"] == "INFRA_ERROR"


def test_existing_output_refused_then_force_replaces(built, tmp_path, root):
    out = tmp_path / "b"
    shutil.copytree(built("host-cpu", "--format", "onnx"), out)
    before = (out / "manifest.json").read_text()
    runner = CliRunner()
    args = ["build", "-d", "host-cpu", "--format", "onnx", "--project", str(root), "--out", str(out)]
    refused = runner.invoke(cli, args)
    assert refused.exit_code == 6 and "already exists; pass --force" in refused.output
    assert (out / "manifest.json").read_text() == before
    forced = runner.invoke(cli, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "manifest.json").read_text() != before and verify(out)[1] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_tampered_real_bundle_is_named(built, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(built("raspberry-pi-5"), out)
    with open(out / "model.tflite", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    result = CliRunner().invoke(cli, ["inspect", str(out)])
    assert result.exit_code == 6
    assert "model.tflite: sha256 mismatch" in result.output


def test_unexportable_model_fails_with_the_line(tmp_path, root):
    (tmp_path / "m.py").write_text(
        "import torch\n"
        "class Branchy(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        if x.mean() > 0.5:\n"
        "            return x.flatten(1)[:, :10]\n"
        "        return -x.flatten(1)[:, :10]\n"
        "def build():\n"
        "    return Branchy()\n")
    text = (root / "edgekit.toml").read_text().replace("examples/digits/model.py:student", "m.py:build")
    text = text.replace("examples/digits/data.py", str(root / "examples/digits/data.py"))
    (tmp_path / "edgekit.toml").write_text(text)
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--project", str(tmp_path), "--no-distill",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 4
    err = result.output.strip().splitlines()[-1]
    assert err.startswith("error: torch.export cannot trace Branchy.forward")
    assert "m.py:4 in forward: if x.mean() > 0.5:" in err
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_json_output_is_the_manifest(built, tmp_path, root):
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--format", "onnx", "--project", str(root),
                                      "--out", str(tmp_path / "j"), "--json"])
    assert result.exit_code == 0
    manifest = json.loads(result.stdout)
    assert manifest["model"]["format"] == "onnx" and manifest["validation"]["passed"]
    # the default project distils (30 epochs) and ships what calib says is better: the demo's promise is a
    # model at least as accurate on eval as the project's own, with the reason in the manifest
    d = manifest["distill"]
    chosen = d["selection"]
    assert chosen["split"] == "calib" and chosen["reason"]
    shipped = d["student_accuracy"] if chosen["shipped"] == "distilled" else d["original_student_accuracy"]
    assert manifest["validation"]["reference_value"] == pytest.approx(shipped)
    assert shipped >= d["original_student_accuracy"]


def _default_signals() -> None:
    """The build starts with SIGINT's default disposition, as from a terminal: a test runner started in the
    background of a non-interactive shell has SIGINT ignored, and edgekit keeps an inherited SIG_IGN."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_build(root: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli", "build", "-d", "host-cpu", "--format", "onnx",
                             "--project", str(root), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_default_signals)


def _wait_for_partial(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.parent.glob(f".{out.name}.partial-*")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "build never started staging"
        time.sleep(0.05)


def test_killed_build_leaves_nothing_that_looks_complete(tmp_path, root):
    out = tmp_path / "killed"
    proc = _start_build(root, out)
    _wait_for_partial(out, proc)
    time.sleep(1.0)  # mid-way: loading / training
    proc.kill()
    proc.wait()
    assert not out.exists()
    partials = list(tmp_path.glob(".killed.partial-*"))
    assert partials and all(not (p / "manifest.json").exists() for p in partials)
    # the next build cleans the dead build's staging and succeeds
    again = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--format", "onnx", "--project", str(root),
                                     "--out", str(out)])
    assert again.exit_code == 0 and verify(out)[1] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed"]


def test_interrupted_build_cleans_up_and_says_so(tmp_path, root):
    out = tmp_path / "int"
    proc = _start_build(root, out)
    _wait_for_partial(out, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "error: interrupted by SIGINT; nothing was written" in output
    assert list(tmp_path.iterdir()) == []
