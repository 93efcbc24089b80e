"""Lowerings of the state-buffer ops (``cache.*``)."""

from __future__ import annotations

from tvm import relax, te, tirx

from ...ir.graph import Node
from .context import LowerContext
from .table import lowers


@lowers("cache.update")
def lower_cache_update(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    """One kernel: each cache element reads the update where it lies in the written window."""
    axis = node.attrs["axis"] % len(node.inputs[0].shape)
    return ctx.emit_te(_update_te, *args, axis=axis, name="cache_update")


def _update_te(cache: te.Tensor, update: te.Tensor, position: te.Tensor, *, axis: int) -> te.Tensor:
    count = update.shape[axis]
    start_index = (0,) * len(position.shape)

    def element(*index):
        start = position[start_index].astype("int64")
        offset = index[axis].astype("int64") - start
        inside = tirx.all(offset >= 0, offset < count)
        # clamp the read so it stays in bounds where the select does not take it
        source = list(index)
        source[axis] = tirx.if_then_else(inside, offset, tirx.const(0, "int64"))
        return tirx.if_then_else(inside, update[tuple(source)], cache[index])

    return te.compute(cache.shape, element, name="cache_update")
