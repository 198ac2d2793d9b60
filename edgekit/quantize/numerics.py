"""Backend-independent quantization math: parameters, quantize/dequantize, error metrics.

The convention is the affine one XNNPACK, ONNX Runtime and LiteRT use::

    q     = clamp(round_half_to_even(x / scale) + zero_point, qmin, qmax)
    x_hat = (q - zero_point) * scale

Arithmetic is float32, as in the backends: inputs are cast to float32, ``x / scale`` is a
float32 division (ONNX ``QuantizeLinear``), and the zero point is added after rounding.
Backends only disagree at exact ties: torch's x86 ``quantize_per_tensor`` rounds
``x / scale + zero_point`` (so an odd zero point flips a tie), XNNPACK and torch multiply
by a float32 reciprocal (one step apart when ``x / scale`` is within an ulp of a tie), and
LiteRT's reference kernel rounds half away from zero.

Parameters are computed the way torch's observers do, and the range behind them always
contains 0, so 0.0 round-trips exactly (padding and ReLU zeros stay exact). Degenerate
input is handled on purpose:

- all zeros: scale 1.0 (torch uses float32 eps) and a valid zero point; zeros come back exactly.
- a constant ``c != 0`` (min == max): the range is ``[min(c, 0), max(c, 0)]``, and
  :func:`range_params` moves the scale a few ulps (or, failing that, a few codes) so that
  ``c`` itself round-trips exactly.
- scales never go below :data:`MIN_SCALE` (1e-12; torch uses float32 eps, 1.2e-7), so they
  are never 0 or denormal, and a bias scale (their product, >= 1e-24) stays a normal float32.
- NaN/Inf, an empty tensor, or a bias that does not fit int32: :class:`QuantizationError`
  naming the tensor or layer; nothing is silently clamped or wrapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError

MIN_BITS, MAX_BITS = 2, 16
MIN_SCALE = np.float32(1e-12)
ZERO_RANGE_SCALE = np.float32(1.0)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class QuantizationError(EdgekitError):
    """A tensor cannot be quantized: NaN/Inf or empty data, invalid parameters, int32 overflow.

    Exit code 4, like an export the backend refuses: no artifact is produced.
    """

    exit_code = 4


def _label(name: str | None, kind: str = "tensor") -> str:
    return f"{kind} {name!r}" if name else kind


def _check_bits(bits: int) -> None:
    if not (isinstance(bits, (int, np.integer)) and MIN_BITS <= bits <= MAX_BITS):
        raise QuantizationError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")


def qrange(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """The integer range (qmin, qmax) of a ``bits``-wide code; ``narrow`` drops the lowest code.

    >>> qrange(8, signed=True), qrange(8, signed=True, narrow=True), qrange(4, signed=False)
    ((-128, 127), (-127, 127), (0, 15))
    """
    _check_bits(bits)
    bits = int(bits)
    qmin, qmax = (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)
    return qmin + int(bool(narrow)), qmax


def storage_dtype(bits: int, signed: bool) -> np.dtype:
    """The smallest numpy integer dtype that holds the codes (int8/uint8/int16/uint16)."""
    _check_bits(bits)
    return np.dtype(f"{'int' if signed else 'uint'}{8 if bits <= 8 else 16}")


@dataclass(frozen=True, eq=False)
class QuantParams:
    """Scale and zero point of one tensor: 0-d arrays per tensor, 1-d along ``axis`` per channel.

    Arrays are stored read-only (float32 scale, int32 zero point); ``to_dict``/``from_dict``
    round-trip exactly through JSON-friendly types.

    >>> p = QuantParams(scale=0.5, zero_point=3, bits=4, signed=False)
    >>> (p.qmin, p.qmax), QuantParams.from_dict(p.to_dict()) == p
    ((0, 15), True)
    """

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int = 8
    signed: bool = False
    symmetric: bool = False
    narrow: bool = False
    axis: int | None = None

    def __post_init__(self) -> None:
        qmin, qmax = qrange(self.bits, self.signed, self.narrow)
        scale = np.array(self.scale, dtype=np.float32)
        zp = np.array(self.zero_point, dtype=np.float64)
        if scale.shape != zp.shape or scale.ndim != (0 if self.axis is None else 1):
            raise QuantizationError(
                f"scale {scale.shape} and zero_point {zp.shape} must both be scalars (per tensor) "
                f"or both 1-d (per channel, axis given); axis is {self.axis}")
        if not np.all(np.isfinite(scale) & (scale >= MIN_SCALE)):
            raise QuantizationError(f"scale must be finite and >= {MIN_SCALE:g}, got {scale}")
        if not np.all((zp == np.round(zp)) & (zp >= qmin) & (zp <= qmax)):
            raise QuantizationError(f"zero_point must be an integer in [{qmin}, {qmax}], got {zp}")
        for name, value in (("scale", scale), ("zero_point", zp.astype(np.int32))):
            value.flags.writeable = False
            object.__setattr__(self, name, value)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[1]

    @property
    def dtype(self) -> np.dtype:
        return storage_dtype(self.bits, self.signed)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale.tolist(), "zero_point": self.zero_point.tolist(), "bits": int(self.bits),
                "signed": bool(self.signed), "symmetric": bool(self.symmetric), "narrow": bool(self.narrow),
                "axis": self.axis}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantParams:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise QuantizationError(f"unknown quantization parameter field(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantParams) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # holds arrays


# ---------------------------------------------------------------- input checks


def _as_float32(x: Any, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    bad = np.count_nonzero(~np.isfinite(x))
    if bad:
        raise QuantizationError(f"{what} has {bad} NaN/Inf value(s) out of {x.size} (or values too large for "
                                "float32); quantization needs finite values: check the weights or calibration data")
    return x


def _normalize_axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise QuantizationError(f"{what}: channel axis {axis} is out of range for a {ndim}-d tensor")
    return int(axis) % ndim


def _channel_rows(x: Any, axis: int | None, what: str) -> tuple[np.ndarray, int | None]:
    """A finite, non-empty tensor as float32 rows, one per channel (one row per tensor), and the axis."""
    x = _as_float32(x, what)
    if x.size == 0:
        raise QuantizationError(f"{what} is empty (shape {x.shape}); there is no range to quantize")
    if axis is None:
        return x.reshape(1, -1), None
    axis = _normalize_axis(axis, x.ndim, what)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1), axis


def _stat(value: Any, axis: int | None, what: str) -> np.ndarray:
    """A range statistic (min, max or abs max): scalar per tensor, 1-d per channel, finite."""
    value = _as_float32(value, what)
    if value.ndim != (0 if axis is None else 1):
        raise QuantizationError(f"{what}: range statistics must be scalars per tensor or 1-d per channel "
                                f"(axis {axis}), got shape {value.shape}")
    return value


def _broadcast(params: QuantParams, x: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    if params.axis is None:
        return params.scale, params.zero_point
    axis = _normalize_axis(params.axis, x.ndim, what)
    if x.shape[axis] != params.scale.size:
        raise QuantizationError(f"{what}: params have {params.scale.size} channels but axis {axis} of shape "
                                f"{x.shape} has {x.shape[axis]}")
    shape = [1] * x.ndim
    shape[axis] = -1
    return params.scale.reshape(shape), params.zero_point.reshape(shape)


# ---------------------------------------------------------------- parameters


def affine_params(x_min: Any, x_max: Any, bits: int = 8, signed: bool = False, narrow: bool = False,
                  axis: int | None = None, name: str | None = None) -> QuantParams:
    """Asymmetric params for ``[x_min, x_max]`` widened to contain 0, in float32 as torch computes them.

    ``scale = (max(x_max, 0) - min(x_min, 0)) / (qmax - qmin)`` and
    ``zero_point = qmin - round(min(x_min, 0) / scale)``: the textbook
    ``round((x - x_min) / (x_max - x_min) * (2^n - 1))`` with the grid shifted so 0 is a code.
    A zero-width range ``[0, 0]`` gets scale 1.0. Per channel: 1-d ``x_min``/``x_max`` and ``axis``.

    >>> p = affine_params(-1.0, 1.0)  # uint8; -1 / scale is 127.49999 in float32, so the zero point is 127
    >>> float(p.scale), int(p.zero_point)
    (0.007843137718737125, 127)
    """
    what = _label(name)
    lo, hi = _stat(x_min, axis, what), _stat(x_max, axis, what)
    if lo.shape != hi.shape or np.any(lo > hi):
        raise QuantizationError(f"{what}: need x_min <= x_max of the same shape, got {lo} and {hi}")
    lo, hi = np.minimum(lo, np.float32(0)), np.maximum(hi, np.float32(0))
    qmin, qmax = qrange(bits, signed, narrow)
    width = hi - lo
    scale = np.where(width > 0, np.maximum(width / np.float32(qmax - qmin), MIN_SCALE), ZERO_RANGE_SCALE)
    zero_point = np.clip(qmin - np.rint(lo / scale), qmin, qmax)
    return QuantParams(scale, zero_point, bits, signed, False, narrow, axis)


def symmetric_params(abs_max: Any, bits: int = 8, signed: bool = True, narrow: bool = True,
                     axis: int | None = None, name: str | None = None) -> QuantParams:
    """Symmetric params: ``scale = abs_max / ((qmax - qmin) / 2)``, zero point 0 (2^(n-1) unsigned).

    ``narrow=True`` (default) uses ``±(2^(n-1) - 1)``, so ``scale = abs_max / (2^(n-1) - 1)``: the
    int8 weight convention of XNNPACK and LiteRT. ``narrow=False`` uses the full range and
    ``scale = abs_max / ((2^n - 1) / 2)``, which is torch's ``per_tensor_symmetric`` (qint8 and quint8).
    ``abs_max == 0`` gets scale 1.0.

    >>> float(symmetric_params(127.0).scale), float(symmetric_params(127.5, narrow=False).scale)
    (1.0, 1.0)
    """
    what = _label(name)
    amax = _stat(abs_max, axis, what)
    if np.any(amax < 0):
        raise QuantizationError(f"{what}: abs_max must be >= 0, got {amax}")
    qmin, qmax = qrange(bits, signed, narrow)
    scale = np.where(amax > 0, np.maximum(amax / np.float32((qmax - qmin) / 2), MIN_SCALE), ZERO_RANGE_SCALE)
    zero_point = np.full(amax.shape, 0 if signed else 1 << int(bits) - 1)
    return QuantParams(scale, zero_point, bits, signed, True, narrow, axis)


def range_params(x_min: Any, x_max: Any, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
                 narrow: bool | None = None, axis: int | None = None, name: str | None = None) -> QuantParams:
    """Params for an observed range: affine or symmetric, then constants snapped to be exact.

    Defaults follow torch: affine is unsigned, symmetric is signed; ``narrow`` defaults to
    ``symmetric``. A constant channel (``x_min == x_max != 0``) gets a scale, a few ulps or at
    most a few codes (or a power of two of codes) from the formula's, for which the constant
    dequantizes to itself exactly; only a scale below MIN_SCALE prevents that.

    >>> p = range_params(0.3, 0.3)  # a constant tensor
    >>> bool(dequantize(quantize(np.float32(0.3), p), p) == np.float32(0.3))
    True
    """
    signed = symmetric if signed is None else signed
    narrow = symmetric if narrow is None else narrow
    if symmetric:
        amax = np.maximum(np.abs(np.asarray(x_min, np.float32)), np.abs(np.asarray(x_max, np.float32)))
        params = symmetric_params(amax, bits, signed, narrow, axis, name)
    else:
        params = affine_params(x_min, x_max, bits, signed, narrow, axis, name)
    return _snap_constants(params, np.asarray(x_min, np.float32), np.asarray(x_max, np.float32))


def _snap_constants(params: QuantParams, lo: np.ndarray, hi: np.ndarray) -> QuantParams:
    constant = (lo == hi) & (lo != 0)
    if not constant.any():
        return params
    scale = params.scale.copy()
    for i in np.flatnonzero(constant):
        c, zp = lo.flat[i], int(params.zero_point.flat[i])
        steps = int(np.clip(np.rint(c / scale.flat[i]) + zp, params.qmin, params.qmax)) - zp
        exact = _exact_scale(c, steps) if steps else None
        scale.flat[i] = scale.flat[i] if exact is None else exact
    return replace(params, scale=scale)


def _exact_scale(c: np.float32, steps: int) -> np.float32 | None:
    """A float32 scale s that maps c to ``steps`` codes from the zero point and back to c exactly.

    Tries a few ulps around c / steps, then one to three codes fewer, then the largest power of
    two of codes (always exact unless the scale would drop below MIN_SCALE).
    """
    n, sign = abs(steps), 1 if steps > 0 else -1
    for k in [n - i for i in range(4) if n - i > 0] + [1 << (n.bit_length() - 1)]:
        k = np.float32(sign * k)
        ideal = np.float32(c / k)
        for ulps in (0, 1, -1, 2, -2):
            s = np.float32(ideal + ulps * np.spacing(ideal))
            if s >= MIN_SCALE and np.rint(c / s) == k and np.float32(k * s) == c:
                return s
    return None


def compute_params(x: Any, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
                   narrow: bool | None = None, axis: int | None = None, name: str | None = None) -> QuantParams:
    """Min/max params of a tensor, per tensor or per channel along ``axis`` (negative allowed).

    >>> w = np.array([[-1.0, 0.5], [0.25, 2.0]], np.float32)
    >>> compute_params(w, symmetric=True, axis=0).scale.tolist()  # max|w| per row / 127
    [0.007874015718698502, 0.015748031437397003]
    """
    rows, axis = _channel_rows(x, axis, _label(name))
    lo, hi = rows.min(axis=1), rows.max(axis=1)
    if axis is None:
        lo, hi = lo[0], hi[0]
    return range_params(lo, hi, bits, symmetric, signed, narrow, axis, name)


# ---------------------------------------------------------------- quantize / dequantize


def quantize(x: Any, params: QuantParams, name: str | None = None) -> np.ndarray:
    """``clamp(round_half_to_even(x / scale) + zero_point, qmin, qmax)`` in the smallest int dtype.

    >>> quantize([-1.0, 0.0, 0.5, 1.0], affine_params(-1.0, 1.0)).tolist()
    [0, 127, 191, 254]
    """
    what = _label(name)
    x = _as_float32(x, what)
    scale, zero_point = _broadcast(params, x, what)
    q = np.rint(x / scale) + zero_point
    return np.clip(q, params.qmin, params.qmax).astype(params.dtype)


def dequantize(q: Any, params: QuantParams, name: str | None = None) -> np.ndarray:
    """``(q - zero_point) * scale`` as float32; codes outside ``[qmin, qmax]`` are refused.

    >>> dequantize(np.array([0, 127, 254], np.uint8), affine_params(-1.0, 1.0)).tolist()
    [-0.9960784912109375, 0.0, 0.9960784912109375]
    """
    what = _label(name)
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise QuantizationError(f"{what}: dequantize expects integer codes, got {q.dtype}")
    if q.size and (q.min() < params.qmin or q.max() > params.qmax):
        raise QuantizationError(f"{what}: codes span [{q.min()}, {q.max()}], outside [{params.qmin}, {params.qmax}]")
    scale, zero_point = _broadcast(params, q, what)
    return (q.astype(np.int32) - zero_point).astype(np.float32) * scale


def fake_quantize(x: Any, params: QuantParams, name: str | None = None) -> np.ndarray:
    """Quantize then dequantize: the float32 values a backend computes with.

    >>> fake_quantize([0.3], symmetric_params(1.0)).tolist()  # 0.3 * 127 = 38.1 -> 38 / 127
    [0.29921260476112366]
    """
    return dequantize(quantize(x, params, name), params, name)


# ---------------------------------------------------------------- bias


def bias_scale(input_scale: Any, weight_scale: Any) -> np.ndarray:
    """``input_scale * weight_scale`` in float32 (per channel if the weight scale is), the int32 bias scale.

    >>> float(bias_scale(0.5, 0.25))
    0.125
    """
    scale = np.float32(input_scale) * np.asarray(weight_scale, np.float32)
    if not np.all(np.isfinite(scale) & (scale >= np.finfo(np.float32).tiny)):
        raise QuantizationError(f"bias scale {input_scale} * {weight_scale} is not a finite normal float32")
    return scale


def quantize_bias(bias: Any, input_scale: Any, weight_scale: Any, name: str | None = None) -> np.ndarray:
    """Bias to int32 codes with zero point 0 and ``scale = input_scale * weight_scale``.

    Computed in float64 from the float32 values, so codes above 2^24 are exact. A code that does
    not fit int32 raises :class:`QuantizationError` naming the layer; it never wraps or clamps.

    >>> quantize_bias([1.0, -0.3], 0.5, 0.25).tolist()  # 1 / 0.125 = 8, -0.3 / 0.125 = -2.4
    [8, -2]
    """
    what = _label(name, "layer")
    bias, scale = np.broadcast_arrays(_as_float32(bias, f"{what} bias"), bias_scale(input_scale, weight_scale))
    q = np.rint(bias.astype(np.float64) / scale.astype(np.float64))
    overflow = (q < INT32_MIN) | (q > INT32_MAX)
    if overflow.any():
        i = int(np.argmax(overflow.ravel()))
        raise QuantizationError(
            f"{what}: bias {bias.flat[i]:g} / scale {scale.flat[i]:g} = {q.flat[i]:.4g} does not fit int32 "
            f"({np.count_nonzero(overflow)} value(s)); the input or weight scale is too small for this bias: "
            "check the calibration range or quantize the weights per channel")
    return q.astype(np.int32)


# ---------------------------------------------------------------- metrics


def _pair(reference: Any, approx: Any) -> tuple[np.ndarray, np.ndarray]:
    r, a = np.asarray(reference, np.float64), np.asarray(approx, np.float64)
    if r.shape != a.shape:
        raise ValueError(f"cannot compare arrays of shapes {r.shape} and {a.shape}")
    if r.size == 0:
        raise ValueError("cannot compare empty arrays")
    return r.ravel(), a.ravel()


def mse(reference: Any, approx: Any) -> float:
    """Mean squared error, in float64.

    >>> mse([1.0, 2.0], [1.0, 4.0])
    2.0
    """
    r, a = _pair(reference, approx)
    return float(np.mean((r - a) ** 2))


def max_abs_error(reference: Any, approx: Any) -> float:
    """Largest absolute difference.

    >>> max_abs_error([1.0, 2.0], [1.5, 1.0])
    1.0
    """
    r, a = _pair(reference, approx)
    return float(np.max(np.abs(r - a)))


def sqnr_db(reference: Any, approx: Any) -> float:
    """Signal-to-quantization-noise ratio, ``10 log10(mean(ref^2) / mean((ref - approx)^2))``.

    +inf when the arrays are identical; -inf when the reference is all zeros and approx is not.

    >>> sqnr_db([10.0, -10.0], [11.0, -9.0])  # 100 / 1
    20.0
    """
    r, a = _pair(reference, approx)
    noise, signal = np.mean((r - a) ** 2), np.mean(r**2)
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return float(10 * np.log10(signal / noise))


def cosine_similarity(reference: Any, approx: Any) -> float:
    """Cosine of the angle between the flattened arrays; two zero vectors give 1.0, one gives 0.0.

    >>> cosine_similarity([1.0, 0.0], [1.0, 1.0])  # 1 / sqrt(2)
    0.7071067811865475
    """
    r, a = _pair(reference, approx)
    rr, aa = np.dot(r, r), np.dot(a, a)
    if rr == 0 or aa == 0:
        return 1.0 if rr == aa else 0.0
    return float(np.clip(np.dot(r, a) / np.sqrt(rr * aa), -1.0, 1.0))  # exactly 1.0 for identical arrays


def compare(reference: Any, approx: Any) -> dict[str, float]:
    """All four metrics for one output or layer.

    >>> compare([1.0, -1.0], [1.0, -1.0])
    {'sqnr_db': inf, 'mse': 0.0, 'max_abs_error': 0.0, 'cosine_similarity': 1.0}
    """
    return {"sqnr_db": sqnr_db(reference, approx), "mse": mse(reference, approx),
            "max_abs_error": max_abs_error(reference, approx),
            "cosine_similarity": cosine_similarity(reference, approx)}
