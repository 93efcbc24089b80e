"""Matrix products (``linalg.*``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import TensorType
from .registry import ShapeError, broadcast_shapes, define


def _matmul_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    left, right = inputs
    if left.dtype != right.dtype:
        raise ShapeError(f"dtypes differ: {left.dtype} and {right.dtype}")
    if left.rank == 0 or right.rank == 0:
        raise ShapeError("matmul needs rank >= 1 operands")
    a_shape = (1,) + tuple(left.shape) if left.rank == 1 else tuple(left.shape)
    b_shape = tuple(right.shape) + (1,) if right.rank == 1 else tuple(right.shape)
    k_left, k_right = a_shape[-1], b_shape[-2]
    if isinstance(k_left, int) and isinstance(k_right, int) and k_left != k_right:
        raise ShapeError(f"inner dims differ: {left.shape} @ {right.shape}")
    batch = broadcast_shapes(a_shape[:-2], b_shape[:-2])
    shape = batch + (a_shape[-2], b_shape[-1])
    if left.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if right.rank == 1:
        shape = shape[:-1]
    return TensorType(shape, left.dtype)


def _matmul_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    k = inputs[0].shape[-1]
    return 2 * outputs[0].numel * (k if isinstance(k, int) else 1)


define(
    "linalg.matmul",
    _matmul_infer,
    lambda a, b: np.matmul(a, b),
    inputs=2,
    flops=_matmul_flops,
    doc="NumPy matmul semantics: batch dims broadcast, rank-1 operands are promoted then squeezed.",
)
