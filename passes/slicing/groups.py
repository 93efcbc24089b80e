"""Channel dependency analysis: which channel positions of which tensors are sliced together.

Every layer that makes new channels (a conv's output channels, a linear's output features) is a
*source*: it gets one fresh id per channel. The rules in ``rules.py`` carry those ids through
the graph, one op at a time, and record what each op couples:

- a value carries ids along at most one axis (its *carrier* axis, ``Channels``); positions that
  no source made (a graph input's channels concatenated in, say) are ``FIXED``;
- ops that need two positions to be removed together (a residual add, a depthwise conv, the q/k/v
  projections of one attention head) union their ids (``ChannelSets``);
- ops that cannot be sliced along a carrier (a softmax over channels, a graph output, an add with
  a model input) freeze its ids with the reason;
- every param slice that follows a carrier (conv weight rows and columns, biases, norm scales,
  per-channel constants) is recorded as a ``ParamSlice``; the rewrite takes exactly those.

After the walk, each union-find class is one *unit* of slicing (a channel of a residual stream,
a head, a group of a grouped conv); units that share a source form a *group* (one layer, or all
layers writing one residual stream). ``analyze_channels`` returns them as a ``ChannelAnalysis``.

Why one carrier axis per value: the rewrite must leave dense tensors, so the surviving positions
of every value must be a product of per-axis index sets. With ids on one axis that always holds.
A reshape that spreads the carrier over several axes (``(S, 3*H*D) -> (S, 3, H, D)``) picks one of
them, the attention head axis when the reshape feeds ``nn.attention``, and makes each of its
slabs one unit; a reshape that merges axes (a flatten into a linear) gives each id a block.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...ir.graph import Graph, Node, Value

logger = logging.getLogger(__name__)

FIXED = -1  # a position no source made: never removed
MAX_REASONS = 4  # reasons kept per frozen class


@dataclass(frozen=True, eq=False)
class Channels:
    """The ids a value carries: one per position along ``axis`` (``FIXED`` where none)."""

    axis: int
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class ChannelSets:
    """Union-find over channel ids; a class that is frozen remembers why."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: dict[int, list[str]] = {}  # root -> reasons

    def fresh(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, first: int, second: int) -> int:
        a, b = self.find(first), self.find(second)
        if a == b:
            return a
        if b < a:
            a, b = b, a
        self.parent[b] = a  # the smaller id stays root: deterministic
        if b in self.frozen:
            reasons = self.frozen.setdefault(a, [])
            for reason in self.frozen.pop(b):
                if reason not in reasons and len(reasons) < MAX_REASONS:
                    reasons.append(reason)
        return a

    def union_all(self, ids: Iterable[int]) -> None:
        first = None
        for item in ids:
            if item < 0:
                continue
            if first is None:
                first = int(item)
            else:
                self.union(first, int(item))

    def freeze(self, ids: Iterable[int], reason: str) -> None:
        for item in ids:
            if item < 0:
                continue
            reasons = self.frozen.setdefault(self.find(int(item)), [])
            if reason not in reasons and len(reasons) < MAX_REASONS:
                reasons.append(reason)

    def is_frozen(self, item: int) -> bool:
        return self.find(item) in self.frozen

    def roots(self) -> np.ndarray:
        """The root of every id, as an array indexed by id."""
        return np.array([self.find(item) for item in range(len(self.parent))], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Source:
    """A layer output whose channels are new: the ids it made along ``axis`` of ``value``."""

    node: str
    op: str
    value: str
    axis: int
    ids: np.ndarray


@dataclass(frozen=True, eq=False)
class ParamSlice:
    """Positions along ``axis`` of the param at input ``position`` of ``node`` follow ``ids``.

    ``kind`` says what the slice is for importance: ``weight`` (conv/linear weights, both the
    producing rows and the consuming columns), ``scale`` (a norm's scale), ``bias``, ``stat``
    (running mean/var) or ``other`` (per-channel constants, masks, tokens).
    """

    node: str
    position: int
    axis: int
    ids: np.ndarray
    kind: str


@dataclass(frozen=True, eq=False)
class ActivationSlice:
    """Positions along ``axis`` of a computed value follow ``ids`` (activation importance)."""

    value: str
    axis: int
    ids: np.ndarray


class Tracer:
    """What the propagation rules see: the graph, the ids so far, and ways to couple them."""

    def __init__(self, graph: Graph, head_axes: dict[str, int]) -> None:
        self.graph = graph
        self.sets = ChannelSets()
        self.channels: dict[str, Channels | None] = {}
        self.sources: list[Source] = []
        self.param_slices: list[ParamSlice] = []
        self.activation_slices: list[ActivationSlice] = []
        self.head_axes = head_axes  # reshape node name -> output axis that holds attention heads
        self.normalized: list[np.ndarray] = []  # ids whose statistics a norm over the channels uses

    # ---- reading -------------------------------------------------------------------------------
    def of(self, value: Value) -> Channels | None:
        if value in self.graph.params:
            return None
        return self.channels.get(value.name)

    def is_param(self, value: Value) -> bool:
        return value in self.graph.params

    # ---- writing -------------------------------------------------------------------------------
    def set(self, value: Value, channels: Channels | None) -> None:
        if channels is not None:
            dim = value.shape[channels.axis]
            if not isinstance(dim, int) or dim != len(channels.ids):
                raise AssertionError(f"slicing: %{value.name} axis {channels.axis} has {dim} positions, "
                                     f"{len(channels.ids)} ids")
        self.channels[value.name] = channels

    def source(self, node: Node, value: Value, axis: int) -> np.ndarray:
        """Fresh ids for the channels ``node`` makes along ``axis`` of ``value``."""
        count = value.shape[axis]
        if not isinstance(count, int):
            return np.full(0, FIXED, dtype=np.int64)
        ids = self.sets.fresh(count)
        self.sources.append(Source(node.name, node.op, value.name, axis, ids))
        self.activation_slices.append(ActivationSlice(value.name, axis, ids))
        return ids

    def unify(self, first: np.ndarray, second: np.ndarray, reason: str) -> np.ndarray:
        """Couple two id arrays position by position; a FIXED position freezes its partner."""
        for a, b in zip(first.tolist(), second.tolist()):
            if a >= 0 and b >= 0:
                self.sets.union(a, b)
            elif a >= 0 or b >= 0:
                self.sets.freeze((max(a, b),), reason)
        return np.where(first >= 0, first, second)

    def union_all(self, ids: np.ndarray, reason: str) -> None:
        """Make ``ids`` one unit; if some are FIXED the unit is frozen."""
        self.sets.union_all(ids.tolist())
        if (ids < 0).any():
            self.sets.freeze(ids.tolist(), reason)

    def freeze(self, channels: Channels | np.ndarray | None, reason: str) -> None:
        if channels is None:
            return
        ids = channels.ids if isinstance(channels, Channels) else channels
        self.sets.freeze(ids.tolist(), reason)

    def record(self, node: Node, position: int, axis: int, ids: np.ndarray, kind: str) -> None:
        self.param_slices.append(ParamSlice(node.name, position, axis, ids, kind))

    def normalizes(self, ids: np.ndarray) -> None:
        """Note ids that a norm computes statistics over: slicing them is not exact even when dead."""
        self.normalized.append(ids)


# ---- the result ------------------------------------------------------------------------------------

@dataclass
class Group:
    """Units that share a source: one layer, or every layer writing one residual stream."""

    index: int
    name: str
    sources: list[str]  # node names
    units: list[int]  # roots of the units that can be removed
    frozen: dict[int, list[str]]  # root -> why it stays
    step: int = 1  # kept units are rounded up to a multiple of this (the ``multiple`` option)
    unit_width: int = 1  # channels per unit in the narrowest source
    normalized: bool = False  # a layer/RMS norm takes statistics over these channels

    @property
    def sliceable(self) -> bool:
        return len(self.units) > 1

    def reasons(self) -> list[str]:
        seen: list[str] = []
        for reasons in self.frozen.values():
            for reason in reasons:
                if reason not in seen:
                    seen.append(reason)
        return seen


@dataclass
class ChannelAnalysis:
    """The units of slicing of a graph, the groups they form, and what follows each unit."""

    graph_name: str
    roots: np.ndarray  # root of every id
    frozen: dict[int, list[str]]
    channels: dict[str, Channels | None]  # value name -> its carrier
    sources: list[Source]
    param_slices: list[ParamSlice]
    activation_slices: list[ActivationSlice]
    groups: list[Group]
    unit_group: dict[int, int]  # unit root -> group index
    keep_one: list[np.ndarray] = field(default_factory=list)  # unit sets of which one must stay

    @property
    def units(self) -> list[int]:
        return [unit for group in self.groups for unit in group.units]

    def unit_slices(self, unit: int) -> list[tuple[ParamSlice, np.ndarray]]:
        """Every param slice that follows ``unit``, with the positions it covers."""
        found = []
        for item in self.param_slices:
            positions = np.flatnonzero((item.ids >= 0) & (self.roots[np.maximum(item.ids, 0)] == unit))
            if positions.size:
                found.append((item, positions))
        return found

    def kept_mask(self, ids: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """True where a position survives when the units flagged in ``removed`` (by root) go."""
        safe = np.maximum(ids, 0)
        return (ids < 0) | ~removed[self.roots[safe]]

    def summary(self) -> str:
        lines = []
        for group in self.groups:
            state = f"{len(group.units)} units" if group.sliceable else "not sliceable"
            lines.append(f"{group.name}: {state} over {len(group.sources)} layer(s)"
                         + (f"; frozen: {'; '.join(group.reasons())}" if group.frozen else ""))
        return "\n".join(lines)


def analyze_channels(graph: Graph, multiple: int = 1) -> ChannelAnalysis:
    """Trace channel ids through ``graph`` and group them into units of slicing.

    ``multiple`` sets each group's rounding step: kept channels of every source in the group
    stay a multiple of it where the group's unit widths allow.
    """
    from .rules import RULES, opaque

    tracer = Tracer(graph, find_head_axes(graph))
    for value in graph.inputs:
        tracer.channels[value.name] = None
    for node in graph.nodes:
        rule = RULES.get(node.op, opaque)
        rule(tracer, node)
    for value in graph.outputs:
        tracer.freeze(tracer.of(value), f"model output %{value.name}")
    analysis = _collect(graph, tracer, multiple)
    logger.debug("slicing %s: %d units in %d groups, %d frozen classes", graph.name, len(analysis.units),
                 len(analysis.groups), len(analysis.frozen))
    return analysis


def _collect(graph: Graph, tracer: Tracer, multiple: int) -> ChannelAnalysis:
    sets = tracer.sets
    roots = sets.roots()
    frozen = dict(sets.frozen)  # keyed by root already: unions move reasons to the new root

    # groups: classes linked by a shared source, found with a second union-find over the roots
    linked = ChannelSets()
    linked.fresh(len(roots))
    for source in tracer.sources:
        linked.union_all(np.unique(roots[source.ids]).tolist())
    members: dict[int, list[int]] = {}
    for root in sorted(set(roots.tolist())):
        members.setdefault(linked.find(root), []).append(root)
    sources_of: dict[int, list[Source]] = {}
    for source in tracer.sources:
        if source.ids.size:
            sources_of.setdefault(linked.find(int(roots[source.ids[0]])), []).append(source)

    groups: list[Group] = []
    unit_group: dict[int, int] = {}
    for key in members:  # in order of the first source: roots are ids, ids follow the graph
        sources = sources_of.get(key, [])
        names = list(dict.fromkeys(source.node for source in sources))
        units = [root for root in members[key] if root not in frozen]
        group = Group(len(groups), names[0] if names else f"group{len(groups)}", names, units,
                      {root: frozen[root] for root in members[key] if root in frozen})
        group.step, group.unit_width = _rounding_step(roots, sources, units, multiple)
        for unit in units:
            unit_group[unit] = group.index
        groups.append(group)

    normalized: set[int] = set()
    for ids in tracer.normalized:
        normalized.update(roots[ids[ids >= 0]].tolist())
    for group in groups:
        group.normalized = any(unit in normalized for unit in group.units)
    keep_one = _keep_one_sets(tracer, roots, frozen)
    return ChannelAnalysis(graph.name, roots, frozen, dict(tracer.channels), tracer.sources, tracer.param_slices,
                           tracer.activation_slices, groups, unit_group, keep_one)


def _rounding_step(roots: np.ndarray, sources: Sequence[Source], units: list[int], multiple: int) -> tuple[int, int]:
    """Units to keep per step so every source's kept channels stay a multiple of ``multiple``.

    Also returns the narrowest unit width (channels per unit in one source). Groups whose units
    differ in width are not rounded.
    """
    if not units:
        return 1, 1
    unit_set = set(units)
    step, narrowest = 1, None
    for source in sources:
        values, counts = np.unique(roots[source.ids], return_counts=True)
        widths = {int(count) for value, count in zip(values.tolist(), counts.tolist()) if value in unit_set}
        if not widths:
            continue
        if len(widths) != 1:
            return 1, 1
        width = widths.pop()
        narrowest = width if narrowest is None else min(narrowest, width)
        needed = multiple // math.gcd(multiple, width) if multiple > 1 else 1
        step = step * needed // math.gcd(step, needed)
    return step, narrowest or 1


def _keep_one_sets(tracer: Tracer, roots: np.ndarray, frozen: dict[int, list[str]]) -> list[np.ndarray]:
    """Unit sets that are a whole tensor axis: at least one of each must stay (no empty tensors)."""
    seen: set[tuple[int, ...]] = set()
    found = []
    for channels in tracer.channels.values():
        if channels is None or (channels.ids < 0).any():
            continue
        unique = np.unique(roots[channels.ids])
        if any(int(root) in frozen for root in unique):
            continue
        key = tuple(unique.tolist())
        if key not in seen:
            seen.add(key)
            found.append(unique)
    return found


# ---- attention heads ---------------------------------------------------------------------------------

def find_head_axes(graph: Graph) -> dict[str, int]:
    """The reshapes that split features into attention heads, and the output axis of the heads.

    Walks back from each ``nn.attention`` input along its head axis (the last leading axis)
    through transposes, slices, single-input elementwise ops and reshapes that keep the axis
    whole, to the reshape that creates it (``(B, S, H*D) -> (B, S, H, D)``).
    """
    found: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "nn.attention":
            continue
        rank = node.inputs[0].type.rank
        if rank < 3:
            continue
        for value in node.inputs[:3]:
            _trace_head_axis(value, rank - 3, found)
    return found


def _trace_head_axis(value: Value, axis: int, found: dict[str, int]) -> None:
    for _ in range(64):  # a bounded walk; chains are a few ops long
        node = value.producer
        if node is None:
            return
        if node.op == "tensor.transpose":
            axis = node.attrs["perm"][axis]
        elif node.op in ("tensor.slice", "tensor.split") or (len(node.inputs) == 1 and node.op.startswith("math.")):
            if node.inputs[0].type.rank != value.type.rank:
                return
        elif node.op == "tensor.reshape":
            source_axis = reshape_axis_map(node.inputs[0].shape, value.shape, axis)
            if source_axis is None:
                found[node.name] = axis
                return
            axis = source_axis
        else:
            return
        value = node.inputs[0]


def reshape_axis_map(in_shape: Sequence[object], out_shape: Sequence[object], out_axis: int) -> int | None:
    """The input axis that a reshape carries whole to ``out_axis``, or None if it splits/merges."""
    shapes = static_reshape(tuple(in_shape), tuple(out_shape))
    if shapes is None or not isinstance(out_shape[out_axis], int):
        return None
    static_in, static_out = shapes
    size = static_out[out_axis]
    before = math.prod(static_out[:out_axis])
    prefix = 1
    for index, dim in enumerate(static_in):
        if prefix == before and dim == size and in_shape[index] == out_shape[out_axis]:
            return index
        prefix *= dim
        if prefix > before and size != 1:
            break
    return None


def _factors(dim: object) -> tuple[int, list[str]] | None:
    """A dim as (static factor, symbol names): ``"17*batch"`` is (17, ["batch"])."""
    if isinstance(dim, int):
        return dim, []
    static, symbols = 1, []
    for part in str(dim).split("*"):
        if part.isdigit():
            static *= int(part)
        elif part.isidentifier():
            symbols.append(part)
        else:
            return None
    return static, symbols


def static_reshape(in_shape: tuple, out_shape: tuple) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Shapes to reshape the ids with, with every symbolic size (a batch) taken as 1.

    Ids never vary along a symbolic axis, so a symbol may stand for 1 when it appears as often on
    both sides (``(batch, 17, 32) -> (17*batch, 32)``); other symbolic reshapes are refused.
    """
    static: list[list[int]] = [[], []]
    symbols: list[list[str]] = [[], []]
    for side, shape in enumerate((in_shape, out_shape)):
        for dim in shape:
            factors = _factors(dim)
            if factors is None:
                return None
            static[side].append(factors[0])
            symbols[side].extend(factors[1])
    if sorted(symbols[0]) != sorted(symbols[1]) or int(np.prod(static[0])) != int(np.prod(static[1])):
        return None
    return tuple(static[0]), tuple(static[1])
