"""ATen converters: one function per core ATen op, registered by op overload, into registry ops.

A converter receives the ``Context`` and the node's arguments by their ATen schema names (with
the schema's defaults filled in); tensors arrive as optc ``Value``s, sizes as ints or symbol
names. It returns a ``Value`` (or a list for multi-output ops) built through ``Context.op``,
which folds constant subexpressions as it goes. A converter that meets an argument combination
it cannot express raises ``Unsupported(reason)``; the importer collects those with the ops that
have no converter at all and reports them together.

    @converts(aten.relu.default)
    def relu(ctx: Context, self: Value) -> Value:
        return ctx.op("math.relu", self)
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from ...errors import OptcError
from ...ir.builder import Builder
from ...ir.graph import Graph, Value
from ...ir.types import Dim, TensorType

aten = torch.ops.aten

Scalar = Union[int, float, bool]
Operand = Union[Value, int, float, bool]

TORCH_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8",
    torch.uint8: "uint8", torch.bool: "bool",
}
OPTC_DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in TORCH_DTYPES.items()}


class Unsupported(Exception):
    """A converter cannot express this use of its op; the message says why."""


@dataclass(frozen=True)
class Unavailable:
    """An output optc does not compute (batch-norm statistics, max-pool indices, ...)."""

    reason: str


def optc_dtype(dtype: torch.dtype) -> str:
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise Unsupported(f"dtype {dtype} (convert the model to float32 first)") from None


# ---- the conversion context ---------------------------------------------------------------------


class Context:
    """What converters build with: the graph under construction and the fx node being converted."""

    def __init__(self, graph: Graph, symbols: dict[str, str] | None = None) -> None:
        self.graph = graph
        self.builder = Builder(graph)
        self.symbols = dict(symbols or {})
        self.node: torch.fx.Node | None = None
        # params shared by several users (tied embeddings): ops on them stay nodes, so folding a
        # transpose of the weight does not store the weight twice
        self.keep_unfolded: set[int] = set()
        # params that hold the model's own state (named by state-dict keys)
        self.model_params: set[int] = set()
        self._scalars: dict[tuple[str, bytes], Value] = {}

    # ---- what torch knows about the current node ----
    @property
    def name(self) -> str:
        return self.node.name if self.node is not None else "v"

    def meta(self, index: int | None = None) -> Any:
        value = self.node.meta.get("val") if self.node is not None else None
        if index is not None and isinstance(value, (list, tuple)):
            value = value[index]
        return value

    def out_dtype(self, index: int | None = None) -> str:
        meta = self.meta(index)
        if not isinstance(meta, torch.Tensor):
            raise OptcError(f"node {self.name} carries no tensor metadata")
        return optc_dtype(meta.dtype)

    def out_shape(self, index: int | None = None) -> tuple[Dim, ...]:
        meta = self.meta(index)
        if not isinstance(meta, torch.Tensor):
            raise OptcError(f"node {self.name} carries no tensor metadata")
        return tuple(self.dim(size) for size in meta.shape)

    def dim(self, size: Any) -> Dim:
        """An optc dim for a torch size: an int, or a symbol name (``batch``, ``2*batch``)."""
        if isinstance(size, str):
            return size
        if isinstance(size, torch.SymInt):
            expr = size.node.expr
            if expr.is_number:
                return int(expr)
            text = str(expr).replace(" ", "")
            return re.sub(r"[A-Za-z_]\w*", lambda m: self.symbols.get(m.group(0), m.group(0)), text)
        return int(size)

    # ---- building ----
    def ops(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None,
            output_names: Sequence[str] | None = None) -> list[Value]:
        names = list(output_names) if output_names else [self.name]
        if any(id(value) in self.keep_unfolded for value in inputs):
            return self.graph.add_node(op, inputs, attrs, name=self.name, output_names=names).outputs
        sources = [value for value in inputs if id(value) in self.model_params]
        if len(sources) == 1 and len(names) == 1 and all(value in self.graph.params for value in inputs):
            # a weight folded through a transpose or reshape keeps its state-dict name visible
            names = [f"{sources[0].name}.{op.split('.')[-1]}"]
        return self.builder.ops(op, inputs, attrs, name=self.name, output_names=names)

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        outputs = self.ops(op, inputs, attrs)
        if len(outputs) != 1:
            raise OptcError(f"{op} has {len(outputs)} outputs")
        return outputs[0]

    def const(self, array: Any, dtype: str) -> Value:
        """A constant; scalars are shared so a graph holds one param per distinct scalar."""
        array = np.asarray(array, dtype=dtype)
        if array.ndim:
            return self.graph.add_param(f"{self.name}_const", array)
        key = (dtype, array.tobytes())
        if key not in self._scalars:
            self._scalars[key] = self.graph.add_param("scalar", array)
        return self._scalars[key]

    def array(self, value: Value) -> np.ndarray | None:
        """The constant behind ``value``, or None when it is computed at run time."""
        return self.graph.params.get(value)

    def tensor(self, operand: Operand, dtype: str) -> Value:
        """``operand`` as a Value of ``dtype``: scalars become constants, tensors are cast."""
        if isinstance(operand, Value):
            return self.cast(operand, dtype)
        return self.const(operand, dtype)

    def cast(self, value: Value, dtype: str) -> Value:
        return value if value.dtype == dtype else self.op("math.cast", value, dtype=dtype)

    def reshape(self, value: Value, shape: Sequence[Dim]) -> Value:
        """Reshape to ``shape`` exactly as torch inferred it; derived dims stay expressions (``16*batch``)."""
        if tuple(value.shape) == tuple(shape):
            return value
        return self.op("tensor.reshape", value, shape=tuple(shape))


# ---- the table ---------------------------------------------------------------------------------------

Converter = Callable[..., Any]


@dataclass(frozen=True)
class Registration:
    function: Converter
    accepts: frozenset[str]


CONVERTERS: dict[Any, Registration] = {}


def converts(*targets: Any) -> Callable[[Converter], Converter]:
    """Register ``function`` for these ATen overloads (missing ones, from older torch, are skipped)."""

    def register(function: Converter) -> Converter:
        parameters = inspect.signature(function).parameters
        accepts = frozenset(name for name in parameters if name != "ctx")
        for target in targets:
            if target is not None:
                CONVERTERS[target] = Registration(function, accepts)
        return function

    return register


def _overload(packet: str, overload: str = "default") -> Any:
    """An ATen overload by name, or None when this torch does not have it."""
    return getattr(getattr(aten, packet, None), overload, None)


def schema_arguments(target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Arguments by schema name, defaults filled in."""
    named: dict[str, Any] = {}
    for position, argument in enumerate(target._schema.arguments):
        if position < len(args) and not argument.kwarg_only:
            named[argument.name] = args[position]
        elif argument.name in kwargs:
            named[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            named[argument.name] = argument.default_value
        else:
            named[argument.name] = None
    return named


def call(ctx: Context, target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    registration = CONVERTERS[target]
    named = schema_arguments(target, args, kwargs)
    return registration.function(ctx, **{k: v for k, v in named.items() if k in registration.accepts})


# ---- helpers ------------------------------------------------------------------------------------------


def _promoted(left: Operand, right: Operand) -> str:
    """torch's result dtype for two operands (rank-0 tensors and Python scalars rank lowest)."""

    def sample(operand: Operand) -> Any:
        if isinstance(operand, Value):
            shape = (1,) * operand.type.rank
            return torch.empty(shape, dtype=OPTC_DTYPES[operand.dtype])
        return operand

    return optc_dtype(torch.result_type(sample(left), sample(right)))


def _binary(ctx: Context, op: str, left: Operand, right: Operand, dtype: str | None = None) -> Value:
    dtype = dtype or _promoted(left, right)
    return ctx.op(op, ctx.tensor(left, dtype), ctx.tensor(right, dtype))


def _axis(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def _axes(dim: Any, rank: int) -> tuple[int, ...] | None:
    """Reduction axes; None or an empty list mean every axis."""
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    if not dims:
        return None
    return tuple(sorted(_axis(d, rank) for d in dims))


def _static(value: Value, what: str) -> tuple[int, ...]:
    if not value.type.is_static:
        raise Unsupported(f"{what} needs static shapes, got {value.type}")
    return value.type.static_shape()


def _ints(values: Any, count: int) -> tuple[int, ...]:
    """A size list as ATen passes it (one int for every axis, or one per axis)."""
    items = [values] if isinstance(values, int) else list(values)
    if len(items) == 1 and count > 1:
        items = items * count
    return tuple(int(item) for item in items)


def _numel(dims: Sequence[int]) -> int:
    return int(np.prod(dims, dtype=np.int64))


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


# ---- creation -------------------------------------------------------------------------------------------


def _filled(ctx: Context, fill: Scalar) -> Value:
    shape = ctx.out_shape()
    dtype = ctx.out_dtype()
    if not all(isinstance(dim, int) for dim in shape):
        raise Unsupported(f"a constant of symbolic shape {shape}")
    scalar = ctx.const(fill, dtype)
    if not shape:
        return scalar
    return ctx.op("tensor.expand", scalar, shape=shape)


@converts(aten.full_like.default)
def full_like(ctx: Context, fill_value: Scalar) -> Value:
    return _filled(ctx, fill_value)


@converts(aten.empty.memory_format, aten.empty_strided.default)
def empty(ctx: Context) -> Value:
    # empty tensors hold garbage in torch; zeros are one valid choice and keep runs reproducible
    return _filled(ctx, 0)


@converts(aten.full.default)
def full(ctx: Context, fill_value: Scalar) -> Value:
    return _filled(ctx, fill_value)


@converts(aten.scalar_tensor.default)
def scalar_tensor(ctx: Context, s: Scalar) -> Value:
    return ctx.const(s, ctx.out_dtype())


# ---- shape and data movement ---------------------------------------------------------------------------


@converts(aten.view.default, aten.unsqueeze.default, aten.squeeze.dims)
def reshape(ctx: Context, self: Value) -> Value:
    """Every view is a reshape to the shape torch inferred for it."""
    return ctx.reshape(self, ctx.out_shape())


@converts(aten.permute.default)
def permute(ctx: Context, self: Value, dims: Sequence[int]) -> Value:
    perm = tuple(_axis(d, self.type.rank) for d in dims)
    if perm == tuple(range(self.type.rank)):
        return self
    return ctx.op("tensor.transpose", self, perm=perm)


@converts(aten.expand.default)
def expand(ctx: Context, self: Value) -> Value:
    shape = ctx.out_shape()
    if tuple(shape) == tuple(self.shape):
        return self
    return ctx.op("tensor.expand", self, shape=shape)


@converts(aten.cat.default)
def cat(ctx: Context, tensors: Sequence[Value], dim: int = 0) -> Value:
    dtype = ctx.out_dtype()
    rank = ctx.meta().dim()
    # torch lets empty 1-d tensors join anything; they add nothing
    parts = [ctx.cast(t, dtype) for t in tensors if not (t.type.is_static and t.type.numel == 0)]
    if not parts:
        return _filled(ctx, 0)
    if len(parts) == 1:
        return parts[0]
    return ctx.op("tensor.concat", *parts, axis=_axis(dim, rank))


def _split_sizes(ctx: Context, self: Value, dim: int) -> tuple[int, tuple[int, ...]]:
    axis = _axis(dim, self.type.rank)
    sizes = tuple(ctx.out_shape(index)[axis] for index in range(len(ctx.meta())))
    if not all(isinstance(size, int) for size in sizes):
        raise Unsupported("split along a symbolic dim")
    return axis, sizes  # type: ignore[return-value]


@converts(aten.split_with_sizes.default)
def split(ctx: Context, self: Value, dim: int = 0) -> list[Value]:
    axis, sizes = _split_sizes(ctx, self, dim)
    if len(sizes) == 1:
        return [self]
    return ctx.ops("tensor.split", [self], {"axis": axis, "sizes": sizes},
                   output_names=[f"{ctx.name}_{index}" for index in range(len(sizes))])


INT64_MAX = 2**63 - 1


@converts(aten.slice.Tensor)
def slice_(ctx: Context, self: Value, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1) -> Value:
    axis = _axis(dim, self.type.rank)
    size = self.shape[axis]
    start = 0 if start is None else start
    end = INT64_MAX if end is None else end
    if not all(isinstance(x, int) for x in (start, end, step)):
        raise Unsupported("slice bounds computed at run time")
    if isinstance(size, int):
        start, end, step = slice(start, end, step).indices(size)
        if (start, end, step) == (0, size, 1):
            return self
    elif (start, end, step) == (0, INT64_MAX, 1):
        return self
    return ctx.op("tensor.slice", self, starts=(start,), ends=(end,), axes=(axis,), steps=(step,))


@converts(aten.select.int)
def select(ctx: Context, self: Value, dim: int, index: int) -> Value:
    axis = _axis(dim, self.type.rank)
    size = self.shape[axis]
    if not isinstance(index, int):
        raise Unsupported("select at an index computed at run time")
    if index < 0:
        if not isinstance(size, int):
            raise Unsupported("negative select on a symbolic dim")
        index += size
    picked = ctx.op("tensor.slice", self, starts=(index,), ends=(index + 1,), axes=(axis,))
    return ctx.reshape(picked, ctx.out_shape())


@converts(aten.index_select.default)
def index_select(ctx: Context, self: Value, dim: int, index: Value) -> Value:
    return ctx.op("tensor.gather", self, _index_dtype(ctx, index), axis=_axis(dim, self.type.rank))


@converts(aten.embedding.default)
def embedding(ctx: Context, weight: Value, indices: Value) -> Value:
    return ctx.op("tensor.gather", weight, _index_dtype(ctx, indices), axis=0)


def _index_dtype(ctx: Context, index: Value) -> Value:
    return index if index.dtype in ("int32", "int64") else ctx.cast(index, "int64")


def _broadcast_index(ctx: Context, indices: Sequence[Value], dims: Sequence[int]) -> Value:
    """One flat int64 index into the merged axes of ``dims``: sum of index * stride, negatives wrapped."""
    flat: Value | None = None
    stride = 1
    for index, size in reversed(list(zip(indices, dims))):
        index = ctx.cast(index, "int64")
        if ctx.array(index) is None or np.any(ctx.array(index) < 0):
            index = ctx.op("math.mod", index, ctx.const(size, "int64"))
        term = index if stride == 1 else ctx.op("math.mul", index, ctx.const(stride, "int64"))
        flat = term if flat is None else ctx.op("math.add", term, flat)
        stride *= size
    assert flat is not None
    return flat


@converts(aten.index.Tensor)
def index(ctx: Context, self: Value, indices: Sequence[Value | None]) -> Value:
    """Advanced indexing: the indexed axes merge into one, indexed by a flat broadcast index."""
    positions = [axis for axis, item in enumerate(indices) if item is not None]
    tensors = [item for item in indices if item is not None]
    if any(item.dtype == "bool" for item in tensors):
        raise Unsupported("indexing with a boolean mask (data-dependent shape)")
    if len(positions) == 1:
        return ctx.op("tensor.gather", self, _index_dtype(ctx, tensors[0]), axis=positions[0])
    shape = _static(self, "indexing with several index tensors")
    rank = len(shape)
    first = positions[0]
    if positions != list(range(first, first + len(positions))):
        # separated index tensors: torch puts the indexed dims first
        rest = [axis for axis in range(rank) if axis not in positions]
        self = ctx.op("tensor.transpose", self, perm=tuple(positions + rest))
        shape = tuple(shape[axis] for axis in positions + rest)
        positions, first = list(range(len(positions))), 0
    last = first + len(positions)
    merged = ctx.reshape(self, shape[:first] + (_numel(shape[first:last]),) + shape[last:])
    flat = _broadcast_index(ctx, tensors, shape[first:last])
    return ctx.op("tensor.gather", merged, flat, axis=first)


@converts(aten.gather.default)
def gather(ctx: Context, self: Value, dim: int, index: Value) -> Value:
    """torch.gather (ONNX GatherElements) as advanced indexing with aranges on the other axes."""
    shape = _static(self, "gather")
    index_shape = _static(index, "gather")
    axis = _axis(dim, len(shape))
    indices = []
    for position in range(len(shape)):
        if position == axis:
            indices.append(index)
        else:
            ramp = np.arange(index_shape[position], dtype=np.int64).reshape(
                tuple(-1 if p == position else 1 for p in range(len(shape))))
            indices.append(ctx.const(ramp, "int64"))
    flat_input = ctx.reshape(self, (_numel(shape),))
    return ctx.op("tensor.gather", flat_input, _broadcast_index(ctx, indices, shape), axis=0)


@converts(aten.constant_pad_nd.default)
def constant_pad_nd(ctx: Context, self: Value, pad: Sequence[int], value: Scalar = 0) -> Value:
    rank = self.type.rank
    begins, ends = [0] * rank, [0] * rank
    for pair in range(len(pad) // 2):  # torch lists pads from the last axis backwards
        axis = rank - 1 - pair
        begins[axis], ends[axis] = int(pad[2 * pair]), int(pad[2 * pair + 1])
    if not any(begins) and not any(ends):
        return self
    return ctx.op("tensor.pad", self, pads=tuple(begins + ends), mode="constant", value=float(value))


@converts(aten.repeat.default)
def repeat(ctx: Context, self: Value, repeats: Sequence[int]) -> Value:
    repeats = tuple(int(r) for r in repeats)
    if len(repeats) > self.type.rank:
        self = ctx.reshape(self, (1,) * (len(repeats) - self.type.rank) + tuple(self.shape))
    if all(r == 1 for r in repeats):
        return self
    return ctx.op("tensor.tile", self, repeats=repeats)


@converts(aten.flip.default)
def flip(ctx: Context, self: Value, dims: Sequence[int]) -> Value:
    shape = _static(self, "flip")
    axes = tuple(_axis(d, len(shape)) for d in dims)
    if not axes:
        return self
    return ctx.op("tensor.slice", self, starts=tuple(shape[a] - 1 for a in axes),
                  ends=tuple(-shape[a] - 1 for a in axes), axes=axes, steps=(-1,) * len(axes))


@converts(aten.upsample_nearest2d.vec)
def upsample_nearest(ctx: Context, input: Value) -> Value:
    """Integer-factor nearest upsampling: each pixel repeated, as reshape -> expand -> reshape."""
    shape = _static(input, "nearest upsampling")
    out_shape = ctx.out_shape()
    factors = []
    for size, out in zip(shape[2:], out_shape[2:]):
        if not isinstance(out, int) or out % size:
            raise Unsupported(f"nearest upsampling from {shape} to {out_shape} (only integer factors)")
        factors.append(out // size)
    interleaved = tuple(shape[:2]) + tuple(d for size in shape[2:] for d in (size, 1))
    expanded = tuple(shape[:2]) + tuple(d for size, f in zip(shape[2:], factors) for d in (size, f))
    wide = ctx.op("tensor.expand", ctx.reshape(input, interleaved), shape=expanded)
    return ctx.reshape(wide, out_shape)


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


# ---- linear algebra --------------------------------------------------------------------------------------


@converts(aten.mm.default, aten.bmm.default)
def matmul(ctx: Context, self: Value, mat2: Value) -> Value:
    dtype = ctx.out_dtype()
    return ctx.op("linalg.matmul", ctx.cast(self, dtype), ctx.cast(mat2, dtype))


def _affine(ctx: Context, product: Value, bias: Value | None, beta: Scalar, alpha: Scalar) -> Value:
    if alpha != 1:
        product = _binary(ctx, "math.mul", product, alpha, product.dtype)
    if bias is None or beta == 0:
        return product
    bias = ctx.cast(bias, product.dtype)
    if beta != 1:
        bias = _binary(ctx, "math.mul", bias, beta, product.dtype)
    return ctx.op("math.add", product, bias)


@converts(aten.addmm.default, aten.addmv.default)
def addmm(ctx: Context, self: Value, beta: Scalar = 1, alpha: Scalar = 1, mat1: Value | None = None,
          mat2: Value | None = None, mat: Value | None = None, vec: Value | None = None) -> Value:
    left, right = (mat1, mat2) if mat1 is not None else (mat, vec)
    assert left is not None and right is not None
    dtype = ctx.out_dtype()
    product = ctx.op("linalg.matmul", ctx.cast(left, dtype), ctx.cast(right, dtype))
    return _affine(ctx, product, self, beta, alpha)


# ---- attention ---------------------------------------------------------------------------------------------

# kept whole by the importer's decomposition table: torch's own decomposition of it can produce
# views that fail on the strides the flash kernel's meta reports (GPT-2 with SDPA), and one
# converter gives passes a single, predictable attention pattern to recognize
PRESERVED: tuple[Any, ...] = (aten.scaled_dot_product_attention.default,)


@converts(aten.scaled_dot_product_attention.default)
def scaled_dot_product_attention(ctx: Context, query: Value, key: Value, value: Value, attn_mask: Value | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Value:
    """softmax(q @ k^T * scale + mask) @ v, with rows that mask everything giving zeros (torch's rule)."""
    if dropout_p:
        raise Unsupported(f"attention dropout p={dropout_p} (call model.eval())")
    dtype = ctx.out_dtype()
    query, key, value = (ctx.cast(item, dtype) for item in (query, key, value))
    head_dim = query.shape[-1]
    if scale is None:
        if not isinstance(head_dim, int):
            raise Unsupported("attention over a symbolic head size without an explicit scale")
        scale = 1.0 / math.sqrt(head_dim)
    if enable_gqa and query.shape[-3] != key.shape[-3]:
        key, value = _repeat_heads(ctx, key, query.shape[-3]), _repeat_heads(ctx, value, query.shape[-3])
    rank = key.type.rank
    key_t = ctx.op("tensor.transpose", key, perm=tuple(range(rank - 2)) + (rank - 1, rank - 2))
    scores = _binary(ctx, "math.mul", ctx.op("linalg.matmul", query, key_t), float(scale), dtype)
    masked = False
    if is_causal:
        rows, cols = query.shape[-2], key.shape[-2]
        if not isinstance(rows, int) or not isinstance(cols, int):
            raise Unsupported("causal attention over a symbolic sequence length")
        causal = np.where(np.tril(np.ones((rows, cols), dtype=bool)), 0.0, -np.inf)
        scores = ctx.op("math.add", scores, ctx.const(causal, dtype))
    if attn_mask is not None:
        masked = True
        if attn_mask.dtype == "bool":
            scores = ctx.op("math.where", attn_mask, scores, ctx.const(-np.inf, dtype))
        else:
            scores = ctx.op("math.add", scores, ctx.cast(attn_mask, dtype))
    weights = ctx.op("nn.softmax", scores, axis=-1)
    if masked:
        # a query that may attend to nothing gets zeros, not the NaNs of softmax over all -inf
        attends = ctx.op("math.not", ctx.op("math.equal", scores, ctx.const(-np.inf, dtype)))
        any_key = ctx.op("reduce.max", ctx.cast(attends, "int32"), axes=(-1,), keepdims=True)
        weights = ctx.op("math.where", ctx.cast(any_key, "bool"), weights, ctx.const(0, dtype))
    return ctx.op("linalg.matmul", weights, value)


def _repeat_heads(ctx: Context, value: Value, heads: Dim) -> Value:
    """(B, Hk, S, E) -> (B, heads, S, E), each key/value head repeated for its query group."""
    shape = _static(value, "grouped-query attention")
    if not isinstance(heads, int) or heads % shape[-3]:
        raise Unsupported(f"grouped-query attention with {heads} query heads and {shape[-3]} key heads")
    group = heads // shape[-3]
    spread = ctx.reshape(value, shape[:-2] + (1,) + shape[-2:])
    wide = ctx.op("tensor.expand", spread, shape=shape[:-2] + (group,) + shape[-2:])
    return ctx.reshape(wide, shape[:-3] + (heads,) + shape[-2:])


# ---- neural-network ops ----------------------------------------------------------------------------------


@converts(aten.convolution.default)
def convolution(ctx: Context, input: Value, weight: Value, bias: Value | None, stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], transposed: bool, output_padding: Sequence[int],
                groups: int) -> Value:
    rank = weight.type.rank - 2
    if isinstance(padding, str):
        raise Unsupported(f"convolution padding='{padding}'")
    pads = _ints(padding, rank)
    attrs: dict[str, Any] = {
        "strides": _ints(stride, rank), "pads": pads + pads, "dilations": _ints(dilation, rank), "groups": int(groups),
    }
    inputs = [input, ctx.cast(weight, input.dtype)] + ([ctx.cast(bias, input.dtype)] if bias is not None else [])
    if transposed:
        attrs["output_padding"] = _ints(output_padding, rank)
        return ctx.op("nn.conv_transpose", *inputs, **attrs)
    return ctx.op("nn.conv", *inputs, **attrs)


def _channel_params(ctx: Context, x: Value, weight: Value | None, bias: Value | None) -> tuple[Value, Value]:
    channels = x.shape[1]
    if not isinstance(channels, int):
        raise Unsupported("normalization over a symbolic channel count")
    scale = ctx.cast(weight, x.dtype) if weight is not None else ctx.const(np.ones(channels), x.dtype)
    shift = ctx.cast(bias, x.dtype) if bias is not None else ctx.const(np.zeros(channels), x.dtype)
    return scale, shift


@converts(aten._native_batch_norm_legit_no_training.default, aten._native_batch_norm_legit.default,
          aten.native_batch_norm.default, _overload("_native_batch_norm_legit_functional"))
def batch_norm(ctx: Context, input: Value, weight: Value | None, bias: Value | None, running_mean: Value | None,
               running_var: Value | None, eps: float, training: bool = False) -> list[Any]:
    if training or running_mean is None or running_var is None:
        raise Unsupported("batch norm in training mode (call model.eval())")
    scale, shift = _channel_params(ctx, input, weight, bias)
    out = ctx.op("nn.batch_norm", input, scale, shift, ctx.cast(running_mean, input.dtype),
                 ctx.cast(running_var, input.dtype), epsilon=float(eps))
    return [out, Unavailable("batch-norm saved mean"), Unavailable("batch-norm saved inverse std")]


@converts(aten.native_layer_norm.default)
def layer_norm(ctx: Context, input: Value, normalized_shape: Sequence[int], weight: Value | None, bias: Value | None,
               eps: float) -> list[Any]:
    shape = tuple(int(d) for d in normalized_shape)
    scale = ctx.cast(weight, input.dtype) if weight is not None else ctx.const(np.ones(shape), input.dtype)
    inputs = [input, scale] + ([ctx.cast(bias, input.dtype)] if bias is not None else [])
    out = ctx.op("nn.layer_norm", *inputs, axis=-len(shape), epsilon=float(eps))
    return [out, Unavailable("layer-norm mean"), Unavailable("layer-norm inverse std")]


@converts(aten.native_group_norm.default)
def group_norm(ctx: Context, input: Value, weight: Value | None, bias: Value | None, group: int, eps: float) -> list[Any]:
    scale, shift = _channel_params(ctx, input, weight, bias)
    out = ctx.op("nn.group_norm", input, scale, shift, num_groups=int(group), epsilon=float(eps))
    return [out, Unavailable("group-norm mean"), Unavailable("group-norm inverse std")]


@converts(aten._softmax.default, aten._log_softmax.default)
def softmax(ctx: Context, self: Value, dim: int) -> Value:
    log = ctx.node is not None and ctx.node.target is aten._log_softmax.default
    x = ctx.cast(self, ctx.out_dtype())
    return ctx.op("nn.log_softmax" if log else "nn.softmax", x, axis=_axis(dim, x.type.rank))


def _pool_attrs(rank: int, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> dict[str, Any]:
    kernel = _ints(kernel_size, rank)
    strides = _ints(stride, rank) if stride not in (None, [], ()) else kernel
    pads = _ints(padding, rank)
    return {"kernel": kernel, "strides": strides, "pads": pads + pads, "dilations": _ints(dilation, rank),
            "ceil_mode": bool(ceil_mode)}


@converts(aten.max_pool2d_with_indices.default, aten.max_pool3d_with_indices.default)
def max_pool(ctx: Context, self: Value, kernel_size: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1,
             ceil_mode: bool = False) -> Any:
    rank = self.type.rank - 2
    out = ctx.op("nn.max_pool", self, **_pool_attrs(rank, kernel_size, stride, padding, dilation, ceil_mode))
    return [out, Unavailable("max-pool indices")]


@converts(aten.avg_pool2d.default, aten.avg_pool3d.default)
def avg_pool(ctx: Context, self: Value, kernel_size: Any, stride: Any = (), padding: Any = 0, ceil_mode: bool = False,
             count_include_pad: bool = True, divisor_override: int | None = None) -> Value:
    if divisor_override is not None:
        raise Unsupported(f"avg_pool with divisor_override={divisor_override}")
    rank = self.type.rank - 2
    attrs = _pool_attrs(rank, kernel_size, stride, padding, 1, ceil_mode)
    return ctx.op("nn.avg_pool", self, count_include_pad=bool(count_include_pad), **attrs)


def _adaptive_windows(self: Value, output_size: Sequence[int]) -> tuple[tuple[Dim, ...], tuple[int, ...]]:
    """(input spatial dims, output spatial dims) of an adaptive pooling."""
    return tuple(self.shape[2:]), _ints(output_size, self.type.rank - 2)


@converts(aten._adaptive_avg_pool2d.default, aten._adaptive_avg_pool3d.default)
def adaptive_avg_pool(ctx: Context, self: Value, output_size: Sequence[int]) -> Value:
    spatial, out = _adaptive_windows(self, output_size)
    axes = tuple(range(2, self.type.rank))
    if all(o == 1 for o in out):
        return ctx.op("reduce.mean", self, axes=axes, keepdims=True)
    if all(isinstance(s, int) and s % o == 0 for s, o in zip(spatial, out)):
        kernel = tuple(int(s) // o for s, o in zip(spatial, out))
        return ctx.op("nn.avg_pool", self, kernel=kernel, strides=kernel)
    raise Unsupported(f"adaptive average pooling from {spatial} to {out} (only divisible sizes)")


@converts(aten.adaptive_max_pool2d.default, aten.adaptive_max_pool3d.default)
def adaptive_max_pool(ctx: Context, self: Value, output_size: Sequence[int]) -> list[Any]:
    spatial, out = _adaptive_windows(self, output_size)
    if all(o == 1 for o in out):
        pooled = ctx.op("reduce.max", self, axes=tuple(range(2, self.type.rank)), keepdims=True)
    elif all(isinstance(s, int) and s % o == 0 for s, o in zip(spatial, out)):
        kernel = tuple(int(s) // o for s, o in zip(spatial, out))
        pooled = ctx.op("nn.max_pool", self, kernel=kernel, strides=kernel)
    else:
        raise Unsupported(f"adaptive max pooling from {spatial} to {out} (only divisible sizes)")
    return [pooled, Unavailable("max-pool indices")]


# ---- ops that produce nothing optc needs ----------------------------------------------------------------

IGNORED: frozenset[Any] = frozenset(
    target for target in (
        aten._assert_tensor_metadata.default, _overload("_assert_scalar"), _overload("_assert_async"),
        _overload("_assert_async", "msg"), _overload("sym_constrain_range"), _overload("sym_constrain_range_for_size"),
        _overload("_functional_sym_constrain_range"), _overload("_functional_sym_constrain_range_for_size"),
        _overload("_functional_assert_async", "msg"), _overload("_functional_assert_scalar"),
    ) if target is not None
)

__all__ = ["CONVERTERS", "IGNORED", "PRESERVED", "Context", "Unavailable", "Unsupported", "add_param", "call", "converts", "optc_dtype"]
