"""Per-op propagation rules of the channel analysis: one small function per op family.

A rule reads the ``Channels`` of its node's inputs from the ``Tracer``, couples ids that must be
removed together, freezes ids the op cannot slice (with the reason a user will read), records the
param slices that follow a carrier, and sets the ``Channels`` of the outputs. ``RULES`` maps op
names to rules; an op without a rule is ``opaque``: its input carriers freeze, its outputs carry
nothing. Rules never change the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...ir.graph import Node, Value
from ...ir.ops.elementwise import BINARY, UNARY_ANY, UNARY_FLOAT
from ...ir.ops.reduce import reduced_axes
from ...ir.ops.registry import normalize_axis
from ...ir.ops.tensor import slice_per_axis
from .groups import FIXED, ActivationSlice, Channels, Tracer, static_reshape

Rule = Callable[[Tracer, Node], None]
RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(function: Rule) -> Rule:
        for op in ops:
            RULES[op] = function
        return function

    return register


def opaque(tracer: Tracer, node: Node) -> None:
    """An op slicing does not understand: nothing it reads along a carrier may be removed."""
    for value in node.inputs:
        tracer.freeze(tracer.of(value), f"{node.op} {node.name} is not understood by slicing")
    for value in node.outputs:
        tracer.set(value, None)


def _pass_through(tracer: Tracer, node: Node, channels: Channels | None, axis: int | None = None) -> None:
    for value in node.outputs:
        tracer.set(value, None if channels is None else Channels(channels.axis if axis is None else axis, channels.ids))


def _full_along(value: Value, out: Value, out_axis: int) -> bool:
    """Whether ``value`` (broadcast against ``out``) has its own positions along ``out_axis``."""
    axis = out_axis - (out.type.rank - value.type.rank)
    return axis >= 0 and value.shape[axis] == out.shape[out_axis] and out.shape[out_axis] != 1


# ---- elementwise: broadcasting couples operands that are full along the carrier ---------------------

def _join_carriers(tracer, carriers: list, where: str):
    """The (axis, ids) an output's channels follow when several inputs carry channels into it.

    Inputs carrying channels on the same axis are coupled; one on another axis is frozen (slicing
    it would need two axes at once). None when no input carries channels.
    """
    if not carriers:
        return None
    axis, ids = carriers[0]
    for other_axis, other_ids in carriers[1:]:
        if other_axis == axis:
            ids = tracer.unify(ids, other_ids, f"{where} mixes fixed and sliced channels")
        else:
            tracer.freeze(other_ids, f"{where} crosses two channel axes")
    return axis, ids


@rule(*(f"math.{name}" for name in (*UNARY_FLOAT, *UNARY_ANY, *BINARY)), "math.cast", "math.not", "math.isnan",
      "math.where", "math.prelu")
def elementwise(tracer: Tracer, node: Node) -> None:
    out = node.outputs[0]
    carriers: list[tuple[int, np.ndarray]] = []  # (output axis, ids)
    for value in node.inputs:
        channels = tracer.of(value)
        if channels is None:
            continue
        out_axis = channels.axis + out.type.rank - value.type.rank
        if value.shape[channels.axis] != out.shape[out_axis]:
            tracer.freeze(channels, f"{node.name} broadcasts the channels of %{value.name} ({node.op})")
        else:
            carriers.append((out_axis, channels.ids))
    joined = _join_carriers(tracer, carriers, f"{node.name} ({node.op})")
    if joined is None:
        tracer.set(out, None)
        return
    axis, ids = joined
    for position, value in enumerate(node.inputs):
        if not _full_along(value, out, axis):
            continue
        offset = out.type.rank - value.type.rank
        channels = tracer.of(value)
        if tracer.is_param(value):
            tracer.record(node, position, axis - offset, ids, "other")
        elif channels is None or channels.axis + offset != axis:
            tracer.freeze(ids, f"{node.name} ({node.op}) combines the channels with %{value.name}, "
                               "which has none to slice")
    tracer.set(out, Channels(axis, ids))


# ---- data movement -------------------------------------------------------------------------------------

@rule("tensor.transpose")
def transpose(tracer: Tracer, node: Node) -> None:
    channels = tracer.of(node.inputs[0])
    if channels is None:
        _pass_through(tracer, node, None)
        return
    _pass_through(tracer, node, channels, list(node.attrs["perm"]).index(channels.axis))


@rule("tensor.reshape")
def reshape(tracer: Tracer, node: Node) -> None:
    """Carry ids through a reshape by reshaping them as the data is reshaped.

    Merging axes (flatten into a linear) gives each channel a block of features. Splitting the
    carrier over several axes makes the unit the slab of one index of one axis: the attention
    head axis when the reshape feeds attention (``find_head_axes``), else the outermost axis.
    """
    x, out = node.inputs[0], node.outputs[0]
    channels = tracer.of(x)
    if channels is None:
        tracer.set(out, None)
        return
    shapes = static_reshape(tuple(x.shape), tuple(out.shape))
    if shapes is None:
        tracer.freeze(channels, f"reshape {node.name} mixes symbolic dims {x.shape} -> {out.shape}")
        tracer.set(out, None)
        return
    in_shape, out_shape = shapes
    view = [1] * len(in_shape)
    view[channels.axis] = -1
    grid = np.broadcast_to(channels.ids.reshape(view), in_shape).reshape(out_shape)
    varying = [axis for axis, dim in enumerate(out_shape)
               if dim > 1 and (grid.max(axis=axis) != grid.min(axis=axis)).any()]
    if not varying:
        tracer.freeze(channels, f"reshape {node.name} of a single channel")
        tracer.set(out, None)
        return
    head_axis = tracer.head_axes.get(node.name)
    axis = head_axis if head_axis in varying else varying[0]
    if out.shape[axis] != out_shape[axis]:  # the channels merged with a symbolic dim
        tracer.freeze(channels, f"reshape {node.name} merges the channels with a symbolic dim: {out.shape}")
        tracer.set(out, None)
        return
    if len(varying) == 1:
        index = tuple(slice(None) if a == axis else 0 for a in range(len(out_shape)))
        tracer.set(out, Channels(axis, np.ascontiguousarray(grid[index])))
        return
    slabs = np.moveaxis(grid, axis, 0).reshape(out_shape[axis], -1)
    representatives = np.empty(out_shape[axis], dtype=np.int64)
    what = "heads" if head_axis == axis else f"blocks of {slabs.shape[1]}"
    for index, slab in enumerate(slabs):
        unique = np.unique(slab)
        tracer.union_all(unique, f"reshape {node.name} splits fixed and sliced channels into {what}")
        live = unique[unique >= 0]
        representatives[index] = live[0] if live.size else FIXED
    tracer.set(out, Channels(axis, representatives))


@rule("tensor.concat")
def concat(tracer: Tracer, node: Node) -> None:
    out = node.outputs[0]
    axis = normalize_axis(node.attrs["axis"], out.type.rank)
    inputs = [(value, tracer.of(value)) for value in node.inputs]
    if any(channels is not None and channels.axis == axis for _, channels in inputs):
        parts = []
        for value, channels in inputs:
            size = value.shape[axis]
            if channels is not None and channels.axis == axis:
                parts.append(channels.ids)
                continue
            tracer.freeze(channels, f"concat {node.name} joins channels with a tensor sliced on another axis")
            if not isinstance(size, int):
                for _, other in inputs:
                    tracer.freeze(other, f"concat {node.name} has a symbolic size")
                tracer.set(out, None)
                return
            parts.append(np.full(size, FIXED, dtype=np.int64))
        tracer.set(out, Channels(axis, np.concatenate(parts)))
        return
    # carriers off the concat axis: every input must be sliced alike there (a class token, say)
    elementwise_like(tracer, node, out)


def elementwise_like(tracer: Tracer, node: Node, out: Value) -> None:
    """Couple same-shaped operands position by position along their common carrier."""
    carriers = [(tracer.of(value), value) for value in node.inputs if tracer.of(value) is not None]
    if not carriers:
        tracer.set(out, None)
        return
    first, _ = carriers[0]
    ids = first.ids
    for channels, _ in carriers[1:]:
        if channels.axis == first.axis:
            ids = tracer.unify(ids, channels.ids, f"{node.name} mixes fixed and sliced channels")
        else:
            tracer.freeze(channels, f"{node.name} ({node.op}) crosses two channel axes")
    for position, value in enumerate(node.inputs):
        if value.shape[first.axis] != out.shape[first.axis] or out.shape[first.axis] == 1:
            continue
        channels = tracer.of(value)
        if tracer.is_param(value):
            tracer.record(node, position, first.axis, ids, "other")
        elif channels is None or channels.axis != first.axis:
            tracer.freeze(ids, f"{node.name} ({node.op}) joins the channels with %{value.name}, "
                               "which has none to slice")
    tracer.set(out, Channels(first.axis, ids))


@rule("tensor.split")
def split(tracer: Tracer, node: Node) -> None:
    x = node.inputs[0]
    channels = tracer.of(x)
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    if channels is None or channels.axis != axis:
        _pass_through(tracer, node, channels)
        return
    start = 0
    for value, size in zip(node.outputs, node.attrs["sizes"]):
        tracer.set(value, Channels(axis, channels.ids[start : start + size]))
        start += size


@rule("tensor.slice")
def slice_(tracer: Tracer, node: Node) -> None:
    x = node.inputs[0]
    channels = tracer.of(x)
    if channels is None:
        _pass_through(tracer, node, None)
        return
    item = slice_per_axis(x.type.rank, x.shape, node.attrs)[channels.axis]
    if item == slice(None):
        _pass_through(tracer, node, channels)
        return
    start, stop, step = item.indices(len(channels.ids))
    if step != 1:
        tracer.freeze(channels, f"slice {node.name} takes every {step}th channel")
        _pass_through(tracer, node, None)
        return
    tracer.set(node.outputs[0], Channels(channels.axis, channels.ids[start:stop]))


@rule("tensor.gather")
def gather(tracer: Tracer, node: Node) -> None:
    x, indices = node.inputs
    tracer.freeze(tracer.of(indices), f"gather {node.name} uses sliced channels as indices")
    channels = tracer.of(x)
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    if channels is None:
        _pass_through(tracer, node, None)
    elif channels.axis == axis:
        tracer.freeze(channels, f"gather {node.name} picks channels by index")
        _pass_through(tracer, node, None)
    else:
        shift = 0 if channels.axis < axis else indices.type.rank - 1
        _pass_through(tracer, node, channels, channels.axis + shift)


@rule("tensor.expand")
def expand(tracer: Tracer, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    channels = tracer.of(x)
    if channels is None:
        _pass_through(tracer, node, None)
        return
    axis = channels.axis + out.type.rank - x.type.rank
    if x.shape[channels.axis] != out.shape[axis]:
        tracer.freeze(channels, f"expand {node.name} broadcasts a single channel")
        _pass_through(tracer, node, None)
        return
    _pass_through(tracer, node, channels, axis)


@rule("tensor.tile", "tensor.pad")
def tile_or_pad(tracer: Tracer, node: Node) -> None:
    x = node.inputs[0]
    channels = tracer.of(x)
    if channels is not None:
        axis = channels.axis
        if node.op == "tensor.tile":
            touched = node.attrs["repeats"][axis] != 1
        else:
            pads = node.attrs["pads"]
            touched = pads[axis] != 0 or pads[axis + x.type.rank] != 0
        if touched:
            tracer.freeze(channels, f"{node.op} {node.name} changes the channel axis")
            channels = None
    _pass_through(tracer, node, channels)


# ---- reductions and normalizations -------------------------------------------------------------------

SUM_LIKE = frozenset({"reduce.sum", "reduce.l1", "reduce.l2", "reduce.sum_square"})  # a removed channel drops one term


@rule(*(f"reduce.{name}" for name in ("sum", "mean", "max", "min", "prod", "sum_square", "l1", "l2", "log_sum_exp")))
def reduce(tracer: Tracer, node: Node) -> None:
    x = node.inputs[0]
    channels = tracer.of(x)
    if channels is None:
        _pass_through(tracer, node, None)
        return
    axes = reduced_axes(x.type.rank, node.attrs["axes"])
    if channels.axis in axes:
        if node.op not in SUM_LIKE:
            tracer.freeze(channels, f"{node.op} {node.name} reduces over the channels")
        _pass_through(tracer, node, None)
        return
    axis = channels.axis if node.attrs["keepdims"] else channels.axis - sum(1 for a in axes if a < channels.axis)
    _pass_through(tracer, node, channels, axis)


@rule("reduce.argmax", "reduce.argmin", "nn.softmax", "nn.log_softmax")
def along_axis(tracer: Tracer, node: Node) -> None:
    x = node.inputs[0]
    channels = tracer.of(x)
    if channels is None:
        _pass_through(tracer, node, None)
        return
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    if channels.axis == axis:
        tracer.freeze(channels, f"{node.op} {node.name} works across the channels")
        _pass_through(tracer, node, None)
        return
    keepdims = node.attrs.get("keepdims", True)
    _pass_through(tracer, node, channels, channels.axis - (0 if keepdims or channels.axis < axis else 1))


@rule("nn.max_pool", "nn.avg_pool")
def pool(tracer: Tracer, node: Node) -> None:
    channels = tracer.of(node.inputs[0])
    if channels is not None and channels.axis > 1:
        tracer.freeze(channels, f"{node.op} {node.name} pools over the sliced axis")
        channels = None
    _pass_through(tracer, node, channels)


@rule("nn.batch_norm", "nn.instance_norm", "nn.group_norm", "nn.lrn")
def channel_norm(tracer: Tracer, node: Node) -> None:
    x = node.inputs[0]
    channels = tracer.of(x)
    if channels is None or channels.axis == 0:
        _pass_through(tracer, node, channels)
        return
    if channels.axis != 1 or node.op == "nn.lrn":
        tracer.freeze(channels, f"{node.op} {node.name} normalizes across the sliced axis")
        _pass_through(tracer, node, None)
        return
    if node.op == "nn.group_norm":
        size = len(channels.ids) // node.attrs["num_groups"]
        for start in range(0, len(channels.ids), size):
            tracer.union_all(channels.ids[start : start + size], f"group norm {node.name} has fixed channels")
    kinds = ("scale", "bias", "stat", "stat")
    for position, value in enumerate(node.inputs[1:], start=1):
        if tracer.is_param(value):
            tracer.record(node, position, 0, channels.ids, kinds[position - 1])
        else:
            tracer.freeze(channels, f"{node.op} {node.name} has computed per-channel parameters")
    _pass_through(tracer, node, channels)


@rule("nn.layer_norm", "nn.rms_norm")
def layer_norm(tracer: Tracer, node: Node) -> None:
    x = node.inputs[0]
    channels = tracer.of(x)
    if channels is None:
        _pass_through(tracer, node, None)
        return
    first = normalize_axis(node.attrs["axis"], x.type.rank)
    if channels.axis >= first:
        tracer.normalizes(channels.ids)
        for position, value in enumerate(node.inputs[1:], start=1):
            if tracer.is_param(value):
                tracer.record(node, position, channels.axis - first, channels.ids, "scale" if position == 1 else "bias")
            else:
                tracer.freeze(channels, f"{node.op} {node.name} has a computed scale or bias")
    _pass_through(tracer, node, channels)


# ---- layers: the sources of new channels ----------------------------------------------------------------

def _computed_weights(tracer: Tracer, node: Node, first: int = 1) -> bool:
    computed = [value for value in node.inputs[first:] if not tracer.is_param(value)]
    if computed:
        tracer.freeze(tracer.of(node.inputs[0]), f"{node.name} ({node.op}) has a computed weight %{computed[0].name}")
        for value in node.outputs:
            tracer.set(value, None)
    return bool(computed)


@rule("nn.conv")
def conv(tracer: Tracer, node: Node) -> None:
    """Output channels are new (a source). groups == 1: input channels follow weight axis 1.

    Grouped and depthwise convs slice whole groups: the input channels of group g and its output
    channels are one unit.
    """
    x, weight, out = node.inputs[0], node.inputs[1], node.outputs[0]
    if _computed_weights(tracer, node):
        return
    channels = tracer.of(x)
    if channels is not None and channels.axis != 1:
        tracer.freeze(channels, f"conv {node.name} slides over the sliced axis")
        channels = None
    out_ids = tracer.source(node, out, 1)
    tracer.record(node, 1, 0, out_ids, "weight")
    if len(node.inputs) == 3:
        tracer.record(node, 2, 0, out_ids, "bias")
    groups = node.attrs["groups"]
    if groups == 1:
        if channels is not None:
            tracer.record(node, 1, 1, channels.ids, "weight")
    else:
        in_block = weight.shape[1]
        out_block = len(out_ids) // groups
        reason = f"grouped conv {node.name} (groups={groups}) slices whole groups; its input channels are fixed"
        for group in range(groups):
            block = out_ids[group * out_block : (group + 1) * out_block]
            if channels is None:
                tracer.freeze(block, reason)
                continue
            tracer.union_all(np.concatenate([block, channels.ids[group * in_block : (group + 1) * in_block]]), reason)
    tracer.set(out, Channels(1, out_ids))


@rule("nn.conv_transpose")
def conv_transpose(tracer: Tracer, node: Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    if _computed_weights(tracer, node):
        return
    channels = tracer.of(x)
    if channels is not None and (channels.axis != 1 or node.attrs["groups"] != 1):
        tracer.freeze(channels, f"transposed conv {node.name} slices only ungrouped input channels")
        channels = None
    if node.attrs["groups"] != 1:
        tracer.set(out, None)
        return
    if channels is not None:
        tracer.record(node, 1, 0, channels.ids, "weight")
    out_ids = tracer.source(node, out, 1)
    tracer.record(node, 1, 1, out_ids, "weight")
    if len(node.inputs) == 3:
        tracer.record(node, 2, 0, out_ids, "bias")
    tracer.set(out, Channels(1, out_ids))


@rule("nn.linear")
def linear(tracer: Tracer, node: Node) -> None:
    """Weight rows follow the input's features; the output features are new (a source)."""
    x, out = node.inputs[0], node.outputs[0]
    if _computed_weights(tracer, node):
        return
    _linear_like(tracer, node, x, out)


def _linear_like(tracer: Tracer, node: Node, x: Value, out: Value) -> None:
    channels = tracer.of(x)
    last = x.type.rank - 1
    if channels is not None and channels.axis != last:
        # the features mix along a sliced leading axis (a token-mixing MLP): the leading axis wins
        tracer.set(out, channels)
        return
    if channels is not None:
        tracer.record(node, 1, 0, channels.ids, "weight")
    out_ids = tracer.source(node, out, out.type.rank - 1)
    tracer.record(node, 1, 1, out_ids, "weight")
    if len(node.inputs) == 3:
        tracer.record(node, 2, 0, out_ids, "bias")
    tracer.set(out, Channels(out.type.rank - 1, out_ids))


@rule("linalg.matmul")
def matmul(tracer: Tracer, node: Node) -> None:
    left, right = node.inputs
    out = node.outputs[0]
    if tracer.is_param(right) and right.type.rank == 2 and left.type.rank >= 1 and not tracer.is_param(left):
        _linear_like(tracer, node, left, out)
        return
    if left.type.rank < 2 or right.type.rank < 2 or tracer.is_param(left) or tracer.is_param(right):
        opaque(tracer, node)
        return
    rank = out.type.rank
    a, b = tracer.of(left), tracer.of(right)
    contracted_a = a is not None and a.axis == left.type.rank - 1
    contracted_b = b is not None and b.axis == right.type.rank - 2
    if contracted_a and contracted_b:
        tracer.unify(a.ids, b.ids, f"matmul {node.name} contracts fixed and sliced channels")
    elif contracted_a or contracted_b:
        tracer.freeze(a if contracted_a else b, f"matmul {node.name} contracts sliced channels with unsliced ones")
    carriers: list[tuple[int, np.ndarray]] = []
    for channels, value, contracted in ((a, left, contracted_a), (b, right, contracted_b)):
        if channels is None or contracted:
            continue
        out_axis = channels.axis + rank - value.type.rank  # rows of left, columns of right, or a batch axis
        if value.shape[channels.axis] != out.shape[out_axis]:
            tracer.freeze(channels, f"matmul {node.name} broadcasts sliced channels")
            continue
        carriers.append((out_axis, channels.ids))
    joined = _join_carriers(tracer, carriers, f"matmul {node.name}")
    if joined is None:
        tracer.set(out, None)
        return
    axis, ids = joined
    if axis < rank - 2:  # a batch axis: the other operand must follow it
        for value in (left, right):
            channels = tracer.of(value)
            mapped = None if channels is None else channels.axis + rank - value.type.rank
            if mapped != axis and _full_along(value, out, axis):
                tracer.freeze(ids, f"matmul {node.name} batches the channels with %{value.name}, "
                                   "which has none to slice")
    tracer.set(out, Channels(axis, ids))


@rule("nn.attention")
def attention(tracer: Tracer, node: Node) -> None:
    """Whole heads: the head axis of query, key, value and output is one unit per head."""
    out = node.outputs[0]
    rank = out.type.rank
    carriers: list[Channels] = []
    for value in node.inputs[:3]:
        channels = tracer.of(value)
        if channels is None:
            continue
        if channels.axis >= rank - 2:
            tracer.freeze(channels, f"attention {node.name} reads sliced features; only whole heads are sliced "
                                    "and no head axis was found")
            continue
        carriers.append(channels)
    if not carriers or any(channels.axis != carriers[0].axis for channels in carriers):
        for channels in carriers:
            tracer.freeze(channels, f"attention {node.name} has heads on different axes")
        tracer.set(out, None)
        return
    axis, ids = carriers[0].axis, carriers[0].ids
    for channels in carriers[1:]:
        ids = tracer.unify(ids, channels.ids, f"attention {node.name} mixes fixed and sliced heads")
    for value in node.inputs[:3]:
        if tracer.of(value) is None and value.shape[axis] == out.shape[axis] and out.shape[axis] != 1:
            tracer.freeze(ids, f"attention {node.name} reads %{value.name}, whose heads cannot be sliced")
    if len(node.inputs) == 4:
        mask = node.inputs[3]
        mask_axis = axis - (rank - mask.type.rank)
        if mask_axis >= 0 and mask.shape[mask_axis] == out.shape[axis] and out.shape[axis] != 1:
            if tracer.is_param(mask):
                tracer.record(node, 3, mask_axis, ids, "other")
            else:
                tracer.freeze(ids, f"attention {node.name} has a computed per-head mask")
        if not tracer.is_param(mask):
            tracer.freeze(tracer.of(mask), f"attention {node.name} uses sliced channels as its mask")
    tracer.set(out, Channels(axis, ids))
    tracer.activation_slices.append(ActivationSlice(out.name, axis, ids))
