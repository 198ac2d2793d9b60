"""Calibration observers: the ranges they choose, their limits, and torch's observers as a reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgekit.quantize import (
    OBSERVERS,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MseObserver,
    PercentileObserver,
    QuantizationError,
    compute_params,
    dequantize,
    fake_quantize,
    quantize,
)


@pytest.fixture(scope="module")
def torch_observers():
    pytest.importorskip("torch")
    from torch.ao.quantization import observer

    return observer


def batches(seed=0, n=4, shape=(8, 3, 5), shift=0.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * rng.uniform(0.1, 4) + shift).astype(np.float32) for _ in range(n)]


def test_registry_names_every_observer():
    assert OBSERVERS == {"minmax": MinMaxObserver, "moving-average-minmax": MovingAverageMinMaxObserver,
                         "percentile": PercentileObserver, "mse": MseObserver}
    assert OBSERVERS["mse"]().name == "mse" and OBSERVERS["mse"](name="act1").name == "act1"


@pytest.mark.parametrize("kind", sorted(OBSERVERS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_batches_are_rejected_naming_the_observer(kind, bad):
    obs = OBSERVERS[kind](name="encoder.act3")
    obs.observe(np.ones(4))
    with pytest.raises(QuantizationError, match=r"observer 'encoder\.act3' has 1 NaN/Inf"):
        obs.observe(np.array([0.0, bad]))


@pytest.mark.parametrize("kind", sorted(OBSERVERS))
def test_empty_batches_no_data_and_changing_channels_are_clear_errors(kind):
    obs = OBSERVERS[kind](axis=1, name="conv2")
    with pytest.raises(QuantizationError, match="observer 'conv2' has seen no data"):
        obs.params()
    with pytest.raises(QuantizationError, match="observer 'conv2' is empty"):
        obs.observe(np.zeros((0, 3)))
    obs.observe(np.ones((2, 3)))
    with pytest.raises(QuantizationError, match="4 channel.*earlier batches had 3"):
        obs.observe(np.ones((2, 4)))


@pytest.mark.parametrize("kind", sorted(OBSERVERS))
@pytest.mark.parametrize("symmetric", [False, True])
def test_zero_is_exact_and_per_channel_works_for_every_observer(kind, symmetric):
    obs = OBSERVERS[kind](axis=-2)
    for x in batches(shift=3.0):  # mostly positive data: 0 must still be a code
        obs.observe(x)
    p = obs.params(symmetric=symmetric)
    assert p.axis == 1 and p.scale.shape == (3,)
    assert np.all(fake_quantize(np.zeros((1, 3, 1)), p) == 0.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(arrays(np.float32, (3, 4), elements=st.floats(-1e3, 1e3, width=32)), min_size=1, max_size=4),
       st.sampled_from([None, 0, 1]), st.booleans())
def test_minmax_equals_compute_params_on_all_batches(xs, axis, symmetric):
    obs = MinMaxObserver(axis=axis)
    for x in xs:
        obs.observe(x)
    everything = np.concatenate(xs, axis=1 if axis == 0 else 0)  # keep the channel axis whole
    assert obs.params(symmetric=symmetric) == compute_params(everything, symmetric=symmetric, axis=axis)


def test_moving_average_hand_case():
    obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    for x in ([-2.0, 2.0], [0.0, 4.0], [-4.0, 4.0]):
        obs.observe(np.array(x))
    assert obs.min_val.tolist() == [-2.5] and obs.max_val.tolist() == [3.5]  # -2 -> -1 -> -2.5; 2 -> 3 -> 3.5


def test_percentile_is_exact_while_the_sample_holds_everything_and_clips_outliers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, 9999), [1000.0]]).astype(np.float32)
    obs = PercentileObserver(percentile=99.9)
    obs.observe(x[:5000])
    obs.observe(x[5000:])
    lo, hi = np.percentile(x, [0.1, 99.9])
    assert obs.params().scale == compute_params(np.array([lo, hi], np.float32)).scale
    assert obs.params().scale < 2.0 / 255 < 1000 / 255


def test_sampled_observers_keep_memory_bounded_and_sample_uniformly():
    obs = PercentileObserver(max_samples=1000, axis=0)
    for i in range(10):
        obs.observe(np.full((2, 1000), float(i)))  # batch i holds only the value i
    assert obs.sample.shape == (2, 1000)
    counts = np.bincount(obs.sample[0].astype(int), minlength=10)
    assert counts.sum() == 1000 and counts.min() > 50  # about 100 of each batch, not only the last ones
    assert obs.min_val.tolist() == [0.0, 0.0] and obs.max_val.tolist() == [9.0, 9.0]  # exact, not sampled


def test_mse_clips_an_outlier_when_that_lowers_the_error():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(5000), [40.0]]).astype(np.float32)
    for symmetric in (False, True):
        mse_obs, minmax = MseObserver(), MinMaxObserver()
        mse_obs.observe(x)
        minmax.observe(x)
        # 4 bits: the bulk's rounding error outweighs clipping one outlier (at 8 bits it would not)
        chosen, full = mse_obs.params(bits=4, symmetric=symmetric), minmax.params(bits=4, symmetric=symmetric)
        err = {name: np.mean((fake_quantize(x, p) - x) ** 2) for name, p in (("mse", chosen), ("minmax", full))}
        assert chosen.scale < full.scale / 2 and err["mse"] < err["minmax"] / 2


def test_mse_keeps_the_exact_range_for_uniform_data_and_constants():
    x = np.linspace(-1, 1, 2001, dtype=np.float32)
    obs = MseObserver()
    obs.observe(x)
    assert obs.params().scale >= 0.95 * compute_params(x).scale  # nothing worth clipping
    const = MseObserver()
    const.observe(np.full(10, 0.3, np.float32))
    assert np.all(fake_quantize(np.full(3, 0.3, np.float32), const.params()) == np.float32(0.3))


# ---------------------------------------------------------------- torch's observers as a reference

# (torch dtype, torch qscheme, our scheme). torch's symmetric schemes use the full range and
# scale = max|x| / ((qmax - qmin) / 2): our narrow=False.
SCHEMES = [
    ("quint8", "per_tensor_affine", {"symmetric": False, "signed": False}),
    ("qint8", "per_tensor_affine", {"symmetric": False, "signed": True}),
    ("qint8", "per_tensor_symmetric", {"symmetric": True, "signed": True, "narrow": False}),
    ("quint8", "per_tensor_symmetric", {"symmetric": True, "signed": False, "narrow": False}),
]


def torch_qparams(torch_observer, xs):
    import torch

    for x in xs:
        torch_observer(torch.from_numpy(x))
    scale, zero_point = torch_observer.calculate_qparams()
    return scale.numpy(), zero_point.numpy()


@pytest.mark.parametrize("dtype,qscheme,ours", SCHEMES)
@pytest.mark.parametrize("shift", [0.0, 2.5, -7.0])
def test_minmax_matches_torch_per_tensor(torch_observers, dtype, qscheme, ours, shift):
    import torch

    xs = batches(shift=shift)
    scale, zero_point = torch_qparams(
        torch_observers.MinMaxObserver(dtype=getattr(torch, dtype), qscheme=getattr(torch, qscheme)), xs)
    obs = MinMaxObserver()
    for x in xs:
        obs.observe(x)
    p = obs.params(**ours)
    assert p.scale == scale[0] and p.zero_point == zero_point[0]  # bit for bit, float32


@pytest.mark.parametrize("dtype,qscheme,ours", [SCHEMES[0], SCHEMES[2]])
@pytest.mark.parametrize("axis", [0, 2, -1])
def test_minmax_matches_torch_per_channel(torch_observers, dtype, qscheme, ours, axis):
    import torch

    xs = batches(seed=3)
    qscheme = getattr(torch, qscheme.replace("tensor", "channel"))
    scale, zero_point = torch_qparams(torch_observers.PerChannelMinMaxObserver(
        ch_axis=axis % 3, dtype=getattr(torch, dtype), qscheme=qscheme), xs)
    obs = MinMaxObserver(axis=axis)
    for x in xs:
        obs.observe(x)
    p = obs.params(**ours)
    assert np.array_equal(p.scale, scale) and np.array_equal(p.zero_point, zero_point)


def test_moving_average_matches_torch(torch_observers):
    xs = batches(seed=5, n=6)
    scale, zero_point = torch_qparams(torch_observers.MovingAverageMinMaxObserver(), xs)  # quint8 affine, 0.01
    obs = MovingAverageMinMaxObserver()
    for x in xs:
        obs.observe(x)
    assert obs.params().scale == scale[0] and obs.params().zero_point == zero_point[0]


def test_low_bit_affine_matches_torch_custom_range(torch_observers):
    import torch

    xs = batches(seed=7, shift=1.0)
    scale, zero_point = torch_qparams(torch_observers.MinMaxObserver(dtype=torch.quint8, quant_min=0, quant_max=15), xs)
    obs = MinMaxObserver()
    for x in xs:
        obs.observe(x)
    p = obs.params(bits=4)
    assert p.scale == scale[0] and p.zero_point == zero_point[0]


def test_documented_differences_from_torch(torch_observers):
    import torch

    x = np.array([-1.0, 0.5, 2.0], np.float32)
    obs = MinMaxObserver()
    obs.observe(x)
    # Our symmetric default is the narrow range (XNNPACK/LiteRT int8 weights): max|x| / 127, not / 127.5.
    scale, _ = torch_qparams(torch_observers.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric), [x])
    assert obs.params(symmetric=True).scale == np.float32(2.0) / np.float32(127) != scale[0]
    # All zeros: torch's scale is float32 eps (1.19e-7), ours is 1.0; both give back zeros exactly.
    zeros = MinMaxObserver()
    zeros.observe(np.zeros(4, np.float32))
    scale, _ = torch_qparams(torch_observers.MinMaxObserver(), [np.zeros(4, np.float32)])
    assert scale[0] == np.finfo(np.float32).eps and zeros.params().scale == 1.0
    assert dequantize(quantize(np.zeros(2), zeros.params()), zeros.params()).tolist() == [0.0, 0.0]
