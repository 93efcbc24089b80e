"""Helpers shared by the converter families: static shapes, constant ints, dtype matching."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ....ir.graph import Value
from ..importer import ImportContext, OnnxNode


def shape_of(ctx: ImportContext, value: Value) -> tuple[int, ...]:
    """The static shape of ``value``; input dims are bound at import, so this holds everywhere."""
    if not value.type.is_static:
        ctx.refuse(f"value '{value.name}' has symbolic shape {value.shape}")
    return value.type.static_shape()


def int_list(array: np.ndarray | None) -> list[int] | None:
    return None if array is None else [int(item) for item in np.asarray(array).reshape(-1)]


def normalize_axes(ctx: ImportContext, axes: Sequence[int], rank: int) -> list[int]:
    normalized = []
    for axis in axes:
        if not -rank <= axis < max(rank, 1):
            ctx.refuse(f"axis {axis} is out of range for rank {rank}")
        normalized.append(axis % rank if rank else 0)
    if len(set(normalized)) != len(normalized):
        ctx.refuse(f"axes {list(axes)} repeat an axis")
    return normalized


def axes_argument(ctx: ImportContext, node: OnnxNode, input_index: int, since: int) -> list[int] | None:
    """Axes given as an attribute before opset ``since`` and as an optional input from then on."""
    if ctx.opset >= since:
        return int_list(ctx.constant_input(node, input_index, "axes"))
    axes = node.attr("axes")
    return None if axes is None else [int(axis) for axis in axes]


def cast_to(ctx: ImportContext, value: Value, dtype: str) -> Value:
    return value if value.dtype == dtype else ctx.op("math.cast", value, dtype=dtype)


def reshape(ctx: ImportContext, value: Value, shape: Sequence[int], final: bool = False) -> Value:
    """Reshape unless the shape is already ``shape``; ``final`` names it after the node's output."""
    if tuple(value.shape) == tuple(shape):
        return value
    if final:
        return ctx.emit("tensor.reshape", value, shape=tuple(shape))
    return ctx.op("tensor.reshape", value, shape=tuple(shape))


def product(dims: Sequence[int]) -> int:
    return int(np.prod(list(dims), dtype=np.int64))
