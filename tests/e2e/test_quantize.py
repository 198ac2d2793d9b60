"""`edgekit build --quant int8`: each backend's own quantizer, validated against PyTorch fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.bundle import verify
from edgekit.cli import cli

pytestmark = pytest.mark.slow

INT8 = ["pixel8", "raspberry-pi-5", "galaxy-s24", "jetson-orin-nano"]


@pytest.mark.parametrize("device", INT8)
def test_int8_within_the_accuracy_budget_and_smaller(device, built):
    out = built(device, "--quant", "int8")
    manifest, problems = verify(out)
    assert problems == []
    v, base = manifest["validation"], manifest["baseline"]
    assert manifest["model"]["precision"] == "int8" and manifest["plan"]["quant"] == "int8"
    assert v["passed"] and v["accuracy_drop"] <= 1.0  # the digits acceptance figure
    assert v["max_accuracy_drop"] == manifest["profile"]["budgets"]["max_accuracy_drop"]
    assert v["top1_agreement"] >= 0.98
    assert 20 < v["outputs"][0]["sqnr_db"] < 80  # quantized: close, but not fp32-exact
    assert base["precision"] == "fp32" and base["validation"]["max_abs_error"] < 1e-4
    assert manifest["model"]["bytes"] / base["bytes"] <= 0.30  # acceptance: int8 / fp32 size
    q = manifest["model"]["export_details"]["quantization"]
    assert q["scheme"] == "int8" and q["per_channel"] and q["calibration_batches"] == 128


def test_executorch_int8_is_delegated_to_xnnpack(built):
    details = verify(built("pixel8", "--quant", "int8"))[0]["model"]["export_details"]
    assert details["delegate_backends"] == ["XnnpackBackend"] and details["ops_outside_delegate"] == []
    assert details["quantization"]["tool"] == "PT2E XNNPACKQuantizer"


def test_tflite_int8_has_int8_io(built):
    v = verify(built("raspberry-pi-5", "--quant", "int8"))[0]["validation"]
    assert v["runtime_io"]["inputs"][0]["dtype"] == "int8" and v["runtime_io"]["outputs"][0]["dtype"] == "int8"
    assert v["runtime"]["io_quantized"] is True


@pytest.mark.parametrize("device,act_type", [("galaxy-s24", 2), ("jetson-orin-nano", 3)])  # UINT8, INT8
def test_onnx_int8_is_qdq_for_the_execution_provider(device, act_type, built):
    import onnx

    model = onnx.load(str(built(device, "--quant", "int8") / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {i.name: i for i in model.graph.initializer}
    q_input = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image")
    assert inits[q_input.input[2]].data_type == act_type  # activation zero point type


def test_int8_tflite_bundle_runs_without_torch(built):
    import subprocess

    from conftest import runner_venv

    bundle = built("raspberry-pi-5", "--quant", "int8")
    proc = subprocess.run([str(runner_venv("tflite")), "-m", "edgekit_runner", ".", "--runs", "3"], cwd=bundle,
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert report["runtime"]["runtime"] == "tflite-runtime" and report["runtime"]["io_quantized"]
    assert report["metrics"]["accuracy"] == pytest.approx(manifest["validation"]["value"])


def _digits_project_with(tmp_path, root, data_py: str):
    (tmp_path / "data_mod.py").write_text(data_py.replace("ROOT", str(root / "examples" / "digits")))
    text = (root / "edgekit.toml").read_text()
    text = text.replace("examples/digits/data.py:load_splits", "data_mod.py:load_splits")
    text = text.replace("examples/digits/model.py", str(root / "examples/digits/model.py"))
    (tmp_path / "edgekit.toml").write_text(text)
    return tmp_path


def test_nan_in_calibration_data_is_named(tmp_path, root):
    project = _digits_project_with(tmp_path, root, (
        "import sys\nsys.path.insert(0, 'ROOT')\nimport numpy as np\nfrom data import load_splits as real\n"
        "def load_splits():\n    s = real()\n    x, y = s['calib']\n    x = x.copy()\n    x[3, 0, 2, 2] = np.nan\n"
        "    s['calib'] = (x, y)\n    return s\n"))
    result = CliRunner().invoke(cli, ["build", "-d", "pixel8", "--quant", "int8", "--project", str(project),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2  # bad data is the project's: refused when it is loaded, before any work
    assert "data split 'calib': sample 3 has NaN or infinite values" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_too_few_calibration_samples_warns_with_the_number_used(tmp_path, root):
    out = tmp_path / "few"
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--format", "onnx", "--quant", "int8",
                                      "--calib-samples", "500", "--project", str(root), "--out", str(out),
                                      "--no-distill"])
    assert result.exit_code == 0, result.output
    assert "calibration split has 180 samples, fewer than the 500 requested; used 180" in " ".join(
        result.output.split())  # rich wraps long lines
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["warnings"] == ["calibration split has 180 samples, fewer than the 500 requested; used 180"]
    assert manifest["model"]["export_details"]["quantization"]["calibration_batches"] == 180


def test_constant_calibration_input_is_handled(tmp_path, root):
    """All calibration images identical (a constant activation range): still builds, within budget or a clear error."""
    project = _digits_project_with(tmp_path, root, (
        "import sys\nsys.path.insert(0, 'ROOT')\nimport numpy as np\nfrom data import load_splits as real\n"
        "def load_splits():\n    s = real()\n    x, y = s['calib']\n    s['calib'] = (np.zeros_like(x), y)\n"
        "    return s\n"))
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--format", "onnx", "--quant", "int8",
                                      "--project", str(project), "--out", str(tmp_path / "out")])
    assert result.exit_code in (0, 10), result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())  # written either way
    assert np.isfinite(manifest["validation"]["value"])
    drop = next(c for c in manifest["budgets"]["checks"] if c["key"] == "accuracy_drop")
    assert drop["measured"] == pytest.approx(manifest["validation"]["accuracy_drop"])
    if result.exit_code == 10:  # the budget check caught the useless calibration, naming the drop
        assert drop["status"] == "fail" and "accuracy_drop" in " ".join(result.output.split())


@pytest.mark.parametrize("device", ["pixel8", "raspberry-pi-5"])
def test_qat_recovers_to_half_a_point(device, built):
    manifest, problems = verify(built(device, "--quant", "int8-qat", "--qat-epochs", "2"))
    assert problems == []
    v = manifest["validation"]
    assert manifest["plan"]["quant"] == "int8-qat" and manifest["model"]["precision"] == "int8"
    assert v["accuracy_drop"] <= 0.5  # acceptance: QAT within half a point of fp32
    q = manifest["model"]["export_details"]["quantization"]
    assert q["scheme"] == "int8-qat" and q["epochs"] == 2 and q["calibration_batches"] == 0
    assert manifest["model"]["bytes"] / manifest["baseline"]["bytes"] <= 0.30
    assert manifest["timings_s"]["qat"] > 0


def test_qat_on_a_batchnorm_model(tmp_path, root):
    """The teacher has BatchNorm: QAT must switch it to training statistics and back (no eval/train mismatch)."""
    text = (root / "edgekit.toml").read_text().replace("model.py:student", "model.py:teacher", 1)
    text = text.replace('entry = "examples/', f'entry = "{root}/examples/')
    (tmp_path / "edgekit.toml").write_text(text)
    out = tmp_path / "bn"
    result = CliRunner().invoke(cli, ["build", "-d", "host-cpu", "--quant", "int8-qat", "--qat-epochs", "1",
                                      "--no-distill", "--project", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    v = json.loads((out / "manifest.json").read_text())["validation"]
    assert v["passed"] and v["accuracy_drop"] <= 1.0 and v["top1_agreement"] >= 0.98


@pytest.mark.parametrize("device,extra,tool", [
    ("pixel8", (), "PT2E XNNPACKQuantizer"),
    ("raspberry-pi-5", (), "litert-torch PT2EQuantizer"),
    ("host-cpu", ("--format", "onnx"), "onnxruntime quantize_dynamic"),
])
def test_int8_dynamic_needs_no_calibration(device, extra, tool, built):
    manifest, problems = verify(built(device, *extra, "--quant", "int8-dynamic"))
    assert problems == []
    v, q = manifest["validation"], manifest["model"]["export_details"]["quantization"]
    assert q["scheme"] == "int8-dynamic" and q["tool"] == tool and q["calibration_batches"] == 0
    assert v["passed"] and v["accuracy_drop"] <= 1.0 and v["top1_agreement"] >= 0.98
    assert manifest["model"]["bytes"] / manifest["baseline"]["bytes"] <= 0.35  # int8 weights
    if device == "raspberry-pi-5":  # dynamic range: float I/O, int8 weights
        assert v["runtime_io"]["inputs"][0]["dtype"] == "float32"


def test_fp16_onnx_for_jetson_is_the_profile_default(built):
    import onnx

    out = built("jetson-orin-nano", "--quant", "auto")
    manifest, problems = verify(out)
    assert problems == [] and manifest["plan"]["quant"] == "fp16" and manifest["model"]["precision"] == "fp16"
    v = manifest["validation"]
    assert v["passed"] and v["accuracy_drop"] <= 1.0 and v["top1_agreement"] == 1.0
    assert 1e-5 < v["max_abs_error"] < 0.05  # half precision: small but real differences
    assert 0.45 <= manifest["model"]["bytes"] / manifest["baseline"]["bytes"] <= 0.55
    model = onnx.load(str(out / "model.onnx"))
    types = {i.data_type for i in model.graph.initializer if i.dims}
    assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types  # (int64 shapes remain)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # app-facing I/O stays fp32


def test_int4_digits_bundle_for_pixel8(built):
    manifest, problems = verify(built("pixel8", "--quant", "int4-weight-only"))
    assert problems == [] and manifest["model"]["precision"] == "int4-weight"
    v, q = manifest["validation"], manifest["model"]["export_details"]["quantization"]
    assert v["passed"] and v["accuracy_drop"] <= 1.0
    assert q["group_size"] == 32 and "8da4w" in q["tool"] and q["activations"].startswith("int8 dynamic")
    # the digits student keeps its convolutions in float (4% of weights): int4 linears bring it to ~0.22
    assert manifest["model"]["bytes"] / manifest["baseline"]["bytes"] <= 0.25


def test_int8_weight_only_tflite_with_ai_edge_quantizer(built):
    manifest, problems = verify(built("raspberry-pi-5", "--quant", "int8-weight-only"))
    assert problems == [] and manifest["model"]["precision"] == "int8-weight"
    v, q = manifest["validation"], manifest["model"]["export_details"]["quantization"]
    assert q["tool"] == "ai-edge-quantizer weight_only_wi8_afp32" and q["io"] == "float"
    assert v["passed"] and v["accuracy_drop"] <= 1.0 and v["runtime_io"]["inputs"][0]["dtype"] == "float32"
    assert manifest["model"]["bytes"] / manifest["baseline"]["bytes"] <= 0.30


@pytest.mark.parametrize("device", ["pixel8", "jetson-orin-nano", "raspberry-pi-5"])
def test_the_bundle_readme_snippet_runs_the_int8_model_as_validated(device, built):
    """An app developer's first contact: the README's load-and-run snippet, run as written on every eval
    input, scores what the build's validation measured. (On an x86 host without VNNI the ONNX snippet needs
    the exact int8 kernels, session.x64quantprecision, for that; the LiteRT int8 model takes int8 inputs.)"""
    import re
    import subprocess
    import sys

    bundle = built(device, "--quant", "int8")
    readme = (bundle / "README.md").read_text()
    snippet = re.search(r"## Run it .*?```python\n(.*?)```", readme, re.S).group(1)
    code = ("import numpy as np\nd = np.load('eval.npz')\npredicted = []\n"
            "for i in range(len(d['labels'])):\n    image = d['input.image'][i:i + 1]\n"
            + "".join("    " + line + "\n" for line in snippet.splitlines())
            + "    outputs = list(outputs.values()) if isinstance(outputs, dict) else outputs\n"
            "    predicted.append(int(np.asarray(outputs[0]).argmax()))\n"
            "print(float(np.mean(np.array(predicted) == d['labels'])))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-1500:]
    validation = json.loads((bundle / "manifest.json").read_text())["validation"]
    assert float(proc.stdout) == pytest.approx(validation["value"], abs=1e-9), readme
