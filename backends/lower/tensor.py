"""Lowerings of the data-movement family (``tensor.*``).

Slices are normalized here with Python's own ``slice.indices`` so clamping and negative steps
mean exactly what NumPy means; pads crop first (negative pads) and then pad, with "reflect"
written in TE so that pads wider than the dim keep reflecting as NumPy does.
"""

from __future__ import annotations

import itertools

from tvm import relax, te, tirx
from tvm.relax import op as R

from ...ir.graph import Node
from ...ir.ops.registry import normalize_axis
from ...ir.ops.tensor import slice_per_axis
from .context import LowerContext
from .table import lowers


@lowers("tensor.reshape")
def lower_reshape(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    # the IR resolved the -1 already; fall back to the attribute where that used a new symbol
    dims = ctx.known_dims(node.outputs[0].shape)
    if dims is None:
        dims = [ctx.dim(dim) for dim in node.attrs["shape"]]
    return R.reshape(args[0], dims)


@lowers("tensor.transpose")
def lower_transpose(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return R.permute_dims(args[0], list(node.attrs["perm"]))


@lowers("tensor.concat")
def lower_concat(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    if len(args) == 1:
        return args[0]
    axis = normalize_axis(node.attrs["axis"], ctx.rank_of(args[0]))
    return R.concat(args, axis=axis)


@lowers("tensor.split")
def lower_split(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> list[relax.Expr]:
    x = args[0]
    sizes = node.attrs["sizes"]
    if len(sizes) == 1:
        return [x]
    axis = normalize_axis(node.attrs["axis"], ctx.rank_of(x))
    boundaries = list(itertools.accumulate(sizes))[:-1]
    parts = ctx.emit(R.split(x, boundaries, axis=axis), "split")
    return [relax.TupleGetItem(parts, index) for index in range(len(sizes))]


@lowers("tensor.slice")
def lower_slice(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    shape = node.inputs[0].shape
    axes, begins, ends, strides = [], [], [], []
    for axis, item in enumerate(slice_per_axis(len(shape), tuple(shape), node.attrs)):
        if item == slice(None):
            continue
        dim = shape[axis]
        if not isinstance(dim, int):
            raise ctx.error(f"cannot slice symbolic dim '{dim}' of axis {axis}")
        start, stop, step = item.indices(dim)
        length = len(range(start, stop, step))
        if step < 0:
            # Walk the flipped axis forwards: index i of x is index dim - 1 - i of the flip.
            x = R.flip(x, axis)
            start, step = dim - 1 - start, -step
        axes.append(axis)
        begins.append(start)
        ends.append(start + (length - 1) * step + 1 if length else start)
        strides.append(step)
    if not axes:
        return x
    return R.strided_slice(x, axes, begins, ends, strides, assume_inbound=True)


@lowers("tensor.gather")
def lower_gather(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, indices = args
    axis = normalize_axis(node.attrs["axis"], ctx.rank_of(x))
    # "wrap" maps an index in [-dim, 0) to index + dim (NumPy's negative indices), and keeps
    # an out-of-range index inside the tensor instead of reading arbitrary memory
    return R.take(x, indices, axis=axis, mode="wrap")


@lowers("tensor.expand")
def lower_expand(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    dims = ctx.known_dims(node.outputs[0].shape)
    if dims is None:
        dims = _broadcast_dims(ctx, ctx.shape_of(x), [ctx.dim(dim) for dim in node.attrs["shape"]])
    return R.broadcast_to(x, dims)


def _broadcast_dims(ctx: LowerContext, left: list, right: list) -> list:
    rank = max(len(left), len(right))
    left = [1] * (rank - len(left)) + list(left)
    right = [1] * (rank - len(right)) + list(right)
    return [a if isinstance(b, int) and b == 1 else b for a, b in zip(left, right)]


@lowers("tensor.tile")
def lower_tile(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    repeats = node.attrs["repeats"]
    if all(repeat == 1 for repeat in repeats):
        return args[0]
    return R.tile(args[0], list(repeats))


PAD_MODES = {"constant": "constant", "edge": "replicate"}  # reflect is written in TE below


@lowers("tensor.pad")
def lower_pad(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    pads = node.attrs["pads"]
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if any(pad < 0 for pad in pads):
        shape = ctx.shape_of(x)
        crop_axes = [axis for axis in range(rank) if begins[axis] < 0 or ends[axis] < 0]
        for axis in crop_axes:
            if not isinstance(shape[axis], int):
                raise ctx.error(f"cannot crop symbolic dim '{shape[axis]}' of axis {axis} with a negative pad")
        x = R.strided_slice(
            x,
            crop_axes,
            [max(-begins[axis], 0) for axis in crop_axes],
            [shape[axis] - max(-ends[axis], 0) for axis in crop_axes],
            assume_inbound=True,
        )
    widths = [width for axis in range(rank) for width in (max(begins[axis], 0), max(ends[axis], 0))]
    if not any(widths):
        return x
    mode = node.attrs["mode"]
    if mode == "reflect":
        before = [max(pad, 0) for pad in begins]
        after = [max(pad, 0) for pad in ends]
        return ctx.emit_te(_reflect_pad, x, before, after, name="reflect_pad")
    if mode not in PAD_MODES:
        raise ctx.error(f"pad mode '{mode}' is not one of {sorted(PAD_MODES)}")
    return R.nn.pad(x, widths, PAD_MODES[mode], node.attrs["value"])


def _reflect_pad(x: te.Tensor, before: list[int], after: list[int]) -> te.Tensor:
    """NumPy's "reflect" for any width: reflection repeats with period 2 * (dim - 1).

    TOPI's reflect_pad reads out of bounds once a pad reaches the dim; NumPy keeps reflecting.
    """
    shape = [dim + low + high for dim, low, high in zip(x.shape, before, after)]

    def source(*index):
        position = []
        for axis, i in enumerate(index):
            dim = x.shape[axis]
            if before[axis] == 0 and after[axis] == 0:
                position.append(i)
                continue
            period = tirx.max(2 * (dim - 1), 1)
            folded = tirx.floormod(i - before[axis], period)
            position.append(tirx.Select(folded >= dim, period - folded, folded))
        return x[tuple(position)]

    return te.compute(shape, source, name="reflect_pad")
