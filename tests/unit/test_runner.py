"""The runner's own pieces: int8 I/O handling, batching, the report schema."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit_runner import evaluate
from edgekit_runner.report import OK, RunReport
from edgekit_runner.runtimes import LoadedModel, TensorInfo, _dequantize, _quantize


def test_int8_quantize_uses_tensor_params():
    detail = {"dtype": np.int8, "quantization": (0.5, -3)}
    x = np.array([-100.0, -1.0, 0.0, 0.25, 0.26, 1.0, 100.0], np.float32)
    q = _quantize(x, detail)
    assert q.dtype == np.int8
    # round(x/0.5) half to even, then + zero point (-3), clamped: 0.25/0.5 = 0.5 rounds to 0
    assert q.tolist() == [-128, -5, -3, -3, -2, -1, 127]
    assert _dequantize(q, detail).tolist() == [-62.5, -1.0, 0.0, 0.0, 0.5, 1.0, 65.0]


def test_float_tensors_pass_through():
    detail = {"dtype": np.float32, "quantization": (0.0, 0)}
    x = np.array([1.5], np.float32)
    assert _quantize(x, detail) is x and _dequantize(x, detail) is x


def test_run_dataset_pads_last_batch_and_drops_padding():
    seen = []

    def run(arrays):
        seen.append(arrays[0].shape)
        return [arrays[0].reshape(len(arrays[0]), -1).sum(axis=1, keepdims=True)]

    model = LoadedModel(run, [TensorInfo("x", [4, 2], "float32")], [TensorInfo("y", [4, 1], "float32")])
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    (out,) = evaluate.run_dataset(model, x)
    assert seen == [(4, 2)] * 3
    assert out[:, 0].tolist() == [1, 5, 9, 13, 17, 21, 25, 29, 33, 37]


def test_report_round_trip_and_version_check():
    r = RunReport(OK, {"profile": "pixel8"}, metrics={"accuracy": 0.5})
    data = json.loads(r.to_json())
    assert RunReport.from_dict(data) == r
    with pytest.raises(ValueError, match="schema_version 99"):
        RunReport.from_dict({**data, "schema_version": 99})
