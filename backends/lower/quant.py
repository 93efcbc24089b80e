"""Lowerings of the quantized family (``quant.*``): integer compute, not float fake-quant.

* ``quant.conv`` / ``quant.linear`` / ``quant.matmul`` are Relax ``conv2d`` / ``matmul`` on the
  int8 (or uint8) operands with ``out_dtype="int32"``: the kernels multiply int8 by int8 and
  accumulate in int32. An activation zero point never widens the operands: the input is padded
  with the zero point itself and ``zp * sum(weight)`` is subtracted afterwards, which is exactly
  the product of ``x - zp`` with zero padding.
* ``quant.quantize``, ``quant.requantize`` and ``quant.dynamic_quantize`` are TE computations, so
  rounding is ``nearbyint`` (half to even, as the reference) and the fixed-point requantize runs
  in int64, bit for bit what ``ir/ops/quant.py`` computes.
* ``quant.weight_matmul`` is one TE kernel that unpacks the int4 nibbles (or reads int8) and
  scales them inside the reduction, so the float weight never exists in memory.
"""

from __future__ import annotations

from tvm import relax, te, tirx
from tvm.relax import op as R

from ...ir.graph import Node
from ...ir.ops.quant import QUANT_RANGES
from ...ir.ops.registry import normalize_axis
from .context import LowerContext, per_axis
from .nn import apply_activation
from .table import lowers


def _per_axis_index(vector: te.Tensor, index: tuple, axis: int | None) -> tirx.PrimExpr:
    """``vector``'s entry for this output index (its only entry when it is a scalar)."""
    if len(vector.shape) == 0:
        return vector[()]
    if axis is None or int(vector.shape[0]) == 1:
        return vector[(0,) * len(vector.shape)]
    return vector[index[axis]]


def _axis(ctx: LowerContext, node: Node, x: relax.Expr) -> int | None:
    axis = node.attrs["axis"]
    return None if axis is None else normalize_axis(axis, ctx.rank_of(x))


# ---- quantize / dequantize / requantize ------------------------------------------------------------------

@lowers("quant.quantize")
def lower_quantize(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis = _axis(ctx, node, args[0])
    low, high = QUANT_RANGES[node.attrs["dtype"]]
    dtype = node.attrs["dtype"]

    def compute(x: te.Tensor, scale: te.Tensor, zero_point: te.Tensor | None = None) -> te.Tensor:
        def element(*index):
            value = tirx.nearbyint(x[index] / _per_axis_index(scale, index, axis))
            if zero_point is not None:
                value = value + _per_axis_index(zero_point, index, axis).astype("float32")
            value = tirx.max(tirx.min(value, tirx.const(float(high), "float32")), tirx.const(float(low), "float32"))
            return value.astype(dtype)

        return te.compute(x.shape, element, name="quantize")

    return ctx.emit_te(compute, *args, name="quantize")


@lowers("quant.dequantize")
def lower_dequantize(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis = _axis(ctx, node, args[0])

    def compute(q: te.Tensor, scale: te.Tensor, zero_point: te.Tensor | None = None) -> te.Tensor:
        def element(*index):
            value = q[index].astype("int32")
            if zero_point is not None:
                value = value - _per_axis_index(zero_point, index, axis).astype("int32")
            return value.astype("float32") * _per_axis_index(scale, index, axis)

        return te.compute(q.shape, element, name="dequantize")

    return ctx.emit_te(compute, *args, name="dequantize")


@lowers("quant.requantize")
def lower_requantize(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    axis = _axis(ctx, node, args[0])
    attrs = node.attrs

    def compute(acc: te.Tensor, multiplier: te.Tensor, shift: te.Tensor) -> te.Tensor:
        def element(*index):
            wide_shift = _per_axis_index(shift, index, axis).astype("int64")
            product = acc[index].astype("int64") * _per_axis_index(multiplier, index, axis).astype("int64")
            rounding = tirx.const(1, "int64") << (wide_shift - tirx.const(1, "int64"))
            value = ((product + rounding) >> wide_shift) + tirx.const(attrs["zero_point"], "int64")
            value = tirx.max(tirx.min(value, tirx.const(attrs["max"], "int64")), tirx.const(attrs["min"], "int64"))
            return value.astype(attrs["dtype"])

        return te.compute(acc.shape, element, name="requantize")

    return ctx.emit_te(compute, *args, name="requantize")


@lowers("quant.dynamic_quantize")
def lower_dynamic_quantize(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> list[relax.Expr]:
    def scale_of(x: te.Tensor) -> te.Tensor:
        peak = _peak_in_lanes(x)
        if peak is None:
            axes = [te.reduce_axis((0, dim), name=f"r{position}") for position, dim in enumerate(x.shape)]
            peak = te.compute((), lambda: te.max(tirx.abs(x[tuple(axes)]), axis=axes), name="peak")
        zero = tirx.const(0.0, "float32")
        return te.compute((), lambda: tirx.if_then_else(peak[()] > zero, peak[()] / tirx.const(127.0, "float32"),
                                                        tirx.const(1.0, "float32")), name="scale")

    def quantize(x: te.Tensor, scale: te.Tensor) -> te.Tensor:
        def element(*index):
            value = tirx.nearbyint(x[index] / scale[()])
            value = tirx.max(tirx.min(value, tirx.const(127.0, "float32")), tirx.const(-127.0, "float32"))
            return value.astype("int8")

        return te.compute(x.shape, element, name="dynamic_quantize")

    scale = ctx.emit_te(scale_of, args[0], name="dynamic_scale")
    return [ctx.emit_te(quantize, args[0], scale, name="dynamic_quantize"), scale]


PEAK_LANES = 16


def _peak_in_lanes(x: te.Tensor) -> te.Tensor | None:
    """max |x| as 16 partial maxima over the flat tensor (``peak_lanes[j] = max_i |x[16 i + j]|``,
    one vector per step once scheduled: ``schedules/quant.py:DynamicScale``), then the max of
    those 16; None unless the size is static and a multiple of 16. A max is exact in any order,
    so the scale is the reference's bit for bit."""
    dims = [int(dim) if isinstance(dim, (int, tirx.IntImm)) else None for dim in x.shape]
    if any(dim is None for dim in dims):
        return None
    size = 1
    for dim in dims:
        size *= dim
    if size % PEAK_LANES or size < 4 * PEAK_LANES:
        return None

    def unflatten(position):
        index = []
        for dim in reversed(dims):
            index.append(position % dim)
            position = position // dim
        return tuple(reversed(index))

    step = te.reduce_axis((0, size // PEAK_LANES), name="step")
    lanes = te.compute((PEAK_LANES,), lambda lane: te.max(tirx.abs(x[unflatten(step * PEAK_LANES + lane)]), axis=step),
                       name="peak_lanes")
    lane = te.reduce_axis((0, PEAK_LANES), name="lane")
    return te.compute((), lambda: te.max(lanes[lane], axis=lane), name="peak")


# ---- integer products ------------------------------------------------------------------------------------

def _effective_bias(ctx: LowerContext, weight: relax.Expr, bias: relax.Expr | None, zero_point: int,
                    conv: bool) -> relax.Expr | None:
    """``bias - zero_point * sum(weight)`` per output channel, as one small kernel of its own.

    One TE reduction (not a chain of Relax ops) so that FuseOps leaves the product's kernel with
    no producer: the integer matmul schedule then matches it, with this vector added in the tile.
    For a conv it is already shaped (1, M, 1, 1).
    """
    if zero_point == 0:
        if bias is None:
            return None
        return ctx.emit(R.reshape(bias, [1, -1, 1, 1])) if conv else bias

    def compute(w: te.Tensor, b: te.Tensor | None = None) -> te.Tensor:
        if conv:
            channels, height, width = w.shape[1], w.shape[2], w.shape[3]
            c, y, x = (te.reduce_axis((0, extent), name=name) for extent, name in ((channels, "c"), (height, "y"), (width, "x")))

            total = te.compute((w.shape[0],), lambda m: te.sum(w[m, c, y, x].astype("int32"), axis=[c, y, x]),
                               name="weight_sum")
            return te.compute((1, w.shape[0], 1, 1), lambda zero, m, one, other: (
                b[m] if b is not None else tirx.const(0, "int32")) - total[m] * tirx.const(zero_point, "int32"),
                name="effective_bias")
        k = te.reduce_axis((0, w.shape[0]), name="k")
        total = te.compute((w.shape[1],), lambda n: te.sum(w[k, n].astype("int32"), axis=k), name="weight_sum")
        return te.compute((w.shape[1],), lambda n: (b[n] if b is not None else tirx.const(0, "int32"))
                          - total[n] * tirx.const(zero_point, "int32"), name="effective_bias")

    arguments = [weight] + ([bias] if bias is not None else [])
    return ctx.emit_te(compute, *arguments, name="effective_bias")


@lowers("quant.conv")
def lower_quant_conv(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, weight = args[0], args[1]
    rank = ctx.rank_of(weight) - 2
    if rank != 2:
        raise ctx.error(f"quant.conv lowers 2-d convolutions only, this one has {rank} spatial dims")
    zero_point = node.attrs["x_zero_point"]
    pads = per_axis(node.attrs["pads"], 2 * rank, 0)
    padding = (0, 0, 0, 0)
    if any(pads) and zero_point:
        # pad with the zero point: (x - zp) is then zero in the padding, as the reference pads
        pad_width = [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]]
        x = ctx.emit(R.nn.pad(x, pad_width, pad_value=float(zero_point)))
    elif any(pads):
        # zero padding: the conv's own, in the conv's kernel (a separate pad was a kernel and a
        # copy of the input of its own, 26 us of a 137 us 144-channel 56x56 depthwise conv)
        padding = (pads[0], pads[1], pads[2], pads[3])
    out = R.nn.conv2d(x, weight, strides=per_axis(node.attrs["strides"], rank, 1), padding=padding,
                      dilation=per_axis(node.attrs["dilations"], rank, 1), groups=node.attrs["groups"], out_dtype="int32")
    bias = _effective_bias(ctx, weight, args[2] if len(args) == 3 else None, zero_point, conv=True)
    return out if bias is None else R.add(ctx.emit(out), bias)


@lowers("quant.linear")
def lower_quant_linear(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, weight = args[0], args[1]
    out = R.matmul(x, weight, out_dtype="int32")
    bias = _effective_bias(ctx, weight, args[2] if len(args) == 3 else None, node.attrs["x_zero_point"], conv=False)
    return out if bias is None else R.add(ctx.emit(out), bias)


@lowers("quant.matmul")
def lower_quant_matmul(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    """(a - za) @ (b - zb) = a@b - za * colsum(b) - zb * rowsum(a) + K * za * zb."""
    a, b = args
    a_zero, b_zero = node.attrs["a_zero_point"], node.attrs["b_zero_point"]
    if ctx.rank_of(a) < 2 or ctx.rank_of(b) < 2:
        raise ctx.error("quant.matmul lowers rank >= 2 operands only")
    out = R.matmul(a, b, out_dtype="int32")
    if a_zero:
        column_sums = ctx.emit(R.sum(ctx.emit(R.astype(b, "int32")), axis=[-2], keepdims=True))
        out = R.subtract(ctx.emit(out), ctx.emit(R.multiply(column_sums, ctx.const(a_zero, "int32"))))
    if b_zero:
        row_sums = ctx.emit(R.sum(ctx.emit(R.astype(a, "int32")), axis=[-1], keepdims=True))
        out = R.subtract(ctx.emit(out), ctx.emit(R.multiply(row_sums, ctx.const(b_zero, "int32"))))
    if a_zero and b_zero:
        depth = ctx.shape_of(a)[-1]
        out = R.add(ctx.emit(out), ctx.const(int(depth) * a_zero * b_zero, "int32"))
    return out


# ---- weight-only -------------------------------------------------------------------------------------------

@lowers("quant.weight_matmul")
def lower_weight_matmul(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    bits, group = node.attrs["bits"], node.attrs["group_size"]

    def compute(x: te.Tensor, weight: te.Tensor, scales: te.Tensor) -> te.Tensor:
        depth = x.shape[-1]
        k = te.reduce_axis((0, depth), name="k")

        def weight_value(row, column):
            if bits == 8:
                return weight[row, column].astype("float32")
            byte = weight[row // 2, column].astype("int32")
            nibble = (byte >> ((row % 2) * 4)) & 15
            return ((nibble ^ 8) - 8).astype("float32")

        def element(*index):
            *leading, column = index
            return te.sum(x[(*leading, k)] * (weight_value(k, column) * scales[k // group, column]), axis=k)

        return te.compute((*x.shape[:-1], weight.shape[1]), element, name="weight_matmul")

    out = ctx.emit_te(compute, args[0], args[1], args[2], name=f"weight_matmul_int{bits}")
    if len(args) == 4:
        out = R.add(out, args[3])
    return apply_activation(ctx, node, out)
