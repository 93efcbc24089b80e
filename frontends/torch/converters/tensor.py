"""Tensor ATen ops: constant creation, views and reshapes, permute, cat, split, slice, select, indexing,
gather, pad, repeat and flip."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ....ir.graph import Value
from ..aten import Context, Scalar, Unsupported, _axis, _numel, _static, converts

aten = torch.ops.aten


# ---- creation -------------------------------------------------------------------------------------------


def _filled(ctx: Context, fill: Scalar) -> Value:
    shape = ctx.out_shape()
    dtype = ctx.out_dtype()
    if not all(isinstance(dim, int) for dim in shape):
        raise Unsupported(f"a constant of symbolic shape {shape}")
    scalar = ctx.const(fill, dtype)
    if not shape:
        return scalar
    return ctx.op("tensor.expand", scalar, shape=shape)


@converts(aten.full_like.default)
def full_like(ctx: Context, fill_value: Scalar) -> Value:
    return _filled(ctx, fill_value)


@converts(aten.empty.memory_format, aten.empty_strided.default)
def empty(ctx: Context) -> Value:
    # empty tensors hold garbage in torch; zeros are one valid choice and keep runs reproducible
    return _filled(ctx, 0)


@converts(aten.full.default)
def full(ctx: Context, fill_value: Scalar) -> Value:
    return _filled(ctx, fill_value)


@converts(aten.scalar_tensor.default)
def scalar_tensor(ctx: Context, s: Scalar) -> Value:
    return ctx.const(s, ctx.out_dtype())


# ---- shape and data movement ---------------------------------------------------------------------------


@converts(aten.view.default, aten.unsqueeze.default, aten.squeeze.dims)
def reshape(ctx: Context, self: Value) -> Value:
    """Every view is a reshape to the shape torch inferred for it."""
    return ctx.reshape(self, ctx.out_shape())


@converts(aten.permute.default)
def permute(ctx: Context, self: Value, dims: Sequence[int]) -> Value:
    perm = tuple(_axis(d, self.type.rank) for d in dims)
    if perm == tuple(range(self.type.rank)):
        return self
    return ctx.op("tensor.transpose", self, perm=perm)


@converts(aten.expand.default)
def expand(ctx: Context, self: Value) -> Value:
    shape = ctx.out_shape()
    if tuple(shape) == tuple(self.shape):
        return self
    return ctx.op("tensor.expand", self, shape=shape)


@converts(aten.cat.default)
def cat(ctx: Context, tensors: Sequence[Value], dim: int = 0) -> Value:
    dtype = ctx.out_dtype()
    rank = ctx.meta().dim()
    # torch lets empty 1-d tensors join anything; they add nothing
    parts = [ctx.cast(t, dtype) for t in tensors if not (t.type.is_static and t.type.numel == 0)]
    if not parts:
        return _filled(ctx, 0)
    if len(parts) == 1:
        return parts[0]
    return ctx.op("tensor.concat", *parts, axis=_axis(dim, rank))


def _split_sizes(ctx: Context, self: Value, dim: int) -> tuple[int, tuple[int, ...]]:
    axis = _axis(dim, self.type.rank)
    sizes = tuple(ctx.out_shape(index)[axis] for index in range(len(ctx.meta())))
    if not all(isinstance(size, int) for size in sizes):
        raise Unsupported("split along a symbolic dim")
    return axis, sizes  # type: ignore[return-value]


@converts(aten.split_with_sizes.default)
def split(ctx: Context, self: Value, dim: int = 0) -> list[Value]:
    axis, sizes = _split_sizes(ctx, self, dim)
    if len(sizes) == 1:
        return [self]
    return ctx.ops("tensor.split", [self], {"axis": axis, "sizes": sizes},
                   output_names=[f"{ctx.name}_{index}" for index in range(len(sizes))])


INT64_MAX = 2**63 - 1


@converts(aten.slice.Tensor)
def slice_(ctx: Context, self: Value, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1) -> Value:
    axis = _axis(dim, self.type.rank)
    size = self.shape[axis]
    start = 0 if start is None else start
    end = INT64_MAX if end is None else end
    if not all(isinstance(x, int) for x in (start, end, step)):
        raise Unsupported("slice bounds computed at run time")
    if isinstance(size, int):
        start, end, step = slice(start, end, step).indices(size)
        if (start, end, step) == (0, size, 1):
            return self
    elif (start, end, step) == (0, INT64_MAX, 1):
        return self
    return ctx.op("tensor.slice", self, starts=(start,), ends=(end,), axes=(axis,), steps=(step,))


@converts(aten.select.int)
def select(ctx: Context, self: Value, dim: int, index: int) -> Value:
    axis = _axis(dim, self.type.rank)
    size = self.shape[axis]
    if not isinstance(index, int):
        raise Unsupported("select at an index computed at run time")
    if index < 0:
        if not isinstance(size, int):
            raise Unsupported("negative select on a symbolic dim")
        index += size
    picked = ctx.op("tensor.slice", self, starts=(index,), ends=(index + 1,), axes=(axis,))
    return ctx.reshape(picked, ctx.out_shape())


@converts(aten.index_select.default)
def index_select(ctx: Context, self: Value, dim: int, index: Value) -> Value:
    return ctx.op("tensor.gather", self, _index_dtype(ctx, index), axis=_axis(dim, self.type.rank))


@converts(aten.embedding.default)
def embedding(ctx: Context, weight: Value, indices: Value) -> Value:
    return ctx.op("tensor.gather", weight, _index_dtype(ctx, indices), axis=0)


def _index_dtype(ctx: Context, index: Value) -> Value:
    return index if index.dtype in ("int32", "int64") else ctx.cast(index, "int64")


def _broadcast_index(ctx: Context, indices: Sequence[Value], dims: Sequence[int]) -> Value:
    """One flat int64 index into the merged axes of ``dims``: sum of index * stride, negatives wrapped."""
    flat: Value | None = None
    stride = 1
    for index, size in reversed(list(zip(indices, dims))):
        index = ctx.cast(index, "int64")
        if ctx.array(index) is None or np.any(ctx.array(index) < 0):
            index = ctx.op("math.mod", index, ctx.const(size, "int64"))
        term = index if stride == 1 else ctx.op("math.mul", index, ctx.const(stride, "int64"))
        flat = term if flat is None else ctx.op("math.add", term, flat)
        stride *= size
    assert flat is not None
    return flat


@converts(aten.index.Tensor)
def index(ctx: Context, self: Value, indices: Sequence[Value | None]) -> Value:
    """Advanced indexing: the indexed axes merge into one, indexed by a flat broadcast index."""
    positions = [axis for axis, item in enumerate(indices) if item is not None]
    tensors = [item for item in indices if item is not None]
    if any(item.dtype == "bool" for item in tensors):
        raise Unsupported("indexing with a boolean mask (data-dependent shape)")
    if len(positions) == 1:
        return ctx.op("tensor.gather", self, _index_dtype(ctx, tensors[0]), axis=positions[0])
    shape = _static(self, "indexing with several index tensors")
    rank = len(shape)
    first = positions[0]
    if positions != list(range(first, first + len(positions))):
        # separated index tensors: torch puts the indexed dims first
        rest = [axis for axis in range(rank) if axis not in positions]
        self = ctx.op("tensor.transpose", self, perm=tuple(positions + rest))
        shape = tuple(shape[axis] for axis in positions + rest)
        positions, first = list(range(len(positions))), 0
    last = first + len(positions)
    merged = ctx.reshape(self, shape[:first] + (_numel(shape[first:last]),) + shape[last:])
    flat = _broadcast_index(ctx, tensors, shape[first:last])
    return ctx.op("tensor.gather", merged, flat, axis=first)


@converts(aten.gather.default)
def gather(ctx: Context, self: Value, dim: int, index: Value) -> Value:
    """torch.gather (ONNX GatherElements) as advanced indexing with aranges on the other axes."""
    shape = _static(self, "gather")
    index_shape = _static(index, "gather")
    axis = _axis(dim, len(shape))
    indices = []
    for position in range(len(shape)):
        if position == axis:
            indices.append(index)
        else:
            ramp = np.arange(index_shape[position], dtype=np.int64).reshape(
                tuple(-1 if p == position else 1 for p in range(len(shape))))
            indices.append(ctx.const(ramp, "int64"))
    flat_input = ctx.reshape(self, (_numel(shape),))
    return ctx.op("tensor.gather", flat_input, _broadcast_index(ctx, indices, shape), axis=0)


@converts(aten.constant_pad_nd.default)
def constant_pad_nd(ctx: Context, self: Value, pad: Sequence[int], value: Scalar = 0) -> Value:
    rank = self.type.rank
    begins, ends = [0] * rank, [0] * rank
    for pair in range(len(pad) // 2):  # torch lists pads from the last axis backwards
        axis = rank - 1 - pair
        begins[axis], ends[axis] = int(pad[2 * pair]), int(pad[2 * pair + 1])
    if not any(begins) and not any(ends):
        return self
    return ctx.op("tensor.pad", self, pads=tuple(begins + ends), mode="constant", value=float(value))


@converts(aten.repeat.default)
def repeat(ctx: Context, self: Value, repeats: Sequence[int]) -> Value:
    repeats = tuple(int(r) for r in repeats)
    if len(repeats) > self.type.rank:
        self = ctx.reshape(self, (1,) * (len(repeats) - self.type.rank) + tuple(self.shape))
    if all(r == 1 for r in repeats):
        return self
    return ctx.op("tensor.tile", self, repeats=repeats)


@converts(aten.flip.default)
def flip(ctx: Context, self: Value, dims: Sequence[int]) -> Value:
    shape = _static(self, "flip")
    axes = tuple(_axis(d, len(shape)) for d in dims)
    if not axes:
        return self
    return ctx.op("tensor.slice", self, starts=tuple(shape[a] - 1 for a in axes),
                  ends=tuple(-shape[a] - 1 for a in axes), axes=axes, steps=(-1,) * len(axes))
