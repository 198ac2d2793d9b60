from __future__ import annotations

import pytest

from edgekit.errors import ValidationFailed
from edgekit.validate import OutputComparison, ValidationResult


def result(err: float) -> ValidationResult:
    return ValidationResult("target-runtime", {"runtime": "onnxruntime", "version": "1"}, "model.onnx", 10, 1e-4,
                            [OutputComparison("logits", err, err / 2, [10, 10])], 0.9, "accuracy", 0.8, 0.8)


def test_within_tolerance_passes():
    r = result(5e-5)
    assert r.passed
    r.raise_if_failed()
    assert r.to_dict()["max_abs_error"] == 5e-5


def test_failure_names_output_and_error():
    with pytest.raises(ValidationFailed, match=r"output 'logits' of model.onnx differs from PyTorch by up to 0.002"):
        result(2e-3).raise_if_failed()


def test_nan_fails():
    r = result(float("nan"))
    assert not r.passed
    with pytest.raises(ValidationFailed):
        r.raise_if_failed()
