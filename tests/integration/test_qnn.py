"""galaxy-s24's NPU path on Qualcomm's own libraries (PyPI's onnxruntime-qnn, the `qnn` extra that `make test`
installs): the int8 digits bundle compiled ahead of time for SM8650 (EPContext model + QNN context binary) and
validated on the x86-64 HTP emulator with every node on QNN; the runner loads the compiled model there; a model
with an op QNN rejects, a context compiled for another chip, and a missing extra are each refused by name.

The emulator computes what the HTP computes; it is not the phone, and its speed is not the phone's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import verify
from edgekit.errors import PlanError

QNN = "QNNExecutionProvider"


@pytest.fixture(scope="module")
def npu_bundle(built) -> Path:
    return built("galaxy-s24", "--quant", "int8")


def test_the_int8_bundle_is_compiled_for_sm8650_and_validated_on_the_emulator(npu_bundle):
    manifest, problems = verify(npu_bundle)
    assert problems == []
    q = manifest["model"]["export_details"]["qnn"]
    assert (q["chip"], q["soc_model"], q["htp_arch"], q["validated_on"]) == ("SM8650", 57, 75, "htp-emulator")
    compiled = q["compiled"]
    assert compiled["file"] == "model_ctx.onnx" and compiled["qnn"] == "2.51.0"
    for name in (compiled["file"], *compiled["binaries"]):  # shipped beside the portable QDQ model, hashed
        assert (npu_bundle / name).is_file() and name in manifest["files"]
    assert manifest["model"]["file"] == "model.onnx"  # the portable model stays the bundle's model
    v = manifest["validation"]
    assert v["where"] == "htp-emulator" and v["passed"]
    assert v["runtime"]["model_file"] == "model_ctx.onnx" and v["runtime"]["qnn"]["where"] == "htp-emulator"
    assert v["runtime"]["nodes_per_provider"] == {QNN: 1}  # the whole graph is one EPContext node on QNN
    assert q["placement"]["nodes"] == q["placement"]["nodes_on_qnn"] > 20  # every node of the QDQ model
    assert v["n_samples"] == 360 == v["cpu_ep"]["n_samples"]
    cpu = v["cpu_ep"]
    assert cpu["where"] == "host-twin" and cpu["runtime"]["provider"] == "CPUExecutionProvider"
    # the emulator's int8 against the CPU EP's int8 and PyTorch fp32, on the same samples
    against = v["against"]["onnxruntime CPU EP"]
    assert against["top1_agreement"] >= 0.98 and 0 < against["max_abs_error"] < 2.0
    assert abs(v["value"] - cpu["value"]) <= 0.01 and v["reference_value"] - v["value"] <= 0.01
    checks = {c["key"]: c for c in manifest["budgets"]["checks"]}
    assert "HTP emulator" in checks["accuracy_drop"]["where"] and checks["latency_p90_ms"]["status"] == "not measured"


def test_the_runner_loads_the_compiled_model_on_the_emulator(npu_bundle, tmp_path):
    out = tmp_path / "run.json"
    subprocess.run([sys.executable, "-m", "edgekit_runner", str(npu_bundle), "--runs", "3", "--min-seconds", "0.05",
                    "--warmup-seconds", "0", "--out", str(out)], check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    manifest = json.loads((npu_bundle / "manifest.json").read_text())
    assert report["status"] == "OK" and report["fallback"] is None
    assert report["runtime"]["provider"] == QNN and report["runtime"]["model_file"] == "model_ctx.onnx"
    assert report["runtime"]["qnn"]["where"] == "htp-emulator" and report["runtime"]["qnn"]["nodes_not_on_qnn"] == []
    assert report["metrics"]["accuracy"] == pytest.approx(manifest["validation"]["value"], abs=1e-9)


def test_a_context_compiled_for_another_chip_is_refused_by_name(npu_bundle, tmp_path):
    from edgekit import qnn
    from edgekit_runner import runtimes

    folder = tmp_path / "other"
    folder.mkdir()
    shutil.copy2(npu_bundle / "model.onnx", folder / "model.onnx")
    qnn.compile_context(folder / "model.onnx", soc_model=43, htp_arch=73)  # SM8550 (Snapdragon 8 Gen 2)
    with pytest.raises(RuntimeError, match=r"model_ctx.onnx was compiled for SM8550 \(HTP v73\), but this QNN EP "
                                           r"is configured for SM8650 \(HTP v75\)"):
        runtimes.load(folder / "model.onnx", "onnxruntime", target=QNN,
                      options={"soc_model": 57, "htp_arch": 75, "compiled": {"file": "model_ctx.onnx"}})


def test_an_op_the_htp_cannot_run_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgekit import qnn

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Det", ["r"], ["y"], name="det")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "det.onnx")
    with pytest.raises(PlanError, match=r"SM8650 \(v75\) cannot run 1 of 2 nodes: Det \(node 'det'\)"):
        qnn.placement(tmp_path / "det.onnx", 57, 75, "SM8650")


def test_without_the_extra_the_build_says_so_loudly_and_validates_on_the_cpu_ep(root, tmp_path):
    out = tmp_path / "s24"
    code = ("import sys; sys.modules['onnxruntime_qnn'] = None\n"  # as if `pip install edgekit[qnn]` was not run
            "from edgekit.cli import main; sys.argv = ['edgekit'] + sys.argv[1:]; main()")
    result = subprocess.run([sys.executable, "-c", code, "build", "-d", "galaxy-s24", "--project", str(root),
                             "--no-distill", "--quant", "none", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "NPU: NOT compiled for SM8650 (HTP v75) and NOT validated on its emulator: pip install 'edgekit[qnn]'" in text
    manifest, problems = verify(out)
    assert problems == [] and manifest["validation"]["where"] == "host-twin"
    assert manifest["model"]["export_details"]["qnn"]["compiled"] is None
    assert any("NOT validated on its NPU" in w and "pip install 'edgekit[qnn]'" in w for w in manifest["warnings"])
    assert not (out / "model_ctx.onnx").exists()
    assert np.load(out / "eval.npz")["labels"].shape == (360,)
