"""Lowerings of the matrix-product family (``linalg.*``)."""

from __future__ import annotations

from tvm import relax
from tvm.relax import op as R

from ...ir.graph import Node
from .context import LowerContext
from .table import lowers


@lowers("linalg.matmul")
def lower_matmul(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    # Relax matmul has NumPy semantics: batch dims broadcast, rank-1 operands promote and squeeze
    return R.matmul(args[0], args[1])
