"""Lowerings of the reduction family (``reduce.*``).

Integer ``mean``, ``l2`` and ``log_sum_exp`` are computed in float64 and cast back, which is
what the NumPy references do (NumPy's mean of ints is a float, truncated by ``astype``).
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import relax
from tvm.relax import op as R

from ...ir.graph import Node
from ...ir.ops.reduce import reduced_axes
from ...ir.types import FLOAT_DTYPES
from .context import LowerContext
from .table import lowers

Reduction = Callable[[LowerContext, relax.Expr, list[int], bool], relax.Expr]


def _log_sum_exp(ctx: LowerContext, x: relax.Expr, axes: list[int], keepdims: bool) -> relax.Expr:
    # shift by the max so exp cannot overflow: log(sum(exp(x - m))) + m
    peak = R.max(x, axes, keepdims=True)
    total = R.sum(R.exp(R.subtract(x, peak)), axes, keepdims=True)
    out = R.add(R.log(total), peak)
    return out if keepdims else R.squeeze(out, axes)


REDUCTIONS: dict[str, Reduction] = {
    "reduce.sum": lambda ctx, x, axes, keep: R.sum(x, axes, keepdims=keep),
    "reduce.mean": lambda ctx, x, axes, keep: R.mean(x, axes, keepdims=keep),
    "reduce.max": lambda ctx, x, axes, keep: R.max(x, axes, keepdims=keep),
    "reduce.min": lambda ctx, x, axes, keep: R.min(x, axes, keepdims=keep),
    "reduce.prod": lambda ctx, x, axes, keep: R.prod(x, axes, keepdims=keep),
    "reduce.sum_square": lambda ctx, x, axes, keep: R.sum(R.multiply(x, x), axes, keepdims=keep),
    "reduce.l1": lambda ctx, x, axes, keep: R.sum(_abs(ctx, x), axes, keepdims=keep),
    "reduce.l2": lambda ctx, x, axes, keep: R.sqrt(R.sum(R.multiply(x, x), axes, keepdims=keep)),
    "reduce.log_sum_exp": _log_sum_exp,
}
# reductions whose NumPy reference goes through floating point for integer inputs
FLOAT_ROUTED = frozenset({"reduce.mean", "reduce.l2", "reduce.log_sum_exp"})
# elementwise part of a reduction over no axes (a rank-0 input)
NO_AXES: dict[str, Callable[[LowerContext, relax.Expr], relax.Expr]] = {
    "reduce.sum_square": lambda ctx, x: R.multiply(x, x),
    "reduce.l1": lambda ctx, x: _abs(ctx, x),
    "reduce.l2": lambda ctx, x: R.abs(x),
}


def _abs(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    return x if ctx.dtype_of(x).startswith("uint") else R.abs(x)


@lowers(*REDUCTIONS)
def lower_reduction(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    rank = ctx.rank_of(x)
    axes = list(reduced_axes(rank, node.attrs["axes"])) if rank else []
    if not axes:
        return NO_AXES.get(node.op, lambda ctx, x: x)(ctx, x)
    dtype = ctx.dtype_of(x)
    reduce = REDUCTIONS[node.op]
    if node.op in FLOAT_ROUTED and dtype not in FLOAT_DTYPES:
        return R.astype(reduce(ctx, R.astype(x, "float64"), axes, node.attrs["keepdims"]), dtype)
    return reduce(ctx, x, axes, node.attrs["keepdims"])


@lowers("reduce.argmax", "reduce.argmin")
def lower_arg_reduction(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    arg_reduce = R.argmax if node.op == "reduce.argmax" else R.argmin
    out = ctx.emit(arg_reduce(args[0], node.attrs["axis"], node.attrs["keepdims"]))
    return out if ctx.dtype_of(out) == "int64" else R.astype(out, "int64")
