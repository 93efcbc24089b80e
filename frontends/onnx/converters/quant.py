"""Quantized ONNX ops into optc's ``quant.*`` ops.

* QuantizeLinear / DequantizeLinear -> ``quant.quantize`` / ``quant.dequantize`` (per tensor or
  per axis). A DequantizeLinear of a constant (a QDQ model's int8 weight) is kept as a node, not
  folded into a float weight, so ``fold_qdq`` can turn the float layer it feeds into an integer one.
* QLinearConv / QLinearMatMul -> ``quant.conv`` / ``quant.matmul`` (int32) + ``quant.requantize``
  with the fixed-point multiplier of ``x_scale * w_scale / y_scale``.
* MatMulInteger -> ``quant.matmul``; DynamicQuantizeLinear -> its definition in reductions and
  ``quant.quantize`` with the run-time scale and zero point.

Weight zero points must be zero (symmetric weights, what quantizers emit); activation zero points
must be constants. Anything else is refused with the reason.
"""

from __future__ import annotations

import numpy as np

from ....ir.graph import Value
from ....ir.ops.quant import QUANT_RANGES, fixed_point
from ..importer import ImportContext, OnnxNode, converter
from .nn import _ints, _window_pads
from .common import shape_of


def _scalar(ctx: ImportContext, node: OnnxNode, index: int, what: str, default: int = 0) -> int:
    array = ctx.constant_input(node, index, what)
    if array is None:
        return default
    flat = np.asarray(array).reshape(-1)
    if flat.size != 1 and np.any(flat != flat[0]):
        ctx.refuse(f"{what} varies per channel; optc supports one {what} per tensor here")
    return int(flat[0])


def _constant(ctx: ImportContext, node: OnnxNode, index: int, what: str) -> np.ndarray:
    array = ctx.constant_input(node, index, what)
    if array is None:
        ctx.refuse(f"{what} is missing")
    return np.asarray(array)


def _axis_for(ctx: ImportContext, node: OnnxNode, scale: Value, rank: int) -> int | None:
    if scale.type.rank == 0 or scale.type.numel == 1:
        return None
    axis = int(node.attr("axis", 1))
    return axis % rank if rank else 0


def _flat_scale(ctx: ImportContext, value: Value) -> Value:
    """A 1-element scale or zero point as a scalar (quant ops take scalars or per-axis vectors)."""
    if value.type.rank == 1 and value.type.numel == 1:
        array = ctx.constant(value)
        if array is not None:
            return ctx.const(np.asarray(array).reshape(()))
        return ctx.op("tensor.reshape", value, shape=())
    return value


@converter("QuantizeLinear")
def convert_quantize_linear(ctx: ImportContext, node: OnnxNode) -> Value:
    x, scale = ctx.input(node, 0), _flat_scale(ctx, ctx.input(node, 1))
    zero_point = ctx.optional_input(node, 2)
    dtype = zero_point.dtype if zero_point is not None else "uint8"
    if dtype not in ("int8", "uint8"):
        ctx.refuse(f"quantizing to {dtype} (optc quantizes to int8 or uint8)")
    if x.dtype != "float32":
        ctx.refuse(f"quantizing {x.dtype} input (float32 only)")
    inputs = [x, scale] + ([_flat_scale(ctx, zero_point)] if zero_point is not None else [])
    return ctx.emit("quant.quantize", *inputs, axis=_axis_for(ctx, node, scale, x.type.rank), dtype=dtype)


@converter("DequantizeLinear")
def convert_dequantize_linear(ctx: ImportContext, node: OnnxNode) -> Value:
    q, scale = ctx.input(node, 0), _flat_scale(ctx, ctx.input(node, 1))
    zero_point = ctx.optional_input(node, 2)
    if q.dtype not in QUANT_RANGES:
        ctx.refuse(f"dequantizing {q.dtype} (int8, uint8 or int32 only)")
    inputs = [q, scale] + ([_flat_scale(ctx, zero_point)] if zero_point is not None else [])
    attrs = {"axis": _axis_for(ctx, node, scale, q.type.rank)}
    if ctx.constant(q) is not None:
        # keep the int8 weight: a node, not a folded float constant (see the module docstring)
        return ctx.graph.add_node("quant.dequantize", inputs, attrs, name=ctx._node_name(),
                                  output_names=[ctx._hint(0)]).output
    return ctx.emit("quant.dequantize", *inputs, **attrs)


def _requantize(ctx: ImportContext, accumulator: Value, real_scale: np.ndarray, axis: int | None, out_zero: Value | None,
                out_dtype: str) -> Value:
    multiplier, shift = fixed_point(np.asarray(real_scale, dtype=np.float64))
    if multiplier.size == 1:
        multiplier, shift, axis = multiplier.reshape(()), shift.reshape(()), None
    zero = int(np.asarray(ctx.constant(out_zero)).reshape(-1)[0]) if out_zero is not None else 0
    low, high = QUANT_RANGES[out_dtype]
    return ctx.emit("quant.requantize", accumulator, ctx.const(multiplier), ctx.const(shift), axis=axis, zero_point=zero,
                    min=low, max=high, dtype=out_dtype)


def _weight_zero_is_zero(ctx: ImportContext, node: OnnxNode, index: int) -> None:
    array = ctx.constant_input(node, index, "weight zero point")
    if array is not None and np.any(np.asarray(array) != 0):
        ctx.refuse("weight zero points other than 0 (asymmetric weights)")


@converter("QLinearConv")
def convert_qlinear_conv(ctx: ImportContext, node: OnnxNode) -> Value:
    x, weight = ctx.input(node, 0), ctx.input(node, 3)
    x_scale = float(_constant(ctx, node, 1, "x_scale").reshape(-1)[0])
    x_zero = _scalar(ctx, node, 2, "x_zero_point")
    w_scale = _constant(ctx, node, 4, "w_scale").astype(np.float64).reshape(-1)
    _weight_zero_is_zero(ctx, node, 5)
    y_scale = float(_constant(ctx, node, 6, "y_scale").reshape(-1)[0])
    y_zero = ctx.optional_input(node, 7)
    bias = ctx.optional_input(node, 8)
    if weight.dtype != "int8":
        ctx.refuse(f"{weight.dtype} conv weights (int8 only)")
    rank = weight.type.rank - 2
    kernel = shape_of(ctx, weight)[2:]
    strides, dilations = _ints(node, "strides", rank), _ints(node, "dilations", rank)
    pads = _window_pads(ctx, node, shape_of(ctx, x)[2:], kernel, strides, dilations)
    inputs = [x, weight] + ([bias] if bias is not None else [])
    accumulator = ctx.op("quant.conv", *inputs, strides=strides, pads=pads, dilations=dilations,
                         groups=int(node.attr("group", 1)), x_zero_point=x_zero)
    out_dtype = y_zero.dtype if y_zero is not None else "uint8"
    return _requantize(ctx, accumulator, x_scale * w_scale / y_scale, 1, y_zero, out_dtype)


@converter("QLinearMatMul")
def convert_qlinear_matmul(ctx: ImportContext, node: OnnxNode) -> Value:
    a, b = ctx.input(node, 0), ctx.input(node, 3)
    a_scale = float(_constant(ctx, node, 1, "a_scale").reshape(-1)[0])
    a_zero = _scalar(ctx, node, 2, "a_zero_point")
    b_scale = _constant(ctx, node, 4, "b_scale").astype(np.float64).reshape(-1)
    b_zero = _scalar(ctx, node, 5, "b_zero_point")
    y_scale = float(_constant(ctx, node, 6, "y_scale").reshape(-1)[0])
    y_zero = ctx.optional_input(node, 7)
    accumulator = ctx.op("quant.matmul", a, b, a_zero_point=a_zero, b_zero_point=b_zero)
    out_dtype = y_zero.dtype if y_zero is not None else "uint8"
    axis = accumulator.type.rank - 1 if b_scale.size > 1 else None
    return _requantize(ctx, accumulator, a_scale * b_scale / y_scale, axis, y_zero, out_dtype)


def _runtime_zero(ctx: ImportContext, node: OnnxNode, index: int) -> Value | None:
    """A zero point computed at run time (DynamicQuantizeLinear's), as an int32 scalar; None if constant or absent."""
    value = ctx.optional_input(node, index)
    if value is None or ctx.constant(value) is not None:
        return None
    if value.type.numel != 1:
        ctx.refuse("a per-channel zero point computed at run time")
    return ctx.op("math.cast", _flat_scale(ctx, value), dtype="int32")


def _subtract_zero_times(ctx: ImportContext, accumulator: Value, zero: Value, weight_sums: Value) -> Value:
    """accumulator - zero * weight_sums: the product of (x - zero) from the product of x."""
    return ctx.emit("math.sub", accumulator, ctx.op("math.mul", zero, weight_sums))


@converter("MatMulInteger")
def convert_matmul_integer(ctx: ImportContext, node: OnnxNode) -> Value:
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    runtime_zero = _runtime_zero(ctx, node, 2)
    a_zero = 0 if runtime_zero is not None else _scalar(ctx, node, 2, "a_zero_point")
    b_zero = _scalar(ctx, node, 3, "b_zero_point")
    if runtime_zero is None:
        return ctx.emit("quant.matmul", a, b, a_zero_point=a_zero, b_zero_point=b_zero)
    accumulator = ctx.op("quant.matmul", a, b, b_zero_point=b_zero)
    centered_b = ctx.op("math.sub", ctx.op("math.cast", b, dtype="int32"), ctx.const(np.int32(b_zero)))
    column_sums = ctx.op("reduce.sum", centered_b, axes=(-2,), keepdims=False)
    return _subtract_zero_times(ctx, accumulator, runtime_zero, column_sums)


@converter("DynamicQuantizeLinear")
def convert_dynamic_quantize_linear(ctx: ImportContext, node: OnnxNode) -> list[Value]:
    """uint8: scale = (max(x, 0) - min(x, 0)) / 255, zero = round(-min / scale), y = quantize(x)."""
    x = ctx.input(node, 0)
    axes = tuple(range(x.type.rank))
    low = ctx.op("math.minimum", ctx.op("reduce.min", x, axes=axes, keepdims=False), ctx.scalar_like(x, 0.0))
    high = ctx.op("math.maximum", ctx.op("reduce.max", x, axes=axes, keepdims=False), ctx.scalar_like(x, 0.0))
    span = ctx.op("math.sub", high, low)
    # an all-zero input would divide by zero; ONNX leaves that undefined, use scale 1
    safe = ctx.op("math.where", ctx.op("math.equal", span, ctx.scalar_like(x, 0.0)), ctx.scalar_like(x, 255.0), span)
    scale = ctx.emit("math.div", safe, ctx.scalar_like(x, 255.0), output=1)
    zero_float = ctx.op("math.clip", ctx.op("math.round", ctx.op("math.neg", ctx.op("math.div", low, scale))), min=0.0,
                        max=255.0)
    zero = ctx.emit("math.cast", zero_float, dtype="uint8", output=2)
    quantized = ctx.emit("quant.quantize", x, scale, zero, dtype="uint8", output=0)
    return [quantized, scale, zero]


@converter("ConvInteger")
def convert_conv_integer(ctx: ImportContext, node: OnnxNode) -> Value:
    """A run-time input zero point z: conv(x - z) = conv(x) - z * conv(ones inside the padding),
    and the latter is a constant of the weight and the geometry."""
    x, weight = ctx.input(node, 0), ctx.input(node, 1)
    _weight_zero_is_zero(ctx, node, 3)
    if weight.dtype != "int8":
        ctx.refuse(f"{weight.dtype} conv weights (int8 only)")
    rank = weight.type.rank - 2
    kernel = shape_of(ctx, weight)[2:]
    strides, dilations = _ints(node, "strides", rank), _ints(node, "dilations", rank)
    pads = _window_pads(ctx, node, shape_of(ctx, x)[2:], kernel, strides, dilations)
    attrs = dict(strides=strides, pads=pads, dilations=dilations, groups=int(node.attr("group", 1)))
    runtime_zero = _runtime_zero(ctx, node, 2)
    if runtime_zero is None:
        return ctx.emit("quant.conv", x, weight, x_zero_point=_scalar(ctx, node, 2, "x_zero_point"), **attrs)
    weight_array = ctx.constant(weight)
    if weight_array is None:
        ctx.refuse("a run-time zero point with a weight computed at run time")
    from ....ir.ops import get

    conv = get("nn.conv")
    ones = np.ones((1,) + shape_of(ctx, x)[1:], dtype=np.float64)
    window_sums = conv.run([ones, weight_array.astype(np.float64)], conv.check_attrs(attrs))[0]
    accumulator = ctx.op("quant.conv", x, weight, **attrs)
    return _subtract_zero_times(ctx, accumulator, runtime_zero, ctx.const(np.rint(window_sums).astype(np.int32)))
