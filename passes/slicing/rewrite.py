"""The rewrite: dense, smaller params and rebuilt attributes for a chosen set of removed units.

A ``Slicer`` answers, for one removal (a boolean per union-find root), which positions of each
value survive, which positions of each param use to ``np.take``, and the new attributes of the few
ops whose attributes name sizes (reshape shapes, split sizes, slice bounds, conv groups, group-norm
groups, expand shapes). ``estimate`` runs type inference over that to count FLOPs and params
without touching data; ``apply_slicing`` rewrites the graph in place, keeping node and value names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ...errors import VerificationError
from ...ir.graph import Graph, Node, Value
from ...ir.ops.registry import normalize_axis
from ...ir.types import TensorType
from .groups import ChannelAnalysis, ParamSlice

Take = tuple[tuple[int, np.ndarray], ...]  # (param axis, kept positions) per sliced axis


class Kept(NamedTuple):
    """The positions of a value that survive, on its carrier axis of ``size`` positions."""

    axis: int
    positions: np.ndarray
    size: int


class Slicer:
    """The positions that survive one removal, per value and per param use."""

    def __init__(self, analysis: ChannelAnalysis, removed: np.ndarray) -> None:
        self.analysis = analysis
        self.removed = removed
        self._kept: dict[str, Kept | None] = {}
        self.uses: dict[str, dict[int, list[ParamSlice]]] = {}
        for item in analysis.param_slices:
            self.uses.setdefault(item.node, {}).setdefault(item.position, []).append(item)

    def kept(self, value: Value | str) -> Kept | None:
        """The surviving positions of a value that loses some; None when it keeps all.

        Sizes come from the analysis, never from the graph, which the rewrite changes as it goes.
        """
        name = value if isinstance(value, str) else value.name
        if name not in self._kept:
            channels = self.analysis.channels.get(name)
            result = None
            if channels is not None:
                mask = self.analysis.kept_mask(channels.ids, self.removed)
                if not mask.all():
                    result = Kept(channels.axis, np.flatnonzero(mask), len(mask))
            self._kept[name] = result
        return self._kept[name]

    def takes(self, node: Node) -> dict[int, Take]:
        """Per param input of ``node``: the positions to keep on each sliced axis."""
        found: dict[int, Take] = {}
        for position, items in self.uses.get(node.name, {}).items():
            axes: dict[int, np.ndarray] = {}
            for item in items:
                mask = self.analysis.kept_mask(item.ids, self.removed)
                if not mask.all():
                    previous = axes.get(item.axis)
                    kept = np.flatnonzero(mask)
                    axes[item.axis] = kept if previous is None else np.intersect1d(previous, kept)
            if axes:
                found[position] = tuple(sorted(axes.items()))
        return found

    def attrs(self, node: Node) -> dict[str, Any]:
        update = ATTRS.get(node.op)
        return update(self, node) if update else node.attrs


# ---- attributes that name sizes ------------------------------------------------------------------------

def _reshape_attrs(slicer: Slicer, node: Node) -> dict[str, Any]:
    kept = slicer.kept(node.outputs[0])
    if kept is None:
        return node.attrs
    shape = list(node.attrs["shape"])
    if shape[kept.axis] != -1:
        shape[kept.axis] = len(kept.positions)
    return dict(node.attrs, shape=tuple(shape))


def _split_attrs(slicer: Slicer, node: Node) -> dict[str, Any]:
    kept = slicer.kept(node.inputs[0])
    axis = normalize_axis(node.attrs["axis"], node.inputs[0].type.rank)
    if kept is None or kept.axis != axis:
        return node.attrs
    bounds = np.cumsum((0,) + tuple(node.attrs["sizes"]))
    counts = np.searchsorted(kept.positions, bounds)
    return dict(node.attrs, sizes=tuple(int(b - a) for a, b in zip(counts[:-1], counts[1:])))


def _slice_attrs(slicer: Slicer, node: Node) -> dict[str, Any]:
    x = node.inputs[0]
    kept = slicer.kept(x)
    if kept is None:
        return node.attrs
    rank = x.type.rank
    starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
    axes = node.attrs["axes"] if node.attrs["axes"] is not None else tuple(range(len(starts)))
    steps = node.attrs["steps"] or (1,) * len(starts)
    for index, item_axis in enumerate(axes):
        if normalize_axis(item_axis, rank) != kept.axis:
            continue
        start, stop, _ = slice(starts[index], ends[index], steps[index]).indices(kept.size)
        starts[index] = int(np.searchsorted(kept.positions, start))
        ends[index] = int(np.searchsorted(kept.positions, max(stop, start)))
    return dict(node.attrs, starts=tuple(starts), ends=tuple(ends))


def _conv_attrs(slicer: Slicer, node: Node) -> dict[str, Any]:
    groups = node.attrs["groups"]
    kept = slicer.kept(node.outputs[0])
    if groups == 1 or kept is None:
        return node.attrs
    return dict(node.attrs, groups=len(kept.positions) // (kept.size // groups))


def _group_norm_attrs(slicer: Slicer, node: Node) -> dict[str, Any]:
    kept = slicer.kept(node.inputs[0])
    if kept is None or kept.axis != 1:
        return node.attrs
    return dict(node.attrs, num_groups=len(kept.positions) // (kept.size // node.attrs["num_groups"]))


def _expand_attrs(slicer: Slicer, node: Node) -> dict[str, Any]:
    out = node.outputs[0]
    kept = slicer.kept(out)
    if kept is None:
        return node.attrs
    shape = list(node.attrs["shape"])
    index = kept.axis - (out.type.rank - len(shape))
    if index >= 0 and shape[index] == kept.size and shape[index] != 1:
        shape[index] = len(kept.positions)
    return dict(node.attrs, shape=tuple(shape))


ATTRS: dict[str, Callable[[Slicer, Node], dict[str, Any]]] = {
    "tensor.reshape": _reshape_attrs,
    "tensor.split": _split_attrs,
    "tensor.slice": _slice_attrs,
    "tensor.expand": _expand_attrs,
    "nn.conv": _conv_attrs,
    "nn.group_norm": _group_norm_attrs,
}


# ---- counting and rewriting ------------------------------------------------------------------------------

@dataclass
class Estimate:
    flops: int
    params: int
    node_flops: dict[str, int]
    node_params: dict[str, int]  # elements of the params each node reads


def _take_key(value: Value, take: Take | None) -> tuple:
    if take is None:
        return (value.name,)
    return (value.name,) + tuple((axis, positions.tobytes()) for axis, positions in take)


def _taken_type(value: Value, take: Take) -> TensorType:
    shape = list(value.shape)
    for axis, positions in take:
        shape[axis] = len(positions)
    return value.type.with_shape(tuple(shape))


def estimate(graph: Graph, slicer: Slicer) -> Estimate:
    """FLOPs and params after the removal, by type inference alone (no data is copied)."""
    types: dict[str, TensorType] = {}
    params: dict[tuple, int] = {}
    node_flops: dict[str, int] = {}
    node_params: dict[str, int] = {}
    for node in graph.nodes:
        takes = slicer.takes(node)
        input_types = []
        read = 0
        for position, value in enumerate(node.inputs):
            take = takes.get(position)
            value_type = _taken_type(value, take) if take else types.get(value.name, value.type)
            if value in graph.params:
                params[_take_key(value, take)] = value_type.numel
                read += value_type.numel
            input_types.append(value_type)
        attrs = slicer.attrs(node)
        output_types = node.opdef.infer(input_types, attrs, where=node.name)
        node_flops[node.name] = node.opdef.count_flops(input_types, output_types, attrs)
        node_params[node.name] = read
        for value, value_type in zip(node.outputs, output_types):
            types[value.name] = value_type
    for value in graph.outputs:  # a param returned as an output stays
        if value in graph.params:
            params[_take_key(value, None)] = value.type.numel
    return Estimate(sum(node_flops.values()), sum(params.values()), node_flops, node_params)


def apply_slicing(graph: Graph, slicer: Slicer) -> int:
    """Rewrite ``graph`` in place for the removal; returns how many nodes changed.

    Each changed node is rebuilt with sliced params and new attributes under its own name and
    output names, so reports and graph outputs keep their names.
    """
    sliced: dict[tuple, Value] = {}
    replaced_params: dict[Value, str] = {}
    changed = 0
    for node in list(graph.nodes):
        takes = slicer.takes(node)
        attrs = slicer.attrs(node)
        inputs = list(node.inputs)
        for position, take in takes.items():
            param = inputs[position]
            key = _take_key(param, take)
            if key not in sliced:
                array = graph.params[param]
                for axis, positions in take:
                    array = np.take(array, positions, axis=axis)
                sliced[key] = graph.add_param(param.name, array)
                replaced_params[sliced[key]] = param.name
            inputs[position] = sliced[key]
        output_types = node.opdef.infer([value.type for value in inputs], attrs, where=node.name)
        if not takes and attrs == node.attrs and output_types == [value.type for value in node.outputs]:
            continue
        graph.rebuild_node(node, inputs, attrs)
        changed += 1
    graph.remove_unused_params()
    for value, name in replaced_params.items():
        if value in graph.params:
            graph.rename_value(value, name)  # the original is gone when every use was sliced
    _check_sizes(graph, slicer)
    return changed


def _check_sizes(graph: Graph, slicer: Slicer) -> None:
    for node in graph.nodes:
        for value in node.outputs:
            kept = slicer.kept(value)
            if kept is not None and value.shape[kept.axis] != len(kept.positions):
                raise VerificationError(
                    f"slicing: %{value.name} of {node.name} has {value.shape[kept.axis]} positions on axis "
                    f"{kept.axis}, the plan keeps {len(kept.positions)}"
                )
