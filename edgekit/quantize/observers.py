"""Calibration observers: see batches with ``observe(x)``, then give params with ``params(...)``.

Every observer rejects NaN/Inf and empty batches (:class:`QuantizationError` naming the
observer), works per tensor or per channel along ``axis`` (fixed at construction, as torch's
``PerChannelMinMaxObserver(ch_axis=...)``, because per-channel statistics depend on it), and turns
its range into params with :func:`range_params`, so 0 is always exactly representable.
Memory stays bounded: min/max observers keep two numbers per channel; the percentile and MSE
observers keep a uniform random sample of at most ``max_samples`` values per channel
(bottom-k by random key, seeded, so results are reproducible).

>>> obs = OBSERVERS["minmax"](name="act1")
>>> obs.observe(np.array([-1.0, 0.5])); obs.observe(np.array([2.0]))
>>> float(obs.params().scale), int(obs.params().zero_point)  # range [-1, 2] as uint8
(0.0117647061124444, 85)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.quantize.numerics import QuantizationError, QuantParams, _channel_rows, fake_quantize, range_params


class Observer:
    """Base: validates batches and tracks the running min/max per channel; subclasses pick the range."""

    kind = "observer"

    def __init__(self, axis: int | None = None, name: str | None = None):
        self.axis = axis
        self.name = name or self.kind
        self.min_val: np.ndarray | None = None  # shape (channels,); one channel per tensor
        self.max_val: np.ndarray | None = None

    def observe(self, x: Any) -> None:
        """Record one calibration batch (any shape; ``axis`` picks the channel dimension)."""
        rows, axis = _channel_rows(x, self.axis, f"observer {self.name!r}")
        if self.min_val is not None and rows.shape[0] != self.min_val.shape[0]:
            raise QuantizationError(f"observer {self.name!r}: batch has {rows.shape[0]} channel(s) along axis "
                                    f"{self.axis}, earlier batches had {self.min_val.shape[0]}")
        self._channel_axis = axis
        self._update(rows)

    def params(self, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
               narrow: bool | None = None) -> QuantParams:
        """Params for everything observed so far (defaults as :func:`range_params`)."""
        if self.min_val is None:
            raise QuantizationError(f"observer {self.name!r} has seen no data; call observe() with calibration "
                                    "batches first")
        lo, hi = self._range(bits, symmetric, signed, narrow)
        if self.axis is None:
            lo, hi = lo[0], hi[0]
        return range_params(lo, hi, bits, symmetric, signed, narrow, self._channel_axis, self.name)

    def _update(self, rows: np.ndarray) -> None:
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        first = self.min_val is None
        self.min_val = lo if first else np.minimum(self.min_val, lo)
        self.max_val = hi if first else np.maximum(self.max_val, hi)

    def _range(self, bits: int, symmetric: bool, signed: bool | None,
               narrow: bool | None) -> tuple[np.ndarray, np.ndarray]:
        return self.min_val, self.max_val


class MinMaxObserver(Observer):
    """The global min and max of everything observed (torch's ``MinMaxObserver``).

    >>> obs = MinMaxObserver(axis=0)
    >>> obs.observe(np.array([[-1.0, 1.0], [0.0, 4.0]]))
    >>> obs.params(symmetric=True).scale.tolist()  # max|x| per row / 127
    [0.007874015718698502, 0.031496062874794006]
    """

    kind = "minmax"


class MovingAverageMinMaxObserver(Observer):
    """An exponential moving average of each batch's min and max, as torch computes it.

    ``min = min + averaging_constant * (batch_min - min)`` (torch's default 0.01, i.e. momentum
    0.99); the first batch sets the range. Smooths out a few outlier batches.

    >>> obs = MovingAverageMinMaxObserver(averaging_constant=0.5)
    >>> obs.observe(np.array([0.0, 2.0])); obs.observe(np.array([0.0, 4.0]))
    >>> float(obs.max_val[0])
    3.0
    """

    kind = "moving-average-minmax"

    def __init__(self, averaging_constant: float = 0.01, axis: int | None = None, name: str | None = None):
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        super().__init__(axis, name)
        self.averaging_constant = averaging_constant

    def _update(self, rows: np.ndarray) -> None:
        if self.min_val is None:
            return super()._update(rows)
        c = np.float32(self.averaging_constant)
        self.min_val = self.min_val + c * (rows.min(axis=1) - self.min_val)
        self.max_val = self.max_val + c * (rows.max(axis=1) - self.max_val)


class _SampledObserver(Observer):
    """Keeps the exact min/max plus a uniform sample of at most ``max_samples`` values per channel."""

    def __init__(self, max_samples: int, seed: int, axis: int | None, name: str | None):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        super().__init__(axis, name)
        self.max_samples = max_samples
        self._rng = np.random.default_rng(seed)
        self.sample: np.ndarray | None = None  # (channels, <= max_samples)
        self._keys: np.ndarray | None = None

    def _update(self, rows: np.ndarray) -> None:
        super()._update(rows)
        keys = self._rng.random(rows.shape, dtype=np.float32)
        if self.sample is not None:
            rows, keys = np.concatenate([self.sample, rows], 1), np.concatenate([self._keys, keys], 1)
        if rows.shape[1] > self.max_samples:  # the values with the smallest keys: a uniform sample of all seen
            keep = np.argpartition(keys, self.max_samples - 1, axis=1)[:, : self.max_samples]
            rows, keys = np.take_along_axis(rows, keep, 1), np.take_along_axis(keys, keep, 1)
        self.sample, self._keys = rows, keys


class PercentileObserver(_SampledObserver):
    """Clips to the ``100 - percentile`` and ``percentile`` percentiles, ignoring rare outliers.

    Percentiles come from the bounded sample (exact while fewer than ``max_samples`` values per
    channel were seen; default 2^17, 1 MiB per channel, enough to resolve 99.99).

    >>> obs = PercentileObserver(percentile=90.0)
    >>> obs.observe(np.arange(11.0))
    >>> round(float(obs.params().scale) * 255, 4)  # range [0, 9]: the top 10% is clipped
    9.0
    """

    kind = "percentile"

    def __init__(self, percentile: float = 99.99, max_samples: int = 2**17, seed: int = 0,
                 axis: int | None = None, name: str | None = None):
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(max_samples, seed, axis, name)
        self.percentile = percentile

    def _range(self, bits: int, symmetric: bool, signed: bool | None,
               narrow: bool | None) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.percentile(self.sample, [100 - self.percentile, self.percentile], axis=1)
        return lo.astype(np.float32), hi.astype(np.float32)


class MseObserver(_SampledObserver):
    """Picks the clipping range that minimizes the quantization MSE of the observed data.

    Candidates are the min/max range shrunk by ``num_candidates`` linearly spaced factors in
    ``(0, 1]``; each is scored by fake-quantizing the bounded sample (default 2^14 values per
    channel) with the requested scheme. Ties keep the wider range.

    >>> obs = MseObserver()
    >>> obs.observe(np.concatenate([np.linspace(-1, 1, 10_000), [50.0]]))
    >>> round(float(obs.params(bits=4, symmetric=True).scale) * 7, 3)  # clips to ±3, not ±50
    3.0
    """

    kind = "mse"

    def __init__(self, num_candidates: int = 100, max_samples: int = 2**14, seed: int = 0,
                 axis: int | None = None, name: str | None = None):
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        super().__init__(max_samples, seed, axis, name)
        self.num_candidates = num_candidates

    def _range(self, bits: int, symmetric: bool, signed: bool | None,
               narrow: bool | None) -> tuple[np.ndarray, np.ndarray]:
        def error(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            p = range_params(lo, hi, bits, symmetric, signed, narrow, axis=0, name=self.name)
            return np.mean((fake_quantize(self.sample, p) - self.sample) ** 2, axis=1)

        best_lo, best_hi = self.min_val.copy(), self.max_val.copy()  # factor 1: the exact min/max
        best = error(best_lo, best_hi)
        lo, hi = np.minimum(best_lo, np.float32(0)), np.maximum(best_hi, np.float32(0))
        for f in np.linspace(1, 0, self.num_candidates, endpoint=False, dtype=np.float32)[1:]:
            err = error(lo * f, hi * f)
            better = err < best
            best = np.where(better, err, best)
            best_lo[better], best_hi[better] = lo[better] * f, hi[better] * f
        return best_lo, best_hi


OBSERVERS: dict[str, type[Observer]] = {
    o.kind: o for o in (MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver, MseObserver)
}
