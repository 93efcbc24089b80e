"""State-buffer ops (``cache.*``) for entry points that carry state between calls.

``cache.update(cache, update, position)`` writes ``update`` into a copy of ``cache`` at a runtime
position along one axis: the functional form of appending keys and values to a fixed-capacity
KV cache. Graphs stay static-shaped; the position is a tensor input, so one compiled decode step
serves every position.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import TensorType
from .registry import Attr, ShapeError, define, normalize_axis


def _update_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    cache, update, position = inputs
    axis = normalize_axis(attrs["axis"], cache.rank)
    if update.rank != cache.rank or cache.dtype != update.dtype:
        raise ShapeError(f"update {update} must have the rank and dtype of the cache {cache}")
    for index, (cache_dim, update_dim) in enumerate(zip(cache.shape, update.shape)):
        if index != axis and cache_dim != update_dim:
            raise ShapeError(f"update {update.shape} differs from cache {cache.shape} off axis {axis}")
    capacity, count = cache.shape[axis], update.shape[axis]
    if isinstance(capacity, int) and isinstance(count, int) and count > capacity:
        raise ShapeError(f"update of {count} entries does not fit a cache of capacity {capacity}")
    if position.dtype not in ("int32", "int64") or position.numel != 1:
        raise ShapeError(f"position must be one int32/int64 element, got {position}")
    return cache


def _update_reference(cache: np.ndarray, update: np.ndarray, position: np.ndarray, *, axis: int) -> np.ndarray:
    axis = axis % cache.ndim
    start = int(np.asarray(position).reshape(()))
    count = update.shape[axis]
    if start < 0 or start + count > cache.shape[axis]:
        raise IndexError(
            f"cache.update writes entries [{start}, {start + count}) into a cache of capacity {cache.shape[axis]}"
        )
    out = cache.copy()
    index = [slice(None)] * cache.ndim
    index[axis] = slice(start, start + count)
    out[tuple(index)] = update
    return out


define(
    "cache.update",
    _update_infer,
    _update_reference,
    inputs=3,
    attrs={"axis": Attr("int")},
    doc="A copy of cache with update written at [position, position + update.shape[axis]) along axis; "
        "position is a one-element int tensor (compiled code ignores writes outside the capacity).",
)
