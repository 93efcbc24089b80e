"""Elementwise ONNX ops: activations, arithmetic, comparisons, logic, casts, where, clip."""

from __future__ import annotations

from typing import Any

import numpy as np

from ....ir.graph import Value
from ....ir.ops.registry import broadcast_shapes
from ....errors import ShapeError
from ..importer import ImportContext, OnnxNode, converter, onnx_dtype, onnx_dtype_name
from .common import cast_to, reshape, shape_of

# ONNX op -> (optc op, {attribute: default}); attributes pass through under the same name.
UNARY: dict[str, tuple[str, dict[str, Any]]] = {
    "Relu": ("math.relu", {}),
    "Sigmoid": ("math.sigmoid", {}),
    "Tanh": ("math.tanh", {}),
    "Exp": ("math.exp", {}),
    "Log": ("math.log", {}),
    "Sqrt": ("math.sqrt", {}),
    "Reciprocal": ("math.reciprocal", {}),
    "Neg": ("math.neg", {}),
    "Abs": ("math.abs", {}),
    "Sign": ("math.sign", {}),
    "Sin": ("math.sin", {}),
    "Cos": ("math.cos", {}),
    "Erf": ("math.erf", {}),
    "Floor": ("math.floor", {}),
    "Ceil": ("math.ceil", {}),
    "Round": ("math.round", {}),
    "Softplus": ("math.softplus", {}),
    "Softsign": ("math.softsign", {}),
    "Not": ("math.not", {}),
    "IsNaN": ("math.isnan", {}),
    "HardSwish": ("math.hard_swish", {}),
    "Elu": ("math.elu", {"alpha": 1.0}),
    "Selu": ("math.selu", {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}),
    "LeakyRelu": ("math.leaky_relu", {"alpha": 0.01}),
    "HardSigmoid": ("math.hard_sigmoid", {"alpha": 0.2, "beta": 0.5}),
    "Shrink": ("math.shrink", {"lambd": 0.5, "bias": 0.0}),
}

BINARY: dict[str, str] = {
    "Add": "math.add",
    "Sub": "math.sub",
    "Mul": "math.mul",
    "Div": "math.div",
    "Equal": "math.equal",
    "Less": "math.less",
    "LessOrEqual": "math.less_equal",
    "Greater": "math.greater",
    "GreaterOrEqual": "math.greater_equal",
    "And": "math.and",
    "Or": "math.or",
    "Xor": "math.xor",
}


def _unary(optc_op: str, defaults: dict[str, Any]):
    def convert(ctx: ImportContext, node: OnnxNode) -> Value:
        attrs = {name: float(node.attr(name, default)) for name, default in defaults.items()}
        return ctx.emit(optc_op, ctx.input(node, 0), **attrs)

    convert.__name__ = f"convert_{optc_op.split('.')[-1]}"
    return convert


def _binary(optc_op: str):
    def convert(ctx: ImportContext, node: OnnxNode) -> Value:
        return ctx.emit(optc_op, ctx.input(node, 0), ctx.input(node, 1))

    convert.__name__ = f"convert_{optc_op.split('.')[-1]}"
    return convert


for _onnx_op, (_optc_op, _defaults) in UNARY.items():
    converter(_onnx_op)(_unary(_optc_op, _defaults))
for _onnx_op, _optc_op in BINARY.items():
    converter(_onnx_op)(_binary(_optc_op))


@converter("Identity")
def convert_identity(ctx: ImportContext, node: OnnxNode) -> Value:
    return ctx.input(node, 0)


@converter("Gelu")
def convert_gelu(ctx: ImportContext, node: OnnxNode) -> Value:
    approximate = node.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        ctx.refuse(f"approximate='{approximate}'")
    return ctx.emit("math.gelu", ctx.input(node, 0), approximate=approximate)


@converter("Pow")
def convert_pow(ctx: ImportContext, node: OnnxNode) -> Value:
    base = ctx.input(node, 0)
    exponent = cast_to(ctx, ctx.input(node, 1), base.dtype)
    return ctx.emit("math.pow", base, exponent)


@converter("Mod")
def convert_mod(ctx: ImportContext, node: OnnxNode) -> Value:
    # fmod=0 is Python's modulo (sign of the divisor), fmod=1 C's fmod (sign of the dividend)
    return ctx.emit("math.mod", ctx.input(node, 0), ctx.input(node, 1), fmod=bool(node.attr("fmod", 0)))


def _chain(ctx: ImportContext, node: OnnxNode, optc_op: str) -> Value:
    values = [ctx.value(name) for name in node.inputs if name]
    if not values:
        ctx.refuse("no inputs")
    result = values[0]
    for index, value in enumerate(values[1:], start=2):
        result = ctx.emit(optc_op, result, value) if index == len(values) else ctx.op(optc_op, result, value)
    return result


@converter("Sum")
def convert_sum(ctx: ImportContext, node: OnnxNode) -> Value:
    return _chain(ctx, node, "math.add")


@converter("Max")
def convert_max(ctx: ImportContext, node: OnnxNode) -> Value:
    return _chain(ctx, node, "math.maximum")


@converter("Min")
def convert_min(ctx: ImportContext, node: OnnxNode) -> Value:
    return _chain(ctx, node, "math.minimum")


@converter("Mean")
def convert_mean(ctx: ImportContext, node: OnnxNode) -> Value:
    values = [ctx.value(name) for name in node.inputs if name]
    total = values[0]
    for value in values[1:]:
        total = ctx.op("math.add", total, value)
    if len(values) == 1:
        return total
    return ctx.emit("math.div", total, ctx.scalar_like(total, len(values)))


@converter("Clip")
def convert_clip(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    if ctx.opset < 11:
        low, high = node.attr("min"), node.attr("max")
        return ctx.emit("math.clip", x, min=low, max=high)
    bounds: list[Value | None] = [ctx.optional_input(node, 1), ctx.optional_input(node, 2)]
    constants = [ctx.constant(bound) for bound in bounds]
    if all(bound is None or array is not None for bound, array in zip(bounds, constants)):
        low, high = (None if array is None else float(np.asarray(array).reshape(-1)[0]) for array in constants)
        return ctx.emit("math.clip", x, min=low, max=high)
    result = x
    if bounds[0] is not None:
        result = ctx.op("math.maximum", result, cast_to(ctx, bounds[0], x.dtype))
    if bounds[1] is not None:
        result = ctx.op("math.minimum", result, cast_to(ctx, bounds[1], x.dtype))
    return result


@converter("PRelu")
def convert_prelu(ctx: ImportContext, node: OnnxNode) -> Value:
    x, slope = ctx.input(node, 0), ctx.input(node, 1)
    try:
        fits = tuple(broadcast_shapes(x.shape, slope.shape)) == tuple(x.shape)
    except ShapeError:
        fits = False
    if not fits and slope.type.rank == 1 and x.type.rank > 2 and slope.shape[0] == x.shape[1]:
        # opset <7 PRelu broadcast a per-channel slope over the channel axis
        slope = reshape(ctx, slope, (slope.shape[0],) + (1,) * (x.type.rank - 2))
    return ctx.emit("math.prelu", x, cast_to(ctx, slope, x.dtype))


@converter("Where")
def convert_where(ctx: ImportContext, node: OnnxNode) -> Value:
    condition = cast_to(ctx, ctx.input(node, 0), "bool")
    return ctx.emit("math.where", condition, ctx.input(node, 1), ctx.input(node, 2))


def _dtype_attr(ctx: ImportContext, elem_type: int) -> str:
    dtype = onnx_dtype(elem_type)
    if dtype is None:
        ctx.refuse(f"cast to {onnx_dtype_name(elem_type)}")
    return dtype  # type: ignore[return-value]


@converter("Cast")
def convert_cast(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    dtype = _dtype_attr(ctx, int(node.attr("to")))
    return x if x.dtype == dtype else ctx.emit("math.cast", x, dtype=dtype)


@converter("CastLike")
def convert_cast_like(ctx: ImportContext, node: OnnxNode) -> Value:
    x, like = ctx.input(node, 0), ctx.input(node, 1)
    return x if x.dtype == like.dtype else ctx.emit("math.cast", x, dtype=like.dtype)


@converter("IsInf")
def convert_is_inf(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    positive, negative = bool(node.attr("detect_positive", 1)), bool(node.attr("detect_negative", 1))
    if positive and negative:
        return ctx.emit("math.equal", ctx.op("math.abs", x), ctx.scalar_like(x, np.inf))
    if positive:
        return ctx.emit("math.equal", x, ctx.scalar_like(x, np.inf))
    if negative:
        return ctx.emit("math.equal", x, ctx.scalar_like(x, -np.inf))
    return ctx.const(np.zeros(shape_of(ctx, x), dtype=bool), output=0)


@converter("Celu")
def convert_celu(ctx: ImportContext, node: OnnxNode) -> Value:
    # celu(x, a) = a * elu(x / a)
    x = ctx.input(node, 0)
    alpha = float(node.attr("alpha", 1.0))
    scaled = ctx.op("math.div", x, ctx.scalar_like(x, alpha))
    return ctx.emit("math.mul", ctx.op("math.elu", scaled, alpha=1.0), ctx.scalar_like(x, alpha))


@converter("ThresholdedRelu")
def convert_thresholded_relu(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    alpha = float(node.attr("alpha", 1.0))
    above = ctx.op("math.greater", x, ctx.scalar_like(x, alpha))
    return ctx.emit("math.where", above, x, ctx.scalar_like(x, 0.0))


@converter("Mish")
def convert_mish(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    return ctx.emit("math.mul", x, ctx.op("math.tanh", ctx.op("math.softplus", x)))


@converter("Tan")
def convert_tan(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    return ctx.emit("math.div", ctx.op("math.sin", x), ctx.op("math.cos", x))


@converter("Swish")
def convert_swish(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    alpha = float(node.attr("alpha", 1.0))
    if alpha == 1.0:
        return ctx.emit("math.silu", x)
    return ctx.emit("math.mul", x, ctx.op("math.sigmoid", ctx.op("math.mul", x, ctx.scalar_like(x, alpha))))
