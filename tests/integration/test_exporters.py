"""A tiny model through every exporter and backend, run in the real runtimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.errors import ExportError
from edgekit.export import EXPORTERS
from edgekit.validate import validate


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # a Python branch on a tensor value: torch.export refuses it
            return x * 2
        return x


CASES = [(f, b) for f, e in EXPORTERS.items() for b in e.backends]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 1, 8, 8)).astype(np.float32)
    model = Tiny().eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return model, x, ref


@pytest.mark.parametrize("fmt,backend", CASES, ids=[f"{f}-{b}" for f, b in CASES])
def test_export_and_validate_in_real_runtime(fmt, backend, data, tmp_path):
    model, x, ref = data
    exporter = EXPORTERS[fmt]
    spec = exporter.backends[backend]
    result = exporter.export(model, (torch.from_numpy(x[:1]),), backend, tmp_path,
                             input_names=["x"], output_names=["y"])
    assert result.model_path.is_file() and result.model_path.suffix == exporter.extension
    artifact = result.model_path if spec.runs_on_host else result.twin_path
    assert artifact is not None and artifact.is_file()
    v = validate(artifact, exporter.runtime, x, ref.argmax(1), [ref], ["y"], exporter.atol["fp32"],
                 "target-runtime" if spec.runs_on_host else "host-twin", timing_runs=3)
    assert v.passed and v.max_abs_error < 1e-4
    assert v.top1_agreement == 1.0 and v.value == 1.0
    assert v.host_latency_ms["median"] > 0


@pytest.mark.parametrize("backend", ["xnnpack", "coreml", "vulkan"])
def test_executorch_records_the_delegate(backend, data, tmp_path):
    model, x, _ = data
    result = EXPORTERS["executorch"].export(model, (torch.from_numpy(x[:1]),), backend, tmp_path)
    expected = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend", "vulkan": "VulkanBackend"}[backend]
    assert result.details["delegate_backends"] == [expected]
    assert result.details["delegated_partitions"] >= 1


def test_onnx_names_and_opset(data, tmp_path):
    import onnx

    model, x, _ = data
    result = EXPORTERS["onnx"].export(model, (torch.from_numpy(x[:1]),), "cpu", tmp_path,
                                      input_names=["image"], output_names=["logits"])
    m = onnx.load(str(result.model_path))
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert result.details["opset"] >= 17


@pytest.mark.parametrize("fmt", list(EXPORTERS))
def test_untraceable_forward_names_the_line(fmt, tmp_path):
    backend = next(iter(EXPORTERS[fmt].backends))
    with pytest.raises(ExportError) as e:
        EXPORTERS[fmt].export(DataDependent(), (torch.ones(1, 4),), backend, tmp_path)
    msg = str(e.value)
    assert "torch.export cannot trace DataDependent.forward" in msg
    assert "data-dependent" in msg and "test_exporters.py" in msg and "if x.sum() > 0" in msg
