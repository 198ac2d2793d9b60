"""Backend-independent quantization math (numpy only; importing this loads no runtime).

``numerics`` holds the affine convention the backends share (params, quantize/dequantize,
int32 bias, error metrics); ``observers`` turns calibration batches into params.

>>> import numpy as np
>>> from edgekit.quantize import compute_params, fake_quantize, sqnr_db
>>> x = np.linspace(-1, 1, 101, dtype=np.float32)
>>> sqnr_db(x, fake_quantize(x, compute_params(x))) > 40
True
"""

from __future__ import annotations

from edgekit.quantize.numerics import (
    MIN_SCALE,
    QuantizationError,
    QuantParams,
    affine_params,
    bias_scale,
    compare,
    compute_params,
    cosine_similarity,
    dequantize,
    fake_quantize,
    max_abs_error,
    mse,
    qrange,
    quantize,
    quantize_bias,
    range_params,
    sqnr_db,
    storage_dtype,
    symmetric_params,
)
from edgekit.quantize.observers import (
    OBSERVERS,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MseObserver,
    Observer,
    PercentileObserver,
)

__all__ = [
    "MIN_SCALE", "OBSERVERS", "MinMaxObserver", "MovingAverageMinMaxObserver", "MseObserver", "Observer",
    "PercentileObserver", "QuantParams", "QuantizationError", "affine_params", "bias_scale", "compare",
    "compute_params", "cosine_similarity", "dequantize", "fake_quantize", "max_abs_error", "mse", "qrange",
    "quantize", "quantize_bias", "range_params", "sqnr_db", "storage_dtype", "symmetric_params",
]
