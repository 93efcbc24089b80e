"""Lowerings of the elementwise family (``math.*``).

Semantics follow the NumPy references in ``ir/ops/elementwise.py``, not whatever the nearest
Relax op happens to do: integer division truncates, ``mod`` follows the divisor's sign unless
``fmod``, logical ops accept any dtype (non-zero is true), casts to bool test for non-zero.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ...ir.graph import Node
from ...ir.types import FLOAT_DTYPES
from .context import LowerContext
from .table import lowers

UnaryBuilder = Callable[[LowerContext, relax.Expr, dict], relax.Expr]


def _is_unsigned(dtype: str) -> bool:
    return dtype.startswith("uint")


def _truthy(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    """``x != 0`` as bool, or ``x`` itself when it already is bool."""
    dtype = ctx.dtype_of(x)
    return x if dtype == "bool" else R.not_equal(x, ctx.const(0, dtype))


def _scalar(ctx: LowerContext, x: relax.Expr, value: float) -> relax.Expr:
    return ctx.const(value, ctx.dtype_of(x))


# ---- unary ops on floats --------------------------------------------------------------------------

def _softplus(ctx: LowerContext, x: relax.Expr, attrs: dict) -> relax.Expr:
    # max(x, 0) + log(1 + exp(-|x|)): never overflows, unlike log(1 + exp(x))
    tail = R.log(R.add(_scalar(ctx, x, 1.0), R.exp(R.negative(R.abs(x)))))
    return R.add(R.maximum(x, _scalar(ctx, x, 0.0)), tail)


def _gelu(ctx: LowerContext, x: relax.Expr, attrs: dict) -> relax.Expr:
    if attrs["approximate"] == "tanh":
        return R.nn.gelu_tanh(x)
    if attrs["approximate"] != "none":
        raise ctx.error(f"gelu approximate='{attrs['approximate']}' is not 'none' or 'tanh'")
    return R.nn.gelu(x)


def _exp_minus_one_below_zero(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    return R.subtract(R.exp(R.minimum(x, _scalar(ctx, x, 0.0))), _scalar(ctx, x, 1.0))


def _elu(ctx: LowerContext, x: relax.Expr, attrs: dict) -> relax.Expr:
    negative = R.multiply(_scalar(ctx, x, attrs["alpha"]), _exp_minus_one_below_zero(ctx, x))
    return R.where(R.greater(x, _scalar(ctx, x, 0.0)), x, negative)


def _selu(ctx: LowerContext, x: relax.Expr, attrs: dict) -> relax.Expr:
    return R.multiply(_scalar(ctx, x, attrs["gamma"]), _elu(ctx, x, {"alpha": attrs["alpha"]}))


def _shrink(ctx: LowerContext, x: relax.Expr, attrs: dict) -> relax.Expr:
    lambd, bias = attrs["lambd"], attrs["bias"]
    above = R.where(R.greater(x, _scalar(ctx, x, lambd)), R.subtract(x, _scalar(ctx, x, bias)), _scalar(ctx, x, 0.0))
    return R.where(R.less(x, _scalar(ctx, x, -lambd)), R.add(x, _scalar(ctx, x, bias)), above)


def _hard_sigmoid(ctx: LowerContext, x: relax.Expr, attrs: dict) -> relax.Expr:
    linear = R.add(R.multiply(x, _scalar(ctx, x, attrs["alpha"])), _scalar(ctx, x, attrs["beta"]))
    return R.clip(linear, 0.0, 1.0)


def _hard_swish(ctx: LowerContext, x: relax.Expr, attrs: dict) -> relax.Expr:
    return R.multiply(x, _hard_sigmoid(ctx, x, {"alpha": 1.0 / 6.0, "beta": 0.5}))


def _leaky_relu(ctx: LowerContext, x: relax.Expr, attrs: dict) -> relax.Expr:
    scaled = R.multiply(x, _scalar(ctx, x, attrs["alpha"]))
    return R.where(R.greater_equal(x, _scalar(ctx, x, 0.0)), x, scaled)


UNARY: dict[str, UnaryBuilder] = {
    "math.exp": lambda ctx, x, attrs: R.exp(x),
    "math.log": lambda ctx, x, attrs: R.log(x),
    "math.sqrt": lambda ctx, x, attrs: R.sqrt(x),
    "math.rsqrt": lambda ctx, x, attrs: R.rsqrt(x),
    "math.reciprocal": lambda ctx, x, attrs: R.divide(_scalar(ctx, x, 1.0), x),
    "math.sin": lambda ctx, x, attrs: R.sin(x),
    "math.cos": lambda ctx, x, attrs: R.cos(x),
    "math.tanh": lambda ctx, x, attrs: R.tanh(x),
    "math.erf": lambda ctx, x, attrs: R.erf(x),
    "math.sigmoid": lambda ctx, x, attrs: R.sigmoid(x),
    "math.floor": lambda ctx, x, attrs: R.floor(x),
    "math.ceil": lambda ctx, x, attrs: R.ceil(x),
    "math.round": lambda ctx, x, attrs: R.round(x),
    "math.softplus": _softplus,
    "math.softsign": lambda ctx, x, attrs: R.divide(x, R.add(_scalar(ctx, x, 1.0), R.abs(x))),
    "math.silu": lambda ctx, x, attrs: R.nn.silu(x),
    "math.gelu": _gelu,
    "math.hard_sigmoid": _hard_sigmoid,
    "math.hard_swish": _hard_swish,
    "math.leaky_relu": _leaky_relu,
    "math.elu": _elu,
    "math.selu": _selu,
    "math.shrink": _shrink,
}


@lowers(*UNARY)
def lower_unary_float(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return UNARY[node.op](ctx, args[0], node.attrs)


# ---- unary ops on any dtype ----------------------------------------------------------------------

@lowers("math.neg")
def lower_neg(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return R.negative(args[0])


@lowers("math.abs")
def lower_abs(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    return x if _is_unsigned(ctx.dtype_of(x)) or ctx.dtype_of(x) == "bool" else R.abs(x)


@lowers("math.sign")
def lower_sign(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    dtype = ctx.dtype_of(x)
    if _is_unsigned(dtype):
        return R.astype(_truthy(ctx, x), dtype)
    return R.sign(x)


@lowers("math.relu")
def lower_relu(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    if ctx.dtype_of(x) in FLOAT_DTYPES:
        return R.nn.relu(x)
    return R.maximum(x, _scalar(ctx, x, 0))


@lowers("math.clip")
def lower_clip(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    low, high = node.attrs["min"], node.attrs["max"]
    dtype = ctx.dtype_of(x)
    bounds_are_whole = all(bound is None or float(bound).is_integer() for bound in (low, high))
    if dtype not in FLOAT_DTYPES and not bounds_are_whole:
        # NumPy clips an int tensor to a fractional bound in floating point, then casts back
        widened = R.astype(x, "float64")
        return R.astype(_clip_with(ctx, widened, low, high), dtype)
    return _clip_with(ctx, x, low, high)


def _clip_with(ctx: LowerContext, x: relax.Expr, low: float | None, high: float | None) -> relax.Expr:
    # maximum/minimum instead of R.clip: R.clip wants both bounds and casts them through float
    dtype = ctx.dtype_of(x)
    if dtype not in FLOAT_DTYPES:
        # a bound outside the integer range clips nothing (and would wrap as a constant)
        limits = np.iinfo(dtype)
        low = None if low is None or low <= limits.min else int(low)
        high = None if high is None or high >= limits.max else int(high)
    if low is not None:
        x = R.maximum(x, _scalar(ctx, x, low))
    if high is not None:
        x = R.minimum(x, _scalar(ctx, x, high))
    return x


@lowers("math.not")
def lower_not(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return R.logical_not(_truthy(ctx, args[0]))


@lowers("math.isnan")
def lower_isnan(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    if ctx.dtype_of(x) in FLOAT_DTYPES:
        return R.isnan(x)
    return R.zeros_like(x, dtype="bool")


@lowers("math.cast")
def lower_cast(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x = args[0]
    dtype = node.attrs["dtype"]
    if dtype == ctx.dtype_of(x):
        return x
    if dtype == "bool":
        return _truthy(ctx, x)  # an LLVM truncation to i1 would keep only the lowest bit
    return R.astype(x, dtype)


# ---- binary ops ----------------------------------------------------------------------------------

BINARY: dict[str, Callable[[relax.Expr, relax.Expr], relax.Expr]] = {
    "math.add": R.add,
    "math.sub": R.subtract,
    "math.mul": R.multiply,
    "math.maximum": R.maximum,
    "math.minimum": R.minimum,
    "math.equal": R.equal,
    "math.less": R.less,
    "math.less_equal": R.less_equal,
    "math.greater": R.greater,
    "math.greater_equal": R.greater_equal,
}


@lowers(*BINARY)
def lower_binary(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return BINARY[node.op](args[0], args[1])


LOGICAL: dict[str, Callable[[relax.Expr, relax.Expr], relax.Expr]] = {
    "math.and": R.logical_and,
    "math.or": R.logical_or,
    "math.xor": R.logical_xor,
}


@lowers(*LOGICAL)
def lower_logical(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return LOGICAL[node.op](_truthy(ctx, args[0]), _truthy(ctx, args[1]))


@lowers("math.div")
def lower_div(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    left, right = args
    dtype = ctx.dtype_of(left)
    if dtype in FLOAT_DTYPES:
        return R.divide(left, right)
    # Integer division truncates toward zero. Dividing in float64 is what the reference does,
    # so results agree bit for bit, and a zero divisor cannot trap (SIGFPE) the process.
    quotient = R.divide(R.astype(left, "float64"), R.astype(right, "float64"))
    return R.astype(R.trunc(quotient), dtype)


@lowers("math.mod")
def lower_mod(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    left, right = args
    dtype = ctx.dtype_of(left)
    truncating = node.attrs["fmod"]
    if dtype in FLOAT_DTYPES:
        rounding = R.trunc if truncating else R.floor
        return R.subtract(left, R.multiply(rounding(R.divide(left, right)), right))
    # integer remainder by zero traps; NumPy returns 0 there, so divide by 1 and select 0
    zero = ctx.const(0, dtype)
    is_zero = R.equal(right, zero)
    safe_right = R.where(is_zero, ctx.const(1, dtype), right)
    remainder = (R.mod if truncating else R.floor_mod)(left, safe_right)
    return R.where(is_zero, zero, remainder)


@lowers("math.pow")
def lower_pow(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    base, exponent = args
    dtype = ctx.dtype_of(base)
    if dtype in FLOAT_DTYPES:
        return R.power(base, exponent)
    # integer powers: exact in float64 up to 2**53, then rounded back (TIR has no integer pow)
    widened = R.power(R.astype(base, "float64"), R.astype(exponent, "float64"))
    return R.astype(R.round(widened), dtype)


@lowers("math.prelu")
def lower_prelu(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, slope = args
    return R.where(R.greater_equal(x, _scalar(ctx, x, 0)), x, R.multiply(x, slope))


@lowers("math.where")
def lower_where(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return R.where(args[0], args[1], args[2])
