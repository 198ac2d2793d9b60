"""`edgekit build --prune`: prune -> KD recovery -> quantize -> export as one build, and its refusals."""

from __future__ import annotations

import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from edgekit.bundle import verify
from edgekit.cli import cli
from edgekit.report import from_bundle

pytestmark = pytest.mark.slow


def test_structured_half_with_kd_and_int8_stays_within_a_point_of_the_dense_student(built):
    out = built("raspberry-pi-5", "--prune", "structured:0.5", "--quant", "int8")
    manifest, problems = verify(out)
    assert problems == []
    p = manifest["prune"]
    assert p["kind"] == "structured" and p["label"] == "structured:0.5"
    assert p["parameters_after"] <= 0.5 * p["parameters_before"]
    assert p["nonzero_after"] == p["parameters_after"]
    assert p["recovery"]["method"] == "hinton-kd" and p["recovery"]["epochs"] == 20
    assert p["accuracy_after"] >= p["accuracy_dense"] - 0.01  # the bar: within 1 point of the dense student
    assert p["accuracy_after"] > p["accuracy_pruned"]  # the recovery did something
    assert manifest["plan"]["stages"][:3] == ["load", "prune", "export"]
    v = manifest["validation"]
    assert v["passed"] and v["value"] >= p["accuracy_dense"] - 0.02  # int8 LiteRT of the pruned student
    dense, _ = verify(built("raspberry-pi-5", "--quant", "int8"))
    assert manifest["model"]["bytes"] < 0.6 * dense["model"]["bytes"]
    assert manifest["baseline"]["bytes"] < 0.6 * dense["baseline"]["bytes"]
    assert f"{p['parameters_after']:,} parameters" in (out / "README.md").read_text()
    rows, _, _ = from_bundle(out)
    row = next(r for r in rows if r.name.startswith("pruned structured:0.5"))
    assert row.parameters == p["parameters_after"] and row.value == p["accuracy_after"]


def test_unstructured_zeros_reach_the_onnx_file_and_deflate(built):
    out = built("host-cpu", "--format", "onnx", "--prune", "unstructured:0.8", "--prune-epochs", "2")
    manifest, _ = verify(out)
    p = manifest["prune"]
    assert p["parameters_after"] == p["parameters_before"]
    assert p["nonzero_after"] < 0.25 * p["parameters_before"]
    model = onnx.load(out / manifest["model"]["file"])
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if numpy_helper.to_array(t).ndim >= 2]
    assert len(weights) == 4  # two convolutions, two linear layers
    for w in weights:
        assert (w == 0).mean() == pytest.approx(0.8, abs=0.01)
    m = manifest["model"]
    assert m["compressed_bytes"] < 0.5 * m["bytes"]
    assert manifest["validation"]["passed"] and manifest["validation"]["max_abs_error"] < 1e-4


@pytest.mark.parametrize("args,says", [
    (["--prune", "structured:1.5"], "the ratio must be strictly between 0 and 1"),
    (["--prune", "sparse:0.5"], "give structured:RATIO, structured:latency=RATIO, unstructured:RATIO or 2:4"),
    (["--prune", "unstructured:0.5", "--quant", "int8-qat"], "QAT retrains every weight"),
    (["--prune", "structured:0.3", "--prune", "structured:0.5"], "give --prune once for a build"),
])
def test_bad_prune_requests_are_refused_before_any_work(args, says, root, tmp_path):
    result = CliRunner().invoke(cli, ["build", "--device", "host-cpu", "--project", str(root), "--no-distill",
                                      "--out", str(tmp_path / "b"), *args])
    assert result.exit_code == 3, result.output
    assert says in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_a_layer_the_pruner_cannot_follow_fails_the_build_by_name(root, tmp_path):
    (tmp_path / "model.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Scale(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.gamma = nn.Parameter(torch.ones(1, 8, 1, 1))\n"
        "    def forward(self, x):\n        return x * self.gamma\n\n"
        "def model():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), Scale(), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))\n")
    text = (root / "edgekit.toml").read_text()
    text = text.replace('entry = "examples/digits/model.py:student"', 'entry = "model.py:model"')
    text = text.replace('entry = "examples/digits/data.py:load_splits"', f'entry = "{root}/examples/digits/data.py:load_splits"')
    (tmp_path / "edgekit.toml").write_text(text.split("[teacher]")[0] + "[data]" + text.split("[data]")[1])
    result = CliRunner().invoke(cli, ["build", "--device", "host-cpu", "--project", str(tmp_path), "--quant", "none",
                                      "--prune", "structured:0.5", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert "layer '1' (Scale): it holds its own parameters (gamma)" in result.output
    assert not (tmp_path / "b").exists()


def test_search_offers_pruning_as_a_dimension(root):
    result = CliRunner().invoke(cli, ["build", "--device", "raspberry-pi-5", "--project", str(root), "--no-distill",
                                      "--search", "--dry-run", "--quant", "int8", "--prune", "structured:0.5",
                                      "--prune", "unstructured:0.5"])
    assert result.exit_code == 0, result.output
    lines = [ln.strip() for ln in result.output.splitlines() if ln.strip()]
    plain = [ln for ln in lines if "pruned" not in ln]
    assert plain and all(any(ln == f"{p} + pruned {k}" for ln in lines) for p in plain
                         for k in ("structured:0.5", "unstructured:0.5"))


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_a_language_model_pruned_structured_exports_with_its_kv_cache(fmt, tiny_lm_project, tmp_path):
    """MLP neurons and query heads removed, recovered by token-level KD, exported with its KV cache: the export
    still reproduces the pruned decoder's greedy continuation, and it is smaller."""
    out = tmp_path / "b"
    result = CliRunner().invoke(cli, ["build", "--device", "pixel8", "--format", fmt, "--project", str(tiny_lm_project),
                                      "--prune", "structured:0.5", "--prune-epochs", "1", "--quant", "int4-weight-only",
                                      "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "pruned structured:0.5" in result.output
    manifest, problems = verify(out)
    assert problems == []
    p = manifest["prune"]
    assert p["query_heads"] == {"before": 4, "after": 2} and p["mlp_neurons"] == {"before": 128, "after": 64}
    assert p["key_value_heads"] == 2 and p["head_dim"] == 16
    assert p["recovery"]["epochs"] == 1 and p["perplexity_after"] < p["perplexity_pruned"]
    config = manifest["language_model"]["config"]
    assert (config["num_attention_heads"], config["head_dim"], config["intermediate_size"]) == (2, 16, 64)
    assert manifest["language_model"]["parameters"] == p["parameters_after"] < p["parameters_before"]
    metrics = manifest["validation"]["metrics"]
    assert manifest["validation"]["passed"] and metrics["greedy_agreement"] >= 0.9
    # the reference is the pruned decoder's (on the bundle's eval windows), which int4 stays close to
    assert metrics["perplexity"] == pytest.approx(manifest["language_model"]["reference_perplexity"], rel=0.1)
    rows, _, _ = from_bundle(out)
    assert any(r.name.startswith("pruned structured:0.5, KD-recovered") and r.metric == "perplexity" for r in rows)


def test_a_language_model_pruned_unstructured_keeps_its_zeros_through_recovery(tiny_lm_project, tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(cli, ["build", "--device", "pixel8", "--format", "onnx", "--project",
                                      str(tiny_lm_project), "--prune", "unstructured:0.5", "--prune-epochs", "1",
                                      "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest, _ = verify(out)
    p = manifest["prune"]
    assert p["parameters_after"] == p["parameters_before"] and p["recovery"]["epochs"] == 1
    model = onnx.load(out / manifest["model"]["file"])
    big = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 2}
    layers = [a for n, a in big.items() if n.startswith("val_")]  # the decoder layers' linear weights, transposed
    embedding = [a for n, a in big.items() if n.endswith("lm_head.weight")]
    assert len(layers) == 2 * 7 and embedding  # q, k, v, o, gate, up, down per layer
    for a in layers:
        assert (a == 0).mean() == pytest.approx(0.5, abs=0.01)  # the masks held through the KD epoch
    assert all((a == 0).mean() < 0.01 for a in embedding)
    assert p["nonzero_after"] == pytest.approx(p["parameters_before"] - sum(a.size for a in layers) / 2, rel=0.01)
    assert manifest["validation"]["passed"]
