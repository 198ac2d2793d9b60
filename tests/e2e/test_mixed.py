"""Mixed precision on a model that int8 breaks: the digits student with an outlier channel
(tests/fixtures/outlier). Plain int8 fails the accuracy budget; `--quant mixed` finds the two
layers around the outlier by sensitivity analysis, keeps them float and passes in the runtime."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgekit.bundle import verify
from edgekit.cli import cli

pytestmark = pytest.mark.slow

OUTLIER = "tests/fixtures/outlier"
AROUND_THE_OUTLIER = ["features.0", "features.2"]


def edgekit(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def report(root):
    result = edgekit("quantize-report", "--device", "pixel8", "--project", str(root / OUTLIER), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_sensitivity_finds_the_layers_around_the_outlier(report):
    layers = {s["name"]: s for s in report["layers"]}
    assert list(layers) == ["features.0", "features.2", "classifier.0", "classifier.2"]
    assert report["fp32_metric"] > 0.95
    assert report["fp32_metric"] - report["int8_metric"] > 0.5  # every layer int8: the outlier wins
    for name in AROUND_THE_OUTLIER:  # int8 alone on either side of the outlier tensor ruins the model
        assert layers[name]["drop_points"] > 50 and layers[name]["sqnr_db"] < 5
        assert layers[name]["precision"] == "fp32"
    for name in ("classifier.0", "classifier.2"):
        assert layers[name]["drop_points"] <= 1.0 and layers[name]["sqnr_db"] > 25
        assert layers[name]["precision"] == "int8"
    assert report["float_layers"] == AROUND_THE_OUTLIER
    assert 100 * (report["fp32_metric"] - report["mixed_metric"]) <= report["budget_points"] == 1.0
    # keeping a layer float costs 3 bytes per weight (fp32 - int8)
    assert report["float_cost_bytes"] == 3 * (17 * 9 + 32 * 17 * 9)


def test_plain_int8_fails_the_budget(root, tmp_path):
    result = CliRunner().invoke(cli, ["build", "--device", "pixel8", "--project", str(root / OUTLIER),
                                      "--quant", "int8", "--out", str(tmp_path / "b")])
    assert result.exit_code == 10, result.output  # a missed budget: the bundle is written, the exit code says so
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    drop = manifest["validation"]["accuracy_drop"]
    assert drop > 1.0 and not manifest["budgets"]["passed"]
    assert [c["key"] for c in manifest["budgets"]["checks"] if c["status"] == "fail"] == ["accuracy_drop"]
    assert f"accuracy_drop {drop:.4g} points misses the limit <= 1 points" in " ".join(result.output.split())


@pytest.mark.parametrize("fmt,backend", [("executorch", "xnnpack"), ("onnx", "cpu"), ("tflite", "xnnpack")])
def test_mixed_build_passes_in_the_runtime(root, tmp_path, fmt, backend):
    out = tmp_path / "bundle"
    result = edgekit("build", "--device", "pixel8", "--project", str(root / OUTLIER), "--format", fmt,
                     "--backend", backend, "--quant", "mixed", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "float layers: features.0, features.2" in " ".join(result.output.split())
    manifest, problems = verify(out)
    assert problems == []
    v, q = manifest["validation"], manifest["model"]["export_details"]["quantization"]
    assert v["passed"] and v["accuracy_drop"] <= 1.0 and v["where"] == "target-runtime"
    assert q["scheme"] == "mixed" and q["float_layers"] == AROUND_THE_OUTLIER
    assert q["sensitivity"]["float_layers"] == AROUND_THE_OUTLIER
    assert manifest["model"]["bytes"] / manifest["baseline"]["bytes"] <= 0.35  # the big layers are int8
    if fmt == "onnx":  # ORT's nodes_to_exclude, matched to the layers by the exporter's name scopes
        import onnx

        assert q["nodes_to_exclude"] == ["node_conv2d", "node_conv2d_1"]
        graph = onnx.load(str(out / "model.onnx")).graph
        inits = {i.name: i for i in graph.initializer}
        convs = [n for n in graph.node if n.op_type == "Conv"]
        assert all(inits[c.input[1]].data_type == onnx.TensorProto.FLOAT for c in convs if c.input[1] in inits)
        gemm_weights = [n for n in graph.node if n.op_type == "DequantizeLinear"
                        and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
        assert len(gemm_weights) >= 2  # the two Linear layers' weights are int8
    if fmt == "tflite":  # ai-edge-quantizer's no_quantize scopes: the convolutions float, the rest int8
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(str(out / "model.tflite"))
        ops = {op["op_name"]: [interpreter._get_tensor_details(i, 0)["dtype"].__name__ for i in op["inputs"]]
               for op in interpreter._get_ops_details()}
        assert ops["CONV_2D"][:2] == ["float32", "float32"]
        assert ops["FULLY_CONNECTED"][:2] == ["int8", "int8"]
        assert q["tool"].startswith("ai-edge-quantizer static_wi8_ai8")


def test_keep_float_is_checked(root, tmp_path):
    result = CliRunner().invoke(cli, ["build", "--device", "pixel8", "--project", str(root / OUTLIER),
                                      "--quant", "mixed", "--keep-float", "features.O", "--out", str(tmp_path / "b")])
    assert result.exit_code == 3
    message = " ".join(result.output.split())
    assert "unknown layer(s) for --keep-float: 'features.O' (did you mean" in message and "features.0" in message
    assert "✓ load" not in message  # refused as soon as the model is loaded, before any export
    assert not (tmp_path / "b").exists()


def test_report_analyses_the_network_build_ships(root):
    """The default project declares a teacher: the report distils the student first and keeps the network
    `build` would ship. The 30-epoch KD student is not significantly better than the [model] entry on calib
    (edgekit.selection), so that is the [model] entry, and the report says why; --no-distill analyses it
    without distilling."""
    runs = {}
    for flag in ("--distill", "--no-distill"):
        result = edgekit("quantize-report", "--device", "pixel8", "--project", str(root), "--json", flag)
        assert result.exit_code == 0, result.output
        runs[flag] = json.loads(result.stdout)
    assert runs["--distill"]["network"].startswith(
        "the [model] entry examples/digits/model.py:student (kept over the distilled student: the distilled "
        "student is not significantly better than the model entry (accuracy on calib:")
    assert runs["--no-distill"]["network"] == "the [model] entry examples/digits/model.py:student"
    assert runs["--distill"]["fp32_metric"] == runs["--no-distill"]["fp32_metric"]  # the same network
    for run in runs.values():
        assert [s["name"] for s in run["layers"]] == ["features.0", "features.2", "classifier.0", "classifier.2"]


def test_report_needs_no_int8_backend(root):
    """iphone-15-pro builds Core ML (no int8 activations there); the analysis is backend-free and
    uses only the budget (here overridden)."""
    result = edgekit("quantize-report", "--device", "iphone-15-pro", "--project", str(root / OUTLIER), "--json",
                     "--max-accuracy-drop", "2")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["budget_points"] == 2.0 and report["float_layers"] == AROUND_THE_OUTLIER
