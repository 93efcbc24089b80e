"""Elementwise ATen ops: identities, casts, unary math and activations, arithmetic, comparisons, logic, where."""

from __future__ import annotations

import math
from typing import Any

import torch

from ....ir.graph import Value
from ..aten import (Context, Converter, Operand, Scalar, Unavailable, Unsupported, _binary, _overload, converts,
                    optc_dtype)

aten = torch.ops.aten


# ---- identities and casts -------------------------------------------------------------------------------


@converts(aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default, _overload("lift_fresh"))
def identity(ctx: Context, self: Value) -> Value:
    return self


@converts(aten.native_dropout.default)
def native_dropout(ctx: Context, input: Value, train: bool | None = None) -> list[Any]:
    if train:
        raise Unsupported("dropout in training mode (call model.eval())")
    return [input, Unavailable("dropout mask")]


@converts(aten._to_copy.default)
def to_copy(ctx: Context, self: Value, dtype: torch.dtype | None = None) -> Value:
    return self if dtype is None else ctx.cast(self, optc_dtype(dtype))


@converts(aten.copy.default)
def copy(ctx: Context, self: Value, src: Value) -> Value:
    source = ctx.cast(src, self.dtype)
    if tuple(source.shape) != tuple(self.shape):
        source = ctx.op("tensor.expand", source, shape=tuple(self.shape))
    return source


# ---- elementwise: unary ---------------------------------------------------------------------------------

_UNARY: dict[Any, str] = {
    aten.relu.default: "math.relu",
    aten.sigmoid.default: "math.sigmoid",
    aten.tanh.default: "math.tanh",
    aten.exp.default: "math.exp",
    aten.log.default: "math.log",
    aten.sqrt.default: "math.sqrt",
    aten.rsqrt.default: "math.rsqrt",
    aten.reciprocal.default: "math.reciprocal",
    aten.neg.default: "math.neg",
    aten.abs.default: "math.abs",
    aten.sign.default: "math.sign",
    aten.sin.default: "math.sin",
    aten.cos.default: "math.cos",
    aten.erf.default: "math.erf",
    aten.floor.default: "math.floor",
    aten.ceil.default: "math.ceil",
    aten.round.default: "math.round",
}


def _unary(op: str) -> Converter:
    def convert(ctx: Context, self: Value) -> Value:
        # float-only ops on integer tensors compute in torch's result dtype (sqrt(int) is float)
        return ctx.op(op, ctx.cast(self, ctx.out_dtype()))

    convert.__name__ = op.split(".")[-1]
    return convert


for _target, _op in _UNARY.items():
    converts(_target)(_unary(_op))


@converts(aten.isnan.default)
def isnan(ctx: Context, self: Value) -> Value:
    return ctx.op("math.isnan", self)


@converts(aten.logical_not.default, aten.bitwise_not.default)
def logical_not(ctx: Context, self: Value) -> Value:
    if ctx.node is not None and ctx.node.target is aten.bitwise_not.default and self.dtype != "bool":
        raise Unsupported("bitwise_not on integers")
    return ctx.op("math.not", ctx.cast(self, "bool"))


@converts(aten.gelu.default)
def gelu(ctx: Context, self: Value, approximate: str = "none") -> Value:
    return ctx.op("math.gelu", self, approximate=approximate)


@converts(aten.leaky_relu.default)
def leaky_relu(ctx: Context, self: Value, negative_slope: float = 0.01) -> Value:
    return ctx.op("math.leaky_relu", self, alpha=float(negative_slope))


@converts(aten.elu.default)
def elu(ctx: Context, self: Value, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> Value:
    if input_scale != 1:
        raise Unsupported(f"elu with input_scale={input_scale}")
    if scale == 1:
        return ctx.op("math.elu", self, alpha=float(alpha))
    return ctx.op("math.selu", self, alpha=float(alpha), gamma=float(scale))


@converts(aten.hardtanh.default)
def hardtanh(ctx: Context, self: Value, min_val: float = -1.0, max_val: float = 1.0) -> Value:
    return ctx.op("math.clip", self, min=float(min_val), max=float(max_val))


@converts(aten.clamp.default)
def clamp(ctx: Context, self: Value, min: Scalar | None = None, max: Scalar | None = None) -> Value:
    x = ctx.cast(self, ctx.out_dtype())
    return ctx.op("math.clip", x, min=None if min is None else float(min), max=None if max is None else float(max))


@converts(aten.clamp.Tensor)
def clamp_tensor(ctx: Context, self: Value, min: Operand | None = None, max: Operand | None = None) -> Value:
    dtype = ctx.out_dtype()
    out = ctx.cast(self, dtype)
    if min is not None:
        out = _binary(ctx, "math.maximum", out, min, dtype)
    if max is not None:
        out = _binary(ctx, "math.minimum", out, max, dtype)
    return out


@converts(aten.log1p.default)
def log1p(ctx: Context, self: Value) -> Value:
    x = ctx.cast(self, ctx.out_dtype())
    return ctx.op("math.log", _binary(ctx, "math.add", x, 1, x.dtype))


@converts(aten.expm1.default)
def expm1(ctx: Context, self: Value) -> Value:
    x = ctx.cast(self, ctx.out_dtype())
    return _binary(ctx, "math.sub", ctx.op("math.exp", x), 1, x.dtype)


@converts(aten.log2.default, aten.log10.default)
def log_base(ctx: Context, self: Value) -> Value:
    base = 2.0 if ctx.node is not None and ctx.node.target is aten.log2.default else 10.0
    x = ctx.cast(self, ctx.out_dtype())
    return _binary(ctx, "math.mul", ctx.op("math.log", x), 1.0 / math.log(base), x.dtype)


@converts(aten.trunc.default)
def trunc(ctx: Context, self: Value) -> Value:
    if self.dtype not in ("float32", "float64", "float16"):
        return self
    return ctx.op("math.mul", ctx.op("math.sign", self), ctx.op("math.floor", ctx.op("math.abs", self)))


# ---- elementwise: binary ------------------------------------------------------------------------------


def _scaled(ctx: Context, operand: Operand, alpha: Scalar, dtype: str) -> Operand:
    if alpha == 1:
        return operand
    if isinstance(operand, Value):
        return _binary(ctx, "math.mul", operand, alpha, dtype)
    return operand * alpha


@converts(aten.add.Tensor, aten.add.Scalar)
def add(ctx: Context, self: Operand, other: Operand, alpha: Scalar = 1) -> Value:
    dtype = ctx.out_dtype()
    return _binary(ctx, "math.add", self, _scaled(ctx, other, alpha, dtype), dtype)


@converts(aten.sub.Tensor, aten.sub.Scalar)
def sub(ctx: Context, self: Operand, other: Operand, alpha: Scalar = 1) -> Value:
    dtype = ctx.out_dtype()
    return _binary(ctx, "math.sub", self, _scaled(ctx, other, alpha, dtype), dtype)


@converts(aten.mul.Tensor, aten.mul.Scalar)
def mul(ctx: Context, self: Operand, other: Operand) -> Value:
    return _binary(ctx, "math.mul", self, other, ctx.out_dtype())


@converts(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode)
def div(ctx: Context, self: Operand, other: Operand, rounding_mode: str | None = None) -> Value:
    dtype = ctx.out_dtype()
    if rounding_mode is None or dtype in ("float32", "float64", "float16") and rounding_mode == "floor":
        quotient = _binary(ctx, "math.div", self, other, dtype)
        return quotient if rounding_mode is None else ctx.op("math.floor", quotient)
    if rounding_mode == "trunc":
        if dtype in ("float32", "float64", "float16"):
            return trunc(ctx, _binary(ctx, "math.div", self, other, dtype))
        return _binary(ctx, "math.div", self, other, dtype)  # integer math.div truncates
    return _floor_divide_integers(ctx, ctx.tensor(self, dtype), ctx.tensor(other, dtype))


def _floor_divide_integers(ctx: Context, left: Value, right: Value) -> Value:
    quotient = ctx.op("math.div", left, right)  # truncates toward zero
    remainder = ctx.op("math.sub", left, ctx.op("math.mul", quotient, right))
    zero = ctx.const(0, left.dtype)
    inexact = ctx.op("math.not", ctx.op("math.equal", remainder, zero))
    signs_differ = ctx.op("math.xor", ctx.op("math.less", remainder, zero), ctx.op("math.less", right, zero))
    correction = ctx.cast(ctx.op("math.and", inexact, signs_differ), left.dtype)
    return ctx.op("math.sub", quotient, correction)


@converts(aten.remainder.Tensor, aten.remainder.Scalar, aten.fmod.Tensor, aten.fmod.Scalar)
def remainder(ctx: Context, self: Operand, other: Operand) -> Value:
    is_fmod = ctx.node is not None and ctx.node.target in (aten.fmod.Tensor, aten.fmod.Scalar)
    dtype = ctx.out_dtype()
    return ctx.op("math.mod", ctx.tensor(self, dtype), ctx.tensor(other, dtype), fmod=is_fmod)


@converts(aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.pow.Scalar)
def pow(ctx: Context, self: Operand, exponent: Operand) -> Value:
    if isinstance(self, Value) and not isinstance(exponent, Value) and exponent == 1:
        return ctx.cast(self, ctx.out_dtype())
    return _binary(ctx, "math.pow", self, exponent, ctx.out_dtype())


@converts(aten.maximum.default, aten.minimum.default)
def maximum(ctx: Context, self: Value, other: Value) -> Value:
    op = "math.maximum" if ctx.node is None or ctx.node.target is aten.maximum.default else "math.minimum"
    return _binary(ctx, op, self, other, ctx.out_dtype())


_COMPARISONS = {
    "eq": "math.equal", "lt": "math.less", "le": "math.less_equal",
    "gt": "math.greater", "ge": "math.greater_equal", "ne": "math.equal",
}


def _comparison(op: str, negate: bool) -> Converter:
    def convert(ctx: Context, self: Operand, other: Operand) -> Value:
        out = _binary(ctx, op, self, other)
        return ctx.op("math.not", out) if negate else out

    return convert


for _name, _op in _COMPARISONS.items():
    converts(getattr(aten, _name).Tensor, getattr(aten, _name).Scalar)(_comparison(_op, _name == "ne"))


_LOGICAL = {
    aten.logical_and.default: "math.and", aten.logical_or.default: "math.or", aten.logical_xor.default: "math.xor",
    aten.bitwise_and.Tensor: "math.and", aten.bitwise_or.Tensor: "math.or", aten.bitwise_xor.Tensor: "math.xor",
    _overload("bitwise_and", "Scalar"): "math.and", _overload("bitwise_or", "Scalar"): "math.or",
    _overload("bitwise_xor", "Scalar"): "math.xor",
}


def _logical(op: str) -> Converter:
    def convert(ctx: Context, self: Operand, other: Operand) -> Value:
        if ctx.out_dtype() != "bool":
            raise Unsupported("bitwise ops on integers")
        return _binary(ctx, op, self, other, "bool")

    return convert


for _target, _op in _LOGICAL.items():
    converts(_target)(_logical(_op))


@converts(aten.where.self)
def where(ctx: Context, condition: Value, self: Operand, other: Operand) -> Value:
    dtype = ctx.out_dtype()
    return ctx.op("math.where", ctx.cast(condition, "bool"), ctx.tensor(self, dtype), ctx.tensor(other, dtype))
