"""int4 grouped weights (torchao 8da4w) lowered to XNNPACK, on a linear-heavy model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.quantize.numerics import QuantizationError
from edgekit.export import EXPORTERS
from edgekit.quantize.schemes import Int4WeightOnly
from edgekit.validate import validate


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                               torch.nn.ReLU(), torch.nn.Linear(512, 64)).eval()


def test_int4_linear_heavy_model_is_under_016_of_fp32(tmp_path):
    model, exporter = mlp(), EXPORTERS["executorch"]
    x = np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    example = (torch.from_numpy(x[:1]).clone(),)
    (tmp_path / "f").mkdir()
    (tmp_path / "q").mkdir()
    fp32 = exporter.export(model, example, "xnnpack", tmp_path / "f")
    q = exporter.export(model, example, "xnnpack", tmp_path / "q", quant=Int4WeightOnly(group_size=32))
    ratio = q.model_path.stat().st_size / fp32.model_path.stat().st_size
    assert ratio <= 0.16  # acceptance: int4 weight-only, linear-heavy model
    assert q.details["delegate_backends"] == ["XnnpackBackend"]
    v = validate(q.model_path, "executorch", x, ref.argmax(1), [ref], ["y"], None, "target-runtime", timing_runs=3)
    assert v.outputs[0].sqnr_db > 15 and v.top1_agreement >= 0.75  # 4-bit: close to fp32, not exact
    # (64 random-weight logits on random inputs: near ties make top-1 a noisy measure here)
    assert not np.allclose(ref, 0)
    assert model[0].weight.dtype == torch.float32  # the caller's model is not quantized in place


def test_group_size_must_divide_the_inputs(tmp_path):
    with pytest.raises(QuantizationError, match=r"input features of 0, 2, 4 are not a multiple of the group size 96"):
        EXPORTERS["executorch"].export(mlp(), (torch.zeros(1, 256),), "xnnpack", tmp_path,
                                       quant=Int4WeightOnly(group_size=96))
