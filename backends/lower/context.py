"""What a lowering function gets besides its node: the block builder and small emit helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tvm import relax, tirx

from ...errors import LoweringError
from ...ir.graph import Node
from ...ir.types import Dim

ShapeDim = Any  # an int or a tirx.PrimExpr


class LowerContext:
    """Emits Relax bindings for one graph; symbolic dims map to one ``tirx.Var`` each."""

    def __init__(self, builder: relax.BlockBuilder) -> None:
        self.builder = builder
        self.symbols: dict[str, tirx.Var] = {}
        self.node: Node | None = None  # the node being lowered, for error messages
        self.lowered: dict[int, relax.Expr] = {}  # id(graph value) -> its Relax expression, as lowered so far

    # ---- emitting ------------------------------------------------------------------------------
    def emit(self, expr: relax.Expr, name: str = "") -> relax.Var:
        return self.builder.emit(expr, name_hint=name)

    def emit_te(self, compute: Callable[..., Any], *args: Any, name: str, **kwargs: Any) -> relax.Var:
        """Emit a TE computation as its own PrimFunc (for ops Relax has no operator for)."""
        return self.builder.emit_te(compute, *args, primfunc_name_hint=name, **kwargs)

    def expr_of(self, value: Any) -> relax.Expr:
        """The Relax expression a graph value (lowered before this node) became."""
        return self.lowered[id(value)]

    def const(self, value: float | int | bool, dtype: str) -> relax.Expr:
        """A 0-d constant of ``dtype`` (always pass the dtype: relax.const narrows int64 arrays)."""
        return relax.const(np.array(value).astype(dtype), dtype)

    # ---- shapes --------------------------------------------------------------------------------
    def dim(self, dim: Dim) -> ShapeDim:
        """An IR dim as a Relax shape dim: ints stay ints, a symbol name becomes its tirx.Var."""
        if isinstance(dim, int):
            return dim
        if dim not in self.symbols:
            raise self.error(
                f"symbolic dim '{dim}' is not a dim of any graph input; only input symbols can be "
                "named in attributes (bind the shape to static sizes first)"
            )
        return self.symbols[dim]

    def declare_dim(self, dim: Dim) -> ShapeDim:
        """Like ``dim`` but creates the variable for a new symbol (graph inputs declare them)."""
        if isinstance(dim, str) and dim not in self.symbols:
            self.symbols[dim] = tirx.Var(dim, "int64")
        return self.dim(dim)

    def known_dims(self, dims: Sequence[Dim]) -> list[ShapeDim] | None:
        """``dims`` as Relax dims, or None when one is a symbol no graph input declares."""
        if any(isinstance(dim, str) and dim not in self.symbols for dim in dims):
            return None
        return [self.dim(dim) for dim in dims]

    def type_of(self, expr: relax.Expr) -> relax.TensorType:
        """The Relax type of ``expr``, inferring it first for an expression not emitted yet."""
        return self.builder.normalize(expr).ty

    def shape_of(self, expr: relax.Expr) -> list[ShapeDim]:
        """The dims of a tensor expression, ints where static."""
        dims = []
        for value in self.type_of(expr).shape.values:
            dims.append(int(value.value) if isinstance(value, tirx.IntImm) else value)
        return dims

    def dtype_of(self, expr: relax.Expr) -> str:
        return str(self.type_of(expr).dtype)

    def rank_of(self, expr: relax.Expr) -> int:
        return int(self.type_of(expr).ndim)

    # ---- errors ----------------------------------------------------------------------------------
    def error(self, message: str) -> LoweringError:
        where = f"node {self.node.name} ({self.node.op}): " if self.node is not None else ""
        return LoweringError(where + message)


def per_axis(values: Sequence[int] | None, rank: int, default: int) -> tuple[int, ...]:
    """An optional per-spatial-axis attribute with its default filled in."""
    return tuple(values) if values else (default,) * rank
