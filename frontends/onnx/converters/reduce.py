"""Reduction ONNX ops: Reduce* over axes (attribute or input by opset) and ArgMax/ArgMin."""

from __future__ import annotations

import numpy as np

from ....ir.graph import Value
from ..importer import ImportContext, OnnxNode, converter
from .common import axes_argument, normalize_axes, shape_of

# ONNX op -> (optc op, first opset where axes moved from an attribute to an input)
REDUCE: dict[str, tuple[str, int]] = {
    "ReduceSum": ("reduce.sum", 13),
    "ReduceMean": ("reduce.mean", 18),
    "ReduceMax": ("reduce.max", 18),
    "ReduceMin": ("reduce.min", 18),
    "ReduceProd": ("reduce.prod", 18),
    "ReduceSumSquare": ("reduce.sum_square", 18),
    "ReduceL1": ("reduce.l1", 18),
    "ReduceL2": ("reduce.l2", 18),
    "ReduceLogSumExp": ("reduce.log_sum_exp", 18),
    "ReduceLogSum": ("reduce.sum", 18),  # then log
}


def _empty_reduction(optc_op: str, then_log: bool, shape: tuple[int, ...], axes, keepdims: bool, dtype: str) -> np.ndarray:
    """The result of reducing over an empty axis: the reduction's identity (ONNX semantics)."""
    out_shape = [1 if axis in axes else dim for axis, dim in enumerate(shape)] if keepdims else [
        dim for axis, dim in enumerate(shape) if axis not in axes
    ]
    kind = np.dtype(dtype)
    if optc_op == "reduce.max":
        fill = -np.inf if kind.kind == "f" else (False if kind.kind == "b" else np.iinfo(kind).min)
    elif optc_op == "reduce.min":
        fill = np.inf if kind.kind == "f" else (True if kind.kind == "b" else np.iinfo(kind).max)
    elif optc_op in ("reduce.prod",):
        fill = 1
    elif optc_op in ("reduce.log_sum_exp",) or then_log:
        fill = -np.inf
    elif optc_op == "reduce.mean":
        fill = np.nan
    else:
        fill = 0
    return np.full(out_shape, fill, dtype=kind)


def _reduce(optc_op: str, since: int, then_log: bool = False):
    def convert(ctx: ImportContext, node: OnnxNode) -> Value:
        x = ctx.input(node, 0)
        axes = axes_argument(ctx, node, 1, since)
        if not axes:
            if int(node.attr("noop_with_empty_axes", 0)):
                return x
            axes = None
        else:
            axes = normalize_axes(ctx, axes, x.type.rank)
        keepdims = bool(int(node.attr("keepdims", 1)))
        shape = shape_of(ctx, x)
        reduced = range(len(shape)) if axes is None else axes
        if any(shape[axis] == 0 for axis in reduced):
            return ctx.const(_empty_reduction(optc_op, then_log, shape, reduced, keepdims, x.dtype), output=0)
        if then_log:
            return ctx.emit("math.log", ctx.op(optc_op, x, axes=axes, keepdims=keepdims))
        return ctx.emit(optc_op, x, axes=axes, keepdims=keepdims)

    convert.__name__ = f"convert_{optc_op.split('.')[-1]}"
    return convert


for _onnx_op, (_optc_op, _since) in REDUCE.items():
    converter(_onnx_op)(_reduce(_optc_op, _since, then_log=_onnx_op == "ReduceLogSum"))


def _arg(ctx: ImportContext, node: OnnxNode, optc_op: str) -> Value:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    axis = normalize_axes(ctx, [int(node.attr("axis", 0))], len(shape))[0]
    keepdims = bool(int(node.attr("keepdims", 1)))
    if not int(node.attr("select_last_index", 0)):
        return ctx.emit(optc_op, x, axis=axis, keepdims=keepdims)
    # the last extremum is the first one of the reversed axis, counted from the end
    dim = shape[axis]
    flipped = ctx.op("tensor.slice", x, starts=[dim - 1], ends=[-dim - 1], axes=[axis], steps=[-1])
    index = ctx.op(optc_op, flipped, axis=axis, keepdims=keepdims)
    return ctx.emit("math.sub", ctx.scalar_like(index, dim - 1), index)


@converter("ArgMax")
def convert_arg_max(ctx: ImportContext, node: OnnxNode) -> Value:
    return _arg(ctx, node, "reduce.argmax")


@converter("ArgMin")
def convert_arg_min(ctx: ImportContext, node: OnnxNode) -> Value:
    return _arg(ctx, node, "reduce.argmin")
