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

from tvm import relax, te, tirx, topi
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
    strides, dilations = per_axis(node.attrs["strides"], rank, 1), per_axis(node.attrs["dilations"], rank, 1)
    bias = _effective_bias(ctx, weight, args[2] if len(args) == 3 else None, zero_point, conv=True)
    absorbed = _padded_by_zero_point(node)
    if absorbed is not None:  # static int8's explicit zero-point pad: the conv kernel pads (see below)
        pad, pads, pad_value = absorbed
        out = ctx.emit_te(_zero_point_padded_conv, ctx.expr_of(pad.inputs[0]), weight, pads=pads,
                          pad_value=pad_value, strides=strides, dilations=dilations,
                          depthwise=node.attrs["groups"] != 1, name="conv2d")
        return out if bias is None else R.add(out, bias)
    padding = (0, 0, 0, 0)
    if any(pads) and zero_point:
        # pad with the zero point: (x - zp) is then zero in the padding, as the reference pads
        pad_width = [0, 0, 0, 0, pads[0], pads[2], pads[1], pads[3]]
        x = ctx.emit(R.nn.pad(x, pad_width, pad_value=float(zero_point)))
    elif any(pads):
        # zero padding: the conv's own, in the conv's kernel (a separate pad was a kernel and a
        # copy of the input of its own, 26 us of a 137 us 144-channel 56x56 depthwise conv)
        padding = (pads[0], pads[1], pads[2], pads[3])
    out = R.nn.conv2d(x, weight, strides=strides, padding=padding, dilation=dilations, groups=node.attrs["groups"],
                      out_dtype="int32")
    return out if bias is None else R.add(ctx.emit(out), bias)


def _padded_by_zero_point(node: Node) -> tuple[Node, tuple[int, ...], int] | None:
    """(the pad, its (top, left, bottom, right), its value) when ``node``'s input is a constant
    ``tensor.pad`` of the spatial axes that only this conv reads, and the conv has no zero point
    and no padding of its own (static int8's explicit zero-point padding); groups 1 or depthwise."""
    pad = node.inputs[0].producer
    if pad is None or pad.op != "tensor.pad" or pad.attrs.get("mode", "constant") != "constant":
        return None
    if len(node.inputs[0].users()) != 1 or node.attrs["x_zero_point"]:
        return None
    if any(per_axis(node.attrs["pads"], 4, 0)):
        return None
    begins, ends = pad.attrs["pads"][:4], pad.attrs["pads"][4:]
    value = pad.attrs.get("value", 0.0)
    if any(begins[:2]) or any(ends[:2]) or min(begins + ends) < 0 or float(value) != int(value):
        return None
    channels, filters = node.inputs[0].shape[1], node.inputs[1].shape[0]
    if node.attrs["groups"] != 1 and not node.attrs["groups"] == channels == filters:
        return None
    return pad, (begins[2], begins[3], ends[2], ends[3]), int(value)


def _zero_point_padded_conv(x: te.Tensor, weight: te.Tensor, pads: tuple, pad_value: int, strides: tuple,
                            dilations: tuple, depthwise: bool) -> te.Tensor:
    """An int8 conv (groups 1, or depthwise) of ``x`` padded with ``pad_value``, as one TE function.

    Relax's ``nn.pad`` before ``nn.conv2d`` was a kernel of its own (FuseOps does not fuse a
    producer into a conv): a launch, an allocation and a pass over the padded input per conv, 17
    of them in MobileNetV2. Here the padding is the conv kernel's own ``pad_temp`` block, as
    with zero padding, and the epilogue still fuses after it (the func is a conv to FuseOps).
    """
    padded = topi.nn.pad(x, [0, 0, pads[0], pads[1]], [0, 0, pads[2], pads[3]],
                         pad_value=tirx.const(pad_value, x.dtype), name="pad_temp")
    filters, channels, kernel_h, kernel_w = weight.shape
    (stride_h, stride_w), (dilation_h, dilation_w) = strides, dilations
    out_h = (padded.shape[2] - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (padded.shape[3] - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    ry = te.reduce_axis((0, kernel_h), name="ry")
    rx = te.reduce_axis((0, kernel_w), name="rx")

    def tap(n, c, y, x_, f, k):
        return (padded[n, c, y * stride_h + ry * dilation_h, x_ * stride_w + rx * dilation_w].astype("int32")
                * weight[f, k, ry, rx].astype("int32"))

    shape = (x.shape[0], filters, out_h, out_w)
    if depthwise:
        return te.compute(shape, lambda n, f, y, x_: te.sum(tap(n, f, y, x_, f, 0), axis=[ry, rx]),
                          name="group_conv2d_nchw")
    rc = te.reduce_axis((0, channels), name="rc")
    return te.compute(shape, lambda n, f, y, x_: te.sum(tap(n, rc, y, x_, f, rc), axis=[rc, ry, rx]), name="conv2d_nchw")


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
