"""Quantization parameters: activation scales and zero points, per-channel weights, int32 biases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ir.ops.quant import QUANT_RANGES

WEIGHT_LEVEL = 127  # symmetric int8 weights in [-127, 127] (no -128: the product never overflows asymmetrically)


@dataclass(frozen=True)
class ActivationParams:
    """Per-tensor asymmetric int8: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    @staticmethod
    def from_range(low: float, high: float, dtype: str = "int8") -> "ActivationParams":
        low, high = min(low, 0.0), max(high, 0.0)
        qmin, qmax = QUANT_RANGES[dtype]
        scale = (high - low) / (qmax - qmin)
        if scale <= 0 or not np.isfinite(scale):
            return ActivationParams(1.0, 0 if dtype == "int8" else 128, dtype)
        scale = float(np.float32(scale))
        zero_point = int(np.clip(np.rint(qmin - low / scale), qmin, qmax))
        return ActivationParams(scale, zero_point, dtype)

    def clip_for(self, activation: str) -> tuple[int, int] | None:
        """The quantized (min, max) that computes ``activation``; None when it is no clip."""
        qmin, qmax = QUANT_RANGES[self.dtype]
        if activation == "none":
            return qmin, qmax
        if activation == "relu":
            return max(qmin, self.zero_point), qmax
        if activation == "relu6":
            return max(qmin, self.zero_point), min(qmax, self.zero_point + int(np.rint(6.0 / self.scale)))
        return None


def quantize_weight_per_channel(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel along ``axis``: (int8 weight, float32 scales)."""
    moved = np.moveaxis(weight.astype(np.float64), axis, 0)
    peaks = np.max(np.abs(moved.reshape(moved.shape[0], -1)), axis=1)
    scales = np.where(peaks > 0, peaks / WEIGHT_LEVEL, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    quantized = np.clip(np.rint(weight / scales.reshape(shape)), -WEIGHT_LEVEL, WEIGHT_LEVEL).astype(np.int8)
    return quantized, scales


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray) -> np.ndarray:
    """int32 bias in the accumulator's scale ``input_scale * weight_scale``."""
    scaled = np.rint(bias.astype(np.float64) / (np.float64(input_scale) * weight_scales.astype(np.float64)))
    return np.clip(scaled, -(2**31), 2**31 - 1).astype(np.int32)
