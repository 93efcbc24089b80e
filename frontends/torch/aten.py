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

This module holds the shared core (the context, the table, the helpers); the converters themselves
live in ``converters/``, one module per op family, and register on import.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

from ...errors import OptcError
from ...ir.builder import Builder
from ...ir.graph import Graph, Value
from ...ir.types import Dim

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


# ---- ops the importer keeps whole ----------------------------------------------------------------------

# kept whole by the importer's decomposition table: torch's own decomposition of it can produce
# views that fail on the strides the flash kernel's meta reports (GPT-2 with SDPA), and one
# converter gives passes a single, predictable attention pattern to recognize
PRESERVED: tuple[Any, ...] = (aten.scaled_dot_product_attention.default,)


# ---- ops that produce nothing optc needs ----------------------------------------------------------------

IGNORED: frozenset[Any] = frozenset(
    target for target in (
        aten._assert_tensor_metadata.default, _overload("_assert_scalar"), _overload("_assert_async"),
        _overload("_assert_async", "msg"), _overload("sym_constrain_range"), _overload("sym_constrain_range_for_size"),
        _overload("_functional_sym_constrain_range"), _overload("_functional_sym_constrain_range_for_size"),
        _overload("_functional_assert_async", "msg"), _overload("_functional_assert_scalar"),
    ) if target is not None
)

__all__ = ["CONVERTERS", "IGNORED", "PRESERVED", "Context", "Unavailable", "Unsupported", "call", "converts", "optc_dtype"]
