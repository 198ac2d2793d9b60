"""Quantization math: properties, hand-computed values, degenerate input, and torch as a reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from edgekit.errors import EdgekitError
from edgekit.quantize import (
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
    symmetric_params,
)

FAST = settings(max_examples=60, deadline=None)
finite32 = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
tensors = arrays(np.float32, array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite32)
# (bits, signed, symmetric, narrow); narrow None = the scheme's default
schemes = st.tuples(st.integers(2, 16), st.booleans(), st.booleans(), st.sampled_from([None, False, True]))


def params_for(x, scheme, axis=None):
    bits, signed, symmetric, narrow = scheme
    return compute_params(x, bits=bits, signed=signed, symmetric=symmetric, narrow=narrow, axis=axis)


def half_step(x, scale):
    """scale / 2, plus two float32 ulps of x for the rounding of x / scale and of (q - zp) * scale."""
    return np.float32(scale) / 2 + 2 * np.spacing(np.abs(np.asarray(x, np.float32)))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------- ranges and params


def test_qrange_and_dtypes():
    assert qrange(8, signed=False) == (0, 255)
    assert qrange(8, signed=True) == (-128, 127)
    assert qrange(8, signed=True, narrow=True) == (-127, 127)
    assert qrange(2, signed=True, narrow=True) == (-1, 1)
    assert qrange(16, signed=False) == (0, 65535)
    expected = {(4, True): np.int8, (8, False): np.uint8, (9, True): np.int16, (16, False): np.uint16}
    for (bits, signed), dtype in expected.items():
        assert quantize([0.0], affine_params(0.0, 1.0, bits=bits, signed=signed)).dtype == dtype
    for bits in (1, 17, 8.0):
        with pytest.raises(QuantizationError, match="bits"):
            qrange(bits, signed=True)


@FAST
@given(tensors, schemes, st.booleans())
def test_params_round_trip_through_json(x, scheme, per_channel):
    p = params_for(x, scheme, axis=-1 if per_channel else None)
    back = QuantParams.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p and back.scale.dtype == np.float32
    assert np.array_equal(back.scale, p.scale) and np.array_equal(back.zero_point, p.zero_point)


def test_params_are_validated_and_read_only():
    p = QuantParams(scale=0.5, zero_point=3, bits=4)
    with pytest.raises(ValueError):
        p.scale[...] = 1.0
    for bad in ({"scale": 0.0, "zero_point": 0}, {"scale": 1e-45, "zero_point": 0},
                {"scale": float("nan"), "zero_point": 0}, {"scale": 1.0, "zero_point": 16},
                {"scale": 1.0, "zero_point": 1.5}, {"scale": [1.0, 2.0], "zero_point": [0, 0]}):
        with pytest.raises(QuantizationError):
            QuantParams(bits=4, **bad)
    with pytest.raises(QuantizationError, match="unknown.*colour"):
        QuantParams.from_dict({**p.to_dict(), "colour": "red"})


def test_affine_range_always_contains_zero():
    p = affine_params(2.0, 3.0)  # widened to [0, 3]
    assert float(p.scale) == np.float32(3) / np.float32(255) and int(p.zero_point) == 0
    p = affine_params(-3.0, -2.0, signed=True)  # widened to [-3, 0]
    assert int(p.zero_point) == 127
    with pytest.raises(QuantizationError, match="x_min <= x_max"):
        affine_params(1.0, -1.0)


# ---------------------------------------------------------------- hand-computed values


def test_hand_computed_uint8_minus_one_to_one():
    # scale = float32(2/255); in float32 -1/scale = -127.49999 (not -127.5), so the zero point is
    # 0 - round(-127.49999) = 127 (torch's observers agree). Then 0.5/scale = 63.749996 -> 64 + 127
    # and 1/scale = 127.49999 -> 127 + 127. The exact-arithmetic textbook formula gives
    # [0, 128, 191, 255]: it puts 0 between two codes, which the integer zero point forbids.
    p = affine_params(-1.0, 1.0, bits=8, signed=False)
    assert p.scale == np.float32(2 / 255) and int(p.zero_point) == 127
    assert quantize([-1.0, 0.0, 0.5, 1.0], p).tolist() == [0, 127, 191, 254]


def test_hand_computed_4bit_exact_arithmetic():
    # [-1, 2.75] over 15 steps: scale 0.25 and zero point 4 exactly. x/scale = [-4, -1.2, 0, 0.4, 0.5,
    # 1.5, 11, 12]; half to even sends 0.5 -> 0 and 1.5 -> 2; 12 + 4 = 16 clamps to 15.
    p = affine_params(-1.0, 2.75, bits=4)
    assert float(p.scale) == 0.25 and int(p.zero_point) == 4
    q = quantize([-1.0, -0.3, 0.0, 0.1, 0.125, 0.375, 2.75, 3.0], p)
    assert q.tolist() == [0, 3, 4, 4, 4, 6, 15, 15]
    assert dequantize(q, p).tolist() == [-1.0, -0.25, 0.0, 0.0, 0.0, 0.5, 2.75, 2.75]


def test_hand_computed_symmetric_int8():
    p = symmetric_params(1.0)  # narrow: scale 1/127, codes -127..127
    assert p.scale == np.float32(1 / 127) and int(p.zero_point) == 0 and (p.qmin, p.qmax) == (-127, 127)
    assert quantize([-1.0, 0.0, 0.3, 1.0, 2.0], p).tolist() == [-127, 0, 38, 127, 127]
    full = symmetric_params(127.5, narrow=False)  # torch's convention: scale abs_max/127.5, codes -128..127
    assert full.scale == 1.0 and quantize([-127.5, 127.5], full).tolist() == [-128, 127]  # -127.5 -> -128
    unsigned = symmetric_params(1.0, signed=False)  # the signed grid shifted by 128
    assert int(unsigned.zero_point) == 128 and quantize([-1.0, 1.0], unsigned).tolist() == [1, 255]


@FAST
@given(st.integers(2, 16), st.integers(0, 12), st.data())
def test_matches_textbook_formula_when_zero_point_is_integral(bits, exponent, data):
    """What is asserted: with x_min a whole number z of steps below 0 (scale a power of two, so the
    float32 arithmetic is exact), quantize(x) == round((x - x_min) / (x_max - x_min) * (2^n - 1))
    for every x in [x_min, x_max] that is not within 1e-6 of a .5 tie. At exact ties the backends
    round x/scale *before* adding the zero point, so for odd z they differ from the textbook by one
    code (see the next test)."""
    levels = 2**bits - 1
    scale = 2.0**-exponent
    z = data.draw(st.integers(0, levels))
    x_min, x_max = -z * scale, (levels - z) * scale
    p = affine_params(x_min, x_max, bits=bits)
    assert float(p.scale) == scale and int(p.zero_point) == z
    x = data.draw(arrays(np.float32, 16, elements=st.floats(x_min, x_max, width=32)))
    textbook = (x.astype(np.float64) - x_min) / (x_max - x_min) * levels
    assume(np.all(np.abs(textbook - np.floor(textbook) - 0.5) > 1e-6))
    assert np.array_equal(quantize(x, p), np.rint(textbook))


def test_textbook_differs_only_at_ties_with_odd_zero_point():
    p = affine_params(-1.0, 2.0, bits=2)  # scale 1, zero point 1
    # textbook: round(0.5 + 1) = 2 (half to even); backends: round(0.5) + 1 = 1
    assert quantize([0.5], p).tolist() == [1] and np.rint((0.5 + 1) / 3 * 3) == 2


# ---------------------------------------------------------------- properties


@FAST
@given(tensors, schemes)
def test_round_trip_error_is_at_most_half_a_step(x, scheme):
    p = params_for(x, scheme)
    assert np.all(np.abs(fake_quantize(x, p) - x) <= half_step(x, p.scale))


@FAST
@given(st.integers(2, 16), st.booleans(), st.floats(1e-3, 1e3), st.data())
def test_values_inside_range_round_trip_and_outside_clamp(bits, signed, scale, data):
    qmin, qmax = qrange(bits, signed)
    p = QuantParams(scale=scale, zero_point=data.draw(st.integers(qmin, qmax)), bits=bits, signed=signed)
    s = float(p.scale)
    lo, hi = dequantize(np.array([qmin, qmax]), p).tolist()  # the representable range, as float32 values
    inside = data.draw(arrays(np.float32, 20, elements=st.floats(lo, hi, width=32)))
    assert np.all(np.abs(fake_quantize(inside, p) - inside) <= half_step(inside, s))
    beyond = data.draw(st.floats(1.0, 1e6))
    q = quantize(np.array([hi + s * beyond, lo - s * beyond], np.float32), p)
    assert q.tolist() == [qmax, qmin]


@settings(max_examples=150, deadline=None)
@given(st.floats(-1e6, 0, width=32), st.floats(0, 1e6, width=32), schemes)
def test_zero_is_exact(x_min, x_max, scheme):
    bits, signed, symmetric, narrow = scheme
    p = range_params(x_min, x_max, bits, symmetric, signed, narrow)
    q = quantize(np.float32(0.0), p)
    assert int(q) == int(p.zero_point) and dequantize(q, p) == 0.0


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("signed", [False, True])
def test_zero_is_exact_for_every_bit_width(signed, symmetric):
    x = np.array([-0.731, 0.0, 2.9], np.float32)
    for bits in range(2, 17):
        p = compute_params(x, bits=bits, signed=signed, symmetric=symmetric)
        assert fake_quantize(x, p)[1] == 0.0, bits


@FAST
@given(arrays(np.float32, array_shapes(min_dims=1, max_dims=4, max_side=4), elements=finite32), schemes, st.data())
def test_per_channel_equals_per_tensor_on_each_slice(x, scheme, data):
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    p = params_for(x, scheme, axis=axis)
    assert p.axis == axis % x.ndim and p.scale.shape == (x.shape[axis],)
    q = quantize(x, p)
    for c in range(x.shape[axis]):
        one = params_for(np.take(x, c, axis=axis), scheme)
        assert p.scale[c] == one.scale and p.zero_point[c] == one.zero_point
        assert np.array_equal(np.take(q, c, axis=axis), quantize(np.take(x, c, axis=axis), one))


@FAST
@given(tensors, schemes, st.booleans())
def test_fake_quantize_is_idempotent(x, scheme, per_channel):
    p = params_for(x, scheme, axis=0 if per_channel else None)
    once = fake_quantize(x, p)
    assert once.dtype == np.float32 and np.array_equal(fake_quantize(once, p), once)


# ---------------------------------------------------------------- degenerate input


@FAST
@given(st.floats(2.0**-20, 1e6, width=32), st.booleans(), schemes)
def test_constant_tensor_round_trips_exactly(magnitude, negative, scheme):
    c = np.float32(-magnitude if negative else magnitude)
    p = params_for(np.full((2, 3), c), scheme)
    assert p.scale > 0 and np.all(fake_quantize(np.full(4, c), p) == c)


def test_constant_channel_among_others_is_exact():
    w = np.array([[0.3, 0.3, 0.3], [-1.0, 0.5, 2.0]], np.float32)
    p = compute_params(w, symmetric=True, axis=0)
    assert np.all(fake_quantize(w, p)[0] == np.float32(0.3))
    assert p.scale[1] == np.float32(2 / 127)  # the other channel keeps the plain formula


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("signed", [False, True])
def test_all_zeros_get_scale_one_and_come_back_exactly(signed, symmetric):
    for bits in (2, 8, 16):
        p = compute_params(np.zeros((2, 3)), bits=bits, signed=signed, symmetric=symmetric)
        assert float(p.scale) == 1.0 and p.qmin <= int(p.zero_point) <= p.qmax
        assert np.all(quantize(np.zeros(3), p) == p.zero_point)
        assert np.array_equal(fake_quantize(np.zeros(3), p), np.zeros(3, np.float32))
    per_channel = compute_params(np.array([[0.0, 0.0], [1.0, -1.0]]), signed=signed, symmetric=symmetric, axis=0)
    assert per_channel.scale[0] == 1.0 and per_channel.scale[1] < 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise_naming_the_tensor(bad):
    x = np.array([1.0, bad, 2.0], np.float32)
    with pytest.raises(QuantizationError, match=r"tensor 'conv1\.weight' has 1 NaN/Inf"):
        compute_params(x, name="conv1.weight")
    with pytest.raises(QuantizationError, match="'act3'"):
        quantize(x, symmetric_params(1.0), name="act3")
    with pytest.raises(QuantizationError, match="'fc'"):
        quantize_bias(x, 0.1, 0.1, name="fc")
    with pytest.raises(QuantizationError, match="'conv1'"):
        affine_params(bad, 1.0, name="conv1")


def test_quantization_error_is_an_edgekit_error_with_an_exit_code():
    assert issubclass(QuantizationError, EdgekitError) and QuantizationError.exit_code == 4


def test_empty_tensor_raises_clearly():
    with pytest.raises(QuantizationError, match=r"tensor 'emb' is empty \(shape \(0, 3\)\)"):
        compute_params(np.zeros((0, 3)), name="emb")


def test_shape_and_axis_errors():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(QuantizationError, match="axis 2 is out of range"):
        compute_params(x, axis=2)
    with pytest.raises(QuantizationError, match="params have 2 channels"):
        quantize(x.T, compute_params(x, axis=0))
    with pytest.raises(QuantizationError, match="outside"):
        dequantize(np.array([-1]), affine_params(0.0, 1.0))
    with pytest.raises(QuantizationError, match="integer codes"):
        dequantize(np.array([0.5]), affine_params(0.0, 1.0))


def test_tiny_ranges_are_guarded_by_min_scale():
    assert affine_params(0.0, 1e-20).scale == MIN_SCALE
    assert symmetric_params(1e-30).scale == MIN_SCALE
    assert compute_params(np.array([1e-30, -1e-30], np.float32), symmetric=True).scale == MIN_SCALE
    assert bias_scale(MIN_SCALE, MIN_SCALE) >= np.finfo(np.float32).tiny  # never denormal
    with pytest.raises(QuantizationError, match="not a finite normal float32"):
        bias_scale(1e-30, 1e-30)


def test_bias_quantization_and_int32_overflow():
    assert quantize_bias([1.0, -0.3], 0.5, 0.25).tolist() == [8, -2]
    assert quantize_bias([1.0, 2.0], 0.5, np.array([0.25, 0.5])).tolist() == [8, 8]  # per-channel weights
    scale = 2.0**-20
    edge = quantize_bias([-(2.0**31) * scale], 1.0, scale)
    assert edge.dtype == np.int32 and edge.tolist() == [-(2**31)]
    with pytest.raises(QuantizationError, match=r"layer 'fc1'.*does not fit int32"):
        quantize_bias([0.5, 2.0**31 * scale], 1.0, scale, name="fc1")
    with pytest.raises(QuantizationError, match="layer 'head'"):
        quantize_bias([1.0], 1e-6, 1e-6, name="head")  # 1e12 codes


# ---------------------------------------------------------------- metrics


def test_metrics_on_hand_cases():
    assert sqnr_db([10.0, -10.0], [11.0, -9.0]) == 20.0  # signal 100, noise 1
    assert sqnr_db([3.0, 4.0], [3.0, 5.0]) == pytest.approx(10 * math.log10(12.5 / 0.5))
    assert mse([1.0, 2.0], [1.0, 4.0]) == 2.0
    assert max_abs_error([[1.0, 2.0]], [[1.5, 1.0]]) == 1.0
    assert cosine_similarity([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))
    assert cosine_similarity([1.0, 2.0], [-2.0, 1.0]) == 0.0
    assert cosine_similarity([1.0, 2.0], [-1.0, -2.0]) == -1.0


def test_metrics_edge_cases():
    x = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    assert compare(x, x) == {"sqnr_db": math.inf, "mse": 0.0, "max_abs_error": 0.0, "cosine_similarity": 1.0}
    assert sqnr_db([0.0, 0.0], [0.0, 1.0]) == -math.inf
    assert sqnr_db([0.0], [0.0]) == math.inf
    assert cosine_similarity([0.0, 0.0], [0.0, 0.0]) == 1.0 and cosine_similarity([0.0], [2.0]) == 0.0
    assert math.isnan(sqnr_db([1.0, 2.0], [1.0, np.nan]))
    with pytest.raises(ValueError, match="shapes"):
        mse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        compare([], [])


def test_sqnr_of_8bit_quantization_is_about_6db_per_bit():
    x = np.random.default_rng(1).uniform(-1, 1, 10_000).astype(np.float32)
    sqnr = {bits: sqnr_db(x, fake_quantize(x, compute_params(x, bits=bits))) for bits in (4, 8)}
    assert 40 < sqnr[8] < 55 and sqnr[8] - sqnr[4] == pytest.approx(4 * 6.02, abs=1.0)


# ---------------------------------------------------------------- torch as an independent reference


def assert_same_codes(ours, theirs, ratio):
    """Equal codes, except where x/scale (``ratio``, float64) is within ~2^-20 of a .5 tie: there
    dividing (us, ONNX) and multiplying by a float32 reciprocal (torch, XNNPACK) may round apart."""
    differ = ours.astype(np.int64) != theirs.astype(np.int64)
    near_tie = np.abs(ratio - np.floor(ratio) - 0.5) <= 2.0**-20 * np.maximum(np.abs(ratio), 1)
    assert np.all(near_tie[differ]), f"codes differ away from a rounding tie: {ratio[differ & ~near_tie]}"
    assert differ.sum() <= 2 and np.all(np.abs(ours.astype(np.int64) - theirs)[differ] == 1)


@pytest.mark.parametrize("signed", [False, True])
def test_quantize_per_tensor_matches_torch(torch, signed):
    rng = np.random.default_rng(0)
    dtype = torch.qint8 if signed else torch.quint8
    for _ in range(20):
        x = (rng.standard_normal(5000) * rng.uniform(0.1, 10)).astype(np.float32)
        # narrow=False: torch clamps to the dtype's full range. From x[:100], so some of x clamps.
        p = compute_params(x[:100], signed=signed, symmetric=bool(rng.integers(2)), narrow=False)
        theirs = torch.quantize_per_tensor(torch.from_numpy(x), float(p.scale), int(p.zero_point), dtype)
        assert_same_codes(quantize(x, p), theirs.int_repr().numpy(), x / np.float64(p.scale))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_quantize_per_channel_matches_torch(torch, axis):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 5, 40)) * rng.uniform(0.1, 5, (6, 1, 1))).astype(np.float32)
    for signed, symmetric, dtype in ((False, False, torch.quint8), (True, True, torch.qint8)):
        p = compute_params(0.7 * x, signed=signed, symmetric=symmetric, narrow=False, axis=axis)  # some clamp
        theirs = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(p.scale.astype(np.float64)),
                                            torch.from_numpy(p.zero_point.astype(np.int64)), p.axis, dtype)
        shape = [1] * x.ndim
        shape[p.axis] = -1
        ratio = x / p.scale.astype(np.float64).reshape(shape)
        assert_same_codes(quantize(x, p), theirs.int_repr().numpy(), ratio)


def test_round_half_to_even_matches_torch_at_exact_ties(torch):
    # A power-of-two scale makes x/scale and x*(1/scale) exact, so these are true .5 ties.
    x = ((np.arange(-60, 60) + 0.5) * 0.25).astype(np.float32)
    for zp, dtype, signed in ((0, torch.qint8, True), (-4, torch.qint8, True), (128, torch.quint8, False)):
        p = QuantParams(scale=0.25, zero_point=zp, signed=signed)
        theirs = torch.quantize_per_tensor(torch.from_numpy(x), 0.25, zp, dtype).int_repr().numpy()
        assert np.array_equal(quantize(x, p), theirs)
        assert np.array_equal(quantize(x, p).astype(np.int64) - zp, np.rint(x / 0.25))  # half to even


def test_torch_rounds_after_adding_an_odd_zero_point(torch):
    """A documented difference: torch's x86 quantize_per_tensor rounds x/scale + zero_point, so with an
    odd zero point its exact ties go the other way. XNNPACK, ONNX and we round x/scale first."""
    x = np.array([0.125, 0.375], np.float32)  # x/scale = 0.5, 1.5
    theirs = torch.quantize_per_tensor(torch.from_numpy(x), 0.25, 3, torch.quint8).int_repr().numpy()
    ours = quantize(x, QuantParams(scale=0.25, zero_point=3))
    assert ours.tolist() == [3, 5] and theirs.tolist() == [4, 4]  # rint(0.5)+3, rint(1.5)+3 vs rint(3.5), rint(4.5)
