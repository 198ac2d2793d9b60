"""galaxy-s24's NPU path on Qualcomm's own libraries (PyPI's onnxruntime-qnn, the `qnn` extra that `make test`
installs): the int8 digits bundle compiled ahead of time for SM8650 (EPContext model + QNN context binary) and
validated on the x86-64 HTP emulator with every node on QNN; the runner loads the compiled model there; a model
with an op QNN rejects, a context compiled for another chip, and a missing extra are each refused by name.
`--format tflite`: LiteRT's ahead-of-time compilation of the int8 .tflite for SM8650 (model_npu.tflite), the QNN
context inside it run on the emulator against LiteRT's CPU; an op LiteRT's compiler leaves to the CPU is named.

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
    assert v["n_samples"] == 360 == v["cpu"]["n_samples"]
    cpu = v["cpu"]
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


# --- --format tflite: LiteRT's ahead-of-time compilation for the NPU ------------------------------------------------

@pytest.fixture(scope="module")
def litert_npu_bundle(built) -> Path:
    return built("galaxy-s24", "--format", "tflite", "--quant", "int8")


def test_format_tflite_is_compiled_by_litert_for_sm8650_and_its_context_runs_on_the_emulator(litert_npu_bundle):
    from edgekit import qnn

    bundle = litert_npu_bundle
    manifest, problems = verify(bundle)
    assert problems == []
    model = manifest["model"]
    assert (model["format"], model["backend"], model["file"]) == ("tflite", "qnn", "model.tflite")  # portable
    q = model["export_details"]["qnn"]
    c = q["compiled"]
    assert (q["chip"], q["validated_on"], c["file"], c["qnn"]) == ("SM8650", "htp-emulator", "model_npu.tflite",
                                                                 "2.51.0")
    assert c["file"] in manifest["files"] and (bundle / c["file"]).stat().st_size == c["bytes"]
    # every op of the portable file went to the NPU: the compiled file is one NPU partition
    assert qnn._tflite_ops(bundle / c["file"]) == ["DISPATCH_OP"]
    ops = qnn._tflite_ops(bundle / "model.tflite")
    assert q["placement"] == {"ops": len(ops), "ops_on_npu": len(ops), "partitions": 1} and len(ops) >= 6
    assert "DISPATCH_OP" not in ops and "FULLY_CONNECTED" in ops
    v = manifest["validation"]
    assert v["where"] == "htp-emulator" and v["passed"] and v["artifact"].startswith("model_npu.tflite")
    assert v["runtime"]["provider"] == QNN and v["runtime"]["nodes_per_provider"] == {QNN: 1}
    assert v["n_samples"] == 360 == v["cpu"]["n_samples"]
    cpu = v["cpu"]
    assert cpu["runtime"]["runtime"] == "ai-edge-litert" and cpu["where"] == "host-twin"
    # the NPU's int8 against LiteRT's CPU int8 on the same file's arithmetic, and against PyTorch fp32
    against = v["against"]["LiteRT CPU"]
    assert against["top1_agreement"] >= 0.98 and 0 <= against["max_abs_error"] < 2.0
    assert abs(v["value"] - cpu["value"]) <= 0.01 and v["reference_value"] - v["value"] <= 0.01


def test_the_wrapped_litert_context_is_what_the_emulator_runs(litert_npu_bundle, tmp_path):
    """The QNN context inside model_npu.tflite, run on the emulator, agrees with LiteRT's CPU run of the portable
    model sample by sample (the runner quantizes the int8 I/O as its LiteRT adapter does)."""
    from edgekit_runner import evaluate, runtimes

    from edgekit import qnn

    wrapped = tmp_path / "ctx.onnx"
    info = qnn.tflite_context_as_onnx(litert_npu_bundle / "model_npu.tflite", wrapped)
    assert info["graph"].startswith("qnn_partition") and info["context_bytes"] > 10_000
    x = np.load(litert_npu_bundle / "eval.npz")["input.image"][:48]
    npu = runtimes.load(wrapped, "onnxruntime", target=QNN, options={"soc_model": 57, "htp_arch": 75})
    assert npu.info["qnn"]["where"] == "htp-emulator" and npu.info["qnn"]["nodes_not_on_qnn"] == []
    assert npu.inputs[0].dtype == "int8"
    got = evaluate.run_dataset(npu, {"image": x})[0]
    ref = evaluate.run_dataset(runtimes.load(litert_npu_bundle / "model.tflite", "litert"), {"image": x})[0]
    assert got.dtype == np.float32 and got.shape == ref.shape == (48, 10)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95 and np.abs(got - ref).max() < 2.0


def test_an_op_the_npu_compiler_leaves_to_the_cpu_is_named(tmp_path):
    import litert_torch
    import torch

    from edgekit import qnn

    class Angle(torch.nn.Module):
        def forward(self, x):
            return torch.atan2(x, x + 1)

    litert_torch.convert(Angle().eval(), (torch.randn(1, 16),)).export(str(tmp_path / "model.tflite"))
    with pytest.raises(PlanError, match=r"SM8650 \(v75\) cannot run 1 of 2 ops of model.tflite: ATAN2: LiteRT's "
                                        r"Qualcomm compiler \(QNN 2.51.0\) left them to the CPU"):
        qnn.compile_tflite(tmp_path / "model.tflite", "SM8650", 75)
    assert not (tmp_path / "model_npu.tflite").exists()


def test_fused_relu6_reaches_the_npu_as_an_equivalent_relu(tmp_path):
    """LiteRT's Qualcomm compiler gets int8 ops with a fused RELU6 wrong (measured on the emulator: top-1 agreement
    about 50% with LiteRT's CPU); edgekit compiles them as the fused RELU their int8 output range makes them equal
    to, and the emulator then agrees with LiteRT's CPU on the portable file."""
    import torch
    from edgekit_runner import evaluate, runtimes
    from torch import nn

    from edgekit import qnn
    from edgekit.export import EXPORTERS
    from edgekit.quantize.schemes import Int8Static

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU6(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()
    calib = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    result = EXPORTERS["tflite"].export(model, (torch.from_numpy(calib[:1]),), "qnn", tmp_path,
                                        quant=Int8Static(calib_samples=32), calib=calib)
    compiled, placed = qnn.compile_tflite(result.model_path, "SM8650", 75)
    assert compiled["fused_relu6_compiled_as_relu"] == {"rewritten": 1, "kept": 0} and placed["partitions"] == 1
    qnn.tflite_context_as_onnx(tmp_path / compiled["file"], tmp_path / "ctx.onnx")
    x = {"x": np.random.default_rng(2).standard_normal((16, 3, 16, 16)).astype(np.float32)}
    npu = evaluate.run_dataset(runtimes.load(tmp_path / "ctx.onnx", "onnxruntime", target=QNN,
                                             options={"soc_model": 57, "htp_arch": 75}), x)[0]
    cpu = evaluate.run_dataset(runtimes.load(result.model_path, "litert"), x)[0]
    assert (npu.argmax(1) == cpu.argmax(1)).mean() >= 0.9 and np.abs(npu - cpu).max() < 0.1 * np.abs(cpu).max()


def test_the_runner_says_why_the_portable_tflite_ran_on_the_cpu(litert_npu_bundle, tmp_path):
    out = tmp_path / "run.json"
    subprocess.run([sys.executable, "-m", "edgekit_runner", str(litert_npu_bundle), "--runs", "3", "--min-seconds",
                    "0.05", "--warmup-seconds", "0", "--out", str(out)], check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["status"] == "OK" and "model_npu.tflite" in report["fallback"]
    assert "libLiteRtDispatch_Qualcomm.so" in report["fallback"] and report["metrics"]["accuracy"] > 0.95
