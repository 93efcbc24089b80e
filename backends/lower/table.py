"""The lowering table: one entry per registry op, mapping a node to the Relax that computes it.

A lowering is a function ``(ctx, node, args) -> expr | list[expr]``: ``args`` are the Relax
expressions of the node's inputs, in order, and the result gives one expression per output.
Family files register theirs with ``@lowers("nn.conv")``; nothing else dispatches on op names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Union

from tvm import relax

from ...errors import LoweringError
from ...ir.ops import all_ops

if TYPE_CHECKING:
    from ...ir.graph import Node
    from .context import LowerContext

LoweringResult = Union[relax.Expr, Sequence[relax.Expr]]
Lowering = Callable[["LowerContext", "Node", list[relax.Expr]], LoweringResult]

LOWERINGS: dict[str, Lowering] = {}


def lowers(*op_names: str) -> Callable[[Lowering], Lowering]:
    """Register the decorated function as the lowering of every op in ``op_names``."""

    def register(function: Lowering) -> Lowering:
        for name in op_names:
            if name in LOWERINGS:
                raise ValueError(f"op {name} has two lowerings: {LOWERINGS[name].__name__} and {function.__name__}")
            LOWERINGS[name] = function
        return function

    return register


def lowering_for(node: "Node") -> Lowering:
    """The lowering of ``node``'s op; a LoweringError naming op and node when there is none."""
    try:
        return LOWERINGS[node.op]
    except KeyError:
        raise LoweringError(
            f"node {node.name} uses op '{node.op}', which has no TVM lowering; add one with "
            f"@lowers('{node.op}') in optc/backends/lower/ (the registry has it, the backend does not yet)"
        ) from None


def missing_lowerings() -> list[str]:
    """Registry ops that have no lowering (empty when the table covers the registry)."""
    return sorted(name for name in all_ops() if name not in LOWERINGS)
