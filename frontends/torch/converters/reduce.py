"""Reduction ATen ops: sum, mean, prod, max/min (with indices), argmax/argmin, any, variance and cumsum."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ....ir.graph import Value
from ..aten import Context, Unsupported, _axes, _axis, _binary, _numel, _static, converts

aten = torch.ops.aten


# ---- reductions ------------------------------------------------------------------------------------------


def _reduce(ctx: Context, op: str, self: Value, dim: Any, keepdim: bool) -> Value:
    x = ctx.cast(self, ctx.out_dtype()) if ctx.node is not None else self
    return ctx.op(op, x, axes=_axes(dim, self.type.rank), keepdims=bool(keepdim))


@converts(aten.sum.dim_IntList)
def sum_(ctx: Context, self: Value, dim: Any = None, keepdim: bool = False) -> Value:
    return _reduce(ctx, "reduce.sum", self, dim, keepdim)


@converts(aten.mean.dim, aten.mean.default)
def mean(ctx: Context, self: Value, dim: Any = None, keepdim: bool = False) -> Value:
    return _reduce(ctx, "reduce.mean", self, dim, keepdim)


@converts(aten.prod.dim_int, aten.prod.default)
def prod(ctx: Context, self: Value, dim: Any = None, keepdim: bool = False) -> Value:
    return _reduce(ctx, "reduce.prod", self, dim, keepdim)


@converts(aten.amax.default, aten.max.default)
def amax(ctx: Context, self: Value, dim: Any = None, keepdim: bool = False) -> Value:
    return _reduce(ctx, "reduce.max", self, dim, keepdim)


@converts(aten.amin.default, aten.min.default)
def amin(ctx: Context, self: Value, dim: Any = None, keepdim: bool = False) -> Value:
    return _reduce(ctx, "reduce.min", self, dim, keepdim)


@converts(aten.max.dim, aten.min.dim)
def max_dim(ctx: Context, self: Value, dim: int, keepdim: bool = False) -> list[Value]:
    largest = ctx.node is None or ctx.node.target is aten.max.dim
    axis = _axis(dim, self.type.rank)
    values = ctx.op("reduce.max" if largest else "reduce.min", self, axes=(axis,), keepdims=bool(keepdim))
    indices = ctx.op("reduce.argmax" if largest else "reduce.argmin", self, axis=axis, keepdims=bool(keepdim))
    return [values, indices]


@converts(aten.argmax.default, aten.argmin.default)
def argmax(ctx: Context, self: Value, dim: int | None = None, keepdim: bool = False) -> Value:
    op = "reduce.argmax" if ctx.node is None or ctx.node.target is aten.argmax.default else "reduce.argmin"
    if dim is None:
        flat = ctx.reshape(self, (_numel(_static(self, "argmax over all axes")),))
        return ctx.reshape(ctx.op(op, flat, axis=0, keepdims=False), ctx.out_shape())
    return ctx.op(op, self, axis=_axis(dim, self.type.rank), keepdims=bool(keepdim))


@converts(aten.any.default, aten.any.dim, aten.any.dims)
def any_(ctx: Context, self: Value, dim: Any = None, keepdim: bool = False) -> Value:
    flags = ctx.cast(ctx.cast(self, "bool"), "int32")  # a max over 0/1 ints, not over bools
    reduced = ctx.op("reduce.max", flags, axes=_axes(dim, self.type.rank), keepdims=bool(keepdim))
    return ctx.cast(reduced, "bool")


def _variance(ctx: Context, x: Value, dim: Any, correction: float | None, keepdim: bool) -> Value:
    axes = _axes(dim, x.type.rank)
    shape = _static(x, "variance")
    count = _numel([shape[a] for a in (axes if axes is not None else range(len(shape)))])
    centered = ctx.op("math.sub", x, ctx.op("reduce.mean", x, axes=axes, keepdims=True))
    total = ctx.op("reduce.sum_square", centered, axes=axes, keepdims=bool(keepdim))
    divisor = max(count - (1.0 if correction is None else float(correction)), 0.0)
    return _binary(ctx, "math.div", total, divisor, x.dtype)


@converts(aten.var.correction)
def var(ctx: Context, self: Value, dim: Any = None, correction: float | None = None, keepdim: bool = False) -> Value:
    return _variance(ctx, self, dim, correction, keepdim)


@converts(aten.var_mean.correction)
def var_mean(ctx: Context, self: Value, dim: Any = None, correction: float | None = None, keepdim: bool = False) -> list[Value]:
    variance = _variance(ctx, self, dim, correction, keepdim)
    return [variance, ctx.op("reduce.mean", self, axes=_axes(dim, self.type.rank), keepdims=bool(keepdim))]


@converts(aten.cumsum.default)
def cumsum(ctx: Context, self: Value, dim: int) -> Value:
    """Running sum as a matmul with an upper-triangular matrix of ones along the axis."""
    x = ctx.cast(self, ctx.out_dtype())
    rank = x.type.rank
    if rank == 0:
        return x
    axis = _axis(dim, rank)
    size = x.shape[axis]
    if not isinstance(size, int):
        raise Unsupported("cumsum along a symbolic dim")
    perm = tuple(a for a in range(rank) if a != axis) + (axis,)
    moved = x if axis == rank - 1 else ctx.op("tensor.transpose", x, perm=perm)
    summed = ctx.op("linalg.matmul", moved, ctx.const(np.triu(np.ones((size, size))), x.dtype))
    if axis == rank - 1:
        return summed
    return ctx.op("tensor.transpose", summed, perm=tuple(int(p) for p in np.argsort(perm)))
