"""Range observers: what a calibrated activation's quantization range is.

An observer sees the float values a tensor takes over the calibration feeds and returns the
(low, high) range to quantize it to:

* ``minmax``: the extremes seen (no clipping; outliers widen the step for everyone);
* ``percentile``: the ``percentile``-th and ``100 - percentile``-th percentiles of all values
  (clips the rare outliers);
* ``mse``: the clipping range that minimizes the mean squared quantization error of the
  observed values (a search over a histogram, as TensorRT/NNCF do).

The range always contains 0 so that zero (padding, relu) is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import PipelineError

HISTOGRAM_BINS = 2048
SAMPLE_LIMIT = 1 << 20  # values kept per tensor for percentiles (a seeded subsample beyond this)


@dataclass
class Observer:
    """Collects values of one tensor; ``range()`` gives the (low, high) to quantize with."""

    minimum: float = float("inf")
    maximum: float = float("-inf")

    def observe(self, array: np.ndarray) -> None:
        if array.size:
            self.minimum = min(self.minimum, float(np.min(array)))
            self.maximum = max(self.maximum, float(np.max(array)))

    def range(self) -> tuple[float, float]:
        if self.minimum > self.maximum:
            return 0.0, 0.0
        return min(self.minimum, 0.0), max(self.maximum, 0.0)


@dataclass
class MinMaxObserver(Observer):
    pass


@dataclass
class PercentileObserver(Observer):
    percentile: float = 99.99
    samples: list[np.ndarray] = field(default_factory=list)
    seed: int = 0
    _kept: int = 0

    def observe(self, array: np.ndarray) -> None:
        super().observe(array)
        flat = np.asarray(array, dtype=np.float32).ravel()
        room = SAMPLE_LIMIT - self._kept
        if room <= 0:
            return
        if flat.size > room:
            flat = np.random.default_rng(self.seed + self._kept).choice(flat, room, replace=False)
        self.samples.append(flat)
        self._kept += flat.size

    def range(self) -> tuple[float, float]:
        if not self.samples:
            return super().range()
        values = np.concatenate(self.samples)
        low = float(np.percentile(values, 100.0 - self.percentile))
        high = float(np.percentile(values, self.percentile))
        return min(low, 0.0), max(high, 0.0)


@dataclass
class MseObserver(PercentileObserver):
    """The range (a shrink of min-max) with the least mean squared int8 quantization error."""

    levels: int = 256
    steps: int = 100

    def range(self) -> tuple[float, float]:
        low, high = Observer.range(self)
        if not self.samples or high == low:
            return low, high
        values = np.concatenate(self.samples).astype(np.float64)
        fractions = np.geomspace(1.0, 0.01, self.steps)
        # coordinate descent: the best upper bound for this lower bound, then the best lower bound, twice
        for _ in range(2):
            high = min((high * f for f in fractions if high * f > 0), default=high,
                       key=lambda candidate: quantization_mse(values, low, candidate, self.levels))
            low = min((low * f for f in fractions if low * f < 0), default=low,
                      key=lambda candidate: quantization_mse(values, candidate, high, self.levels))
        return low, high


def quantization_mse(values: np.ndarray, low: float, high: float, levels: int = 256) -> float:
    """Mean squared error of fake-quantizing ``values`` to ``levels`` steps over [low, high]."""
    scale = (high - low) / (levels - 1) or 1.0
    zero = np.round(-low / scale)
    quantized = (np.clip(np.round(values / scale) + zero, 0, levels - 1) - zero) * scale
    return float(np.mean((values - quantized) ** 2))


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MseObserver}


def make_observer(name: str) -> Observer:
    if name not in OBSERVERS:
        raise PipelineError(f"unknown observer '{name}'; use one of {', '.join(OBSERVERS)}")
    return OBSERVERS[name]()
