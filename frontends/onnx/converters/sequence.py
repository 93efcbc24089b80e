"""Sequence ONNX ops, resolved at import time.

A sequence is a ``SequenceValue`` (a tuple of tensor values) inside the importer; positions and
split sizes must be constants, so every SequenceAt picks a known tensor and no sequence reaches
the optc graph.
"""

from __future__ import annotations

import math

import numpy as np

from ....ir.graph import Value
from ..importer import ImportContext, OnnxNode, SequenceValue, converter
from .common import int_list, normalize_axes, reshape, shape_of


def _position(ctx: ImportContext, node: OnnxNode, index: int, length: int, default: int, inserting: bool = False) -> int:
    array = ctx.constant_input(node, index, "position")
    if array is None:
        return default
    position = int(np.asarray(array).reshape(-1)[0])
    high = length if inserting else length - 1
    if not -length <= position <= high:
        ctx.refuse(f"position {position} is outside a sequence of length {length}")
    return position + length if position < 0 else position


@converter("SequenceEmpty")
def convert_sequence_empty(ctx: ImportContext, node: OnnxNode) -> SequenceValue:
    return SequenceValue(())


@converter("SequenceConstruct")
def convert_sequence_construct(ctx: ImportContext, node: OnnxNode) -> SequenceValue:
    return SequenceValue(tuple(ctx.value(name) for name in node.inputs if name))


@converter("SequenceAt")
def convert_sequence_at(ctx: ImportContext, node: OnnxNode) -> Value:
    items = ctx.sequence(node.inputs[0]).items
    if not node.has_input(1):
        ctx.refuse("position is required")
    return items[_position(ctx, node, 1, len(items), default=0)]


@converter("SequenceInsert")
def convert_sequence_insert(ctx: ImportContext, node: OnnxNode) -> SequenceValue:
    items = list(ctx.sequence(node.inputs[0]).items)
    tensor = ctx.input(node, 1)
    items.insert(_position(ctx, node, 2, len(items), default=len(items), inserting=True), tensor)
    return SequenceValue(tuple(items))


@converter("SequenceErase")
def convert_sequence_erase(ctx: ImportContext, node: OnnxNode) -> SequenceValue:
    items = list(ctx.sequence(node.inputs[0]).items)
    if not items:
        ctx.refuse("erase from an empty sequence")
    del items[_position(ctx, node, 1, len(items), default=len(items) - 1)]
    return SequenceValue(tuple(items))


@converter("SequenceLength")
def convert_sequence_length(ctx: ImportContext, node: OnnxNode) -> Value:
    return ctx.const(np.asarray(len(ctx.sequence(node.inputs[0]).items), dtype=np.int64), output=0)


@converter("SplitToSequence")
def convert_split_to_sequence(ctx: ImportContext, node: OnnxNode) -> SequenceValue:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    axis = normalize_axes(ctx, [int(node.attr("axis", 0))], len(shape))[0]
    dim = shape[axis]
    split = ctx.constant_input(node, 1, "split")
    squeeze = False
    if split is None:
        sizes = [1] * dim
        squeeze = not int(node.attr("keepdims", 1))
    elif np.asarray(split).ndim == 0:
        chunk = int(split)
        if chunk <= 0:
            ctx.refuse(f"split {chunk} is not positive")
        count = math.ceil(dim / chunk)
        sizes = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
    else:
        sizes = int_list(split)  # type: ignore[assignment]
        if sum(sizes) != dim:
            ctx.refuse(f"split sizes {sizes} do not add up to dim {dim}")
    if not sizes:
        return SequenceValue(())
    pieces = [x] if len(sizes) == 1 else ctx.op_many("tensor.split", [x], axis=axis, sizes=sizes)
    if squeeze:
        pieces = [reshape(ctx, piece, [d for i, d in enumerate(shape) if i != axis]) for piece in pieces]
    return SequenceValue(tuple(pieces))


@converter("ConcatFromSequence")
def convert_concat_from_sequence(ctx: ImportContext, node: OnnxNode) -> Value:
    items = list(ctx.sequence(node.inputs[0]).items)
    if not items:
        ctx.refuse("concatenating an empty sequence")
    axis = int(node.attr("axis"))
    if int(node.attr("new_axis", 0)):
        rank = items[0].type.rank + 1
        axis = normalize_axes(ctx, [axis], rank)[0]
        items = [reshape(ctx, item, [*shape_of(ctx, item)[:axis], 1, *shape_of(ctx, item)[axis:]]) for item in items]
    if len(items) == 1:
        return items[0]
    return ctx.emit("tensor.concat", *items, axis=axis)
