"""Cleanup passes: constant folding, identity removal, common subexpressions, dead code.

``cleanup`` runs them together and is the first pass of every pipeline. Before::

    graph g(%x: float32[2,3]) {
      param %a: float32[3] = [1.0, 1.0, 1.0]
      param %one: float32[] = 1.0
      %s: float32[] = math.sqrt(%one) @sqrt
      %m: float32[2,3] = math.mul(%x, %s) @mul
      %t: float32[3,2] = tensor.transpose(%m) {perm=(1, 0)} @t1
      %u: float32[2,3] = tensor.transpose(%t) {perm=(1, 0)} @t2
      %p: float32[2,3] = math.add(%u, %a) @p
      %q: float32[2,3] = math.add(%x, %a) @q
      %y: float32[2,3] = math.sub(%p, %q) @y
      return %y
    }

after (``sqrt`` ran at compile time, ``* 1`` and the transpose pair went away, and then ``%p``
and ``%q`` were the same computation)::

    graph g(%x: float32[2,3]) {
      param %a: float32[3] = [1.0, 1.0, 1.0]
      %p: float32[2,3] = math.add(%x, %a) @p
      %y: float32[2,3] = math.sub(%p, %p) @y
      return %y
    }

Shape arithmetic of exported graphs (Shape -> Gather -> Concat -> Reshape) never reaches these
passes as nodes: ``tensor.reshape`` takes its shape as an attribute, so the importers fold the
chain while they build the graph (``ir.Builder``); what is left of it is constant math on params,
which ``fold_constants`` evaluates. Dropout in inference is dropped by the importers too: the IR has
no dropout op.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.ops.tensor import slice_per_axis
from .pipeline import register_pass
from .rewrite import COMMUTATIVE, Any as AnyValue, Const, Match, Mismatch, Op, Rule, RuleSet, RuleStats, apply_rules

logger = logging.getLogger(__name__)

DEFAULT_FOLD_LIMIT = 1 << 22  # elements a folded result may have
# Params merged by value: only scalars by default. Two weights that happen to be equal (fresh
# LayerNorm ones, zero biases) are different parameters of the model; merging them would tie
# them when the graph is exported for fine-tuning. cse(param_limit=N) merges larger ones too.
DEFAULT_DEDUPLICATE_LIMIT = 1


def _is_output(graph: Graph, value: Value) -> bool:
    return any(value is output for output in graph.outputs)


# ---- constant folding -------------------------------------------------------------------------------------

def fold_constants(graph: Graph, limit: int = DEFAULT_FOLD_LIMIT, stats: RuleStats | None = None) -> int:
    """Evaluate every node whose inputs are all params into params; returns how many it folded.

    Results over ``limit`` elements stay nodes (a folded constant costs memory in the artifact). A
    folded value keeps its name, so a graph output that becomes a constant keeps its output name.
    """
    stats = stats if stats is not None else RuleStats()
    folded = 0
    for node in list(graph.nodes):
        if not node.inputs or not all(value in graph.params for value in node.inputs):
            continue
        if not all(value.type.is_static for value in node.outputs):
            stats.refused["the result has a symbolic shape"] += 1
            continue
        if sum(value.type.numel for value in node.outputs) > limit:
            stats.refused[f"the result is over fold_limit={limit} elements"] += 1
            continue
        try:
            with np.errstate(all="ignore"):  # inf and nan fold as they would compute at run time
                results = node.opdef.run([graph.params[value] for value in node.inputs], node.attrs)
        except (ArithmeticError, ValueError, IndexError, TypeError) as error:
            # leave the node; it fails the same way at run time, where the user sees which input
            logger.warning("not folding %s (%s): its reference fails on the constants: %s", node.name, node.op, error)
            stats.refused[f"the reference fails on the constants ({type(error).__name__})"] += 1
            continue
        renames = []
        for value, result in zip(node.outputs, results):
            constant = graph.add_param(value.name + "_folded", result.astype(value.dtype).reshape(value.type.static_shape()))
            graph.replace_all_uses(value, constant)
            renames.append((constant, value.name))
        graph.remove_node(node)
        for constant, name in renames:
            graph.rename_value(constant, name)  # the node released the name
        folded += 1
    stats.fired += folded
    if folded:
        graph.remove_unused_params()
    return folded


@register_pass("fold_constants")
@dataclass(frozen=True)
class FoldConstants:
    """Evaluate nodes whose inputs are all constants, up to `limit` output elements."""

    limit: int = DEFAULT_FOLD_LIMIT

    def __call__(self, graph: Graph) -> bool:
        return fold_constants(graph, self.limit) > 0


# ---- dead code ----------------------------------------------------------------------------------------------

def eliminate_dead_code(graph: Graph) -> int:
    """Remove nodes and params nothing reads; returns how many it removed."""
    return graph.remove_dead_nodes()


@register_pass("dce")
@dataclass(frozen=True)
class EliminateDeadCode:
    """Remove nodes and params whose results nothing reads."""

    def __call__(self, graph: Graph) -> bool:
        return eliminate_dead_code(graph) > 0


# ---- common subexpressions ------------------------------------------------------------------------------------

def _frozen_attr(value: Any) -> Any:
    """A hashable key for an attribute value: 1 and 1.0 and True differ, -0.0 differs from 0.0."""
    if isinstance(value, (tuple, list)):
        return tuple(_frozen_attr(item) for item in value)
    if isinstance(value, float):
        return ("float", repr(value))  # repr: nan equals nan, -0.0 differs from 0.0
    return (type(value).__name__, value)


def _node_key(node: Node) -> tuple:
    inputs = [id(value) for value in node.inputs]
    if node.op in COMMUTATIVE and len(inputs) == 2:
        inputs.sort()
    attrs = tuple(sorted((name, _frozen_attr(value)) for name, value in node.attrs.items()))
    return node.op, tuple(inputs), attrs


def _param_key(array: np.ndarray) -> tuple:
    digest = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest()
    return array.dtype.name, array.shape, digest


class _Merger:
    """Redirects duplicates to survivors and keeps output names on whatever survives."""

    def __init__(self, graph: Graph, stats: RuleStats) -> None:
        self.graph = graph
        self.stats = stats
        self.output_names: list[tuple[Value, str]] = []

    def can_merge(self, duplicates: list[Value], survivors: list[Value]) -> bool:
        for duplicate, survivor in zip(duplicates, survivors):
            if _is_output(self.graph, duplicate) and _is_output(self.graph, survivor):
                self.stats.refused["both copies are graph outputs (one value cannot carry two output names)"] += 1
                return False
        return True

    def merge(self, duplicate: Value, survivor: Value) -> None:
        if _is_output(self.graph, duplicate):
            self.output_names.append((survivor, duplicate.name))
        self.graph.replace_all_uses(duplicate, survivor)

    def rename_outputs(self) -> None:
        """Call once the duplicates are removed and have released their names."""
        for survivor, name in self.output_names:
            self.graph.rename_value(survivor, name)


def eliminate_common_subexpressions(graph: Graph, param_limit: int = DEFAULT_DEDUPLICATE_LIMIT,
                                    stats: RuleStats | None = None) -> int:
    """Merge equal params and equal computations; returns how many params and nodes it merged.

    Params are equal when dtype, shape and bytes are (compared exactly, up to ``param_limit``
    elements). Nodes are equal when op, inputs (the same values; either order for commutative
    ops) and attributes are. A graph output keeps its name on the value that survives.
    """
    stats = stats if stats is not None else RuleStats()
    merger = _Merger(graph, stats)
    merged = 0
    params_seen: dict[tuple, Value] = {}
    for value, array in list(graph.params.items()):
        if array.size > param_limit:
            continue
        key = _param_key(array)
        survivor = params_seen.setdefault(key, value)
        if survivor is value or graph.params[survivor].tobytes() != array.tobytes():
            continue
        if merger.can_merge([value], [survivor]):
            merger.merge(value, survivor)
            merged += 1
    if merged:
        graph.remove_unused_params()

    nodes_seen: dict[tuple, Node] = {}
    duplicates: list[Node] = []
    for node in graph.nodes:  # topological order: a node's inputs are already merged
        key = _node_key(node)
        survivor_node = nodes_seen.setdefault(key, node)
        if survivor_node is node or not merger.can_merge(node.outputs, survivor_node.outputs):
            continue
        for duplicate, survivor in zip(node.outputs, survivor_node.outputs):
            merger.merge(duplicate, survivor)
        duplicates.append(node)
    for node in duplicates:
        graph.remove_node(node)
    merged += len(duplicates)
    merger.rename_outputs()
    stats.fired += merged
    return merged


@register_pass("cse")
@dataclass(frozen=True)
class EliminateCommonSubexpressions:
    """Merge nodes with the same op, inputs and attributes, and params with the same bytes.

    Before::

        param %a: float32[2] = [1.0, 2.0]
        param %b: float32[2] = [1.0, 2.0]
        %p: float32[2] = math.add(%x, %a) @p
        %q: float32[2] = math.add(%b, %x) @q
        %y: float32[2] = math.mul(%p, %q) @y

    after::

        param %a: float32[2] = [1.0, 2.0]
        %p: float32[2] = math.add(%x, %a) @p
        %y: float32[2] = math.mul(%p, %p) @y
    """

    param_limit: int = DEFAULT_DEDUPLICATE_LIMIT

    def __call__(self, graph: Graph) -> bool:
        return eliminate_common_subexpressions(graph, self.param_limit) > 0


# ---- identities: ops that hand their input back unchanged ------------------------------------------------------
#
# Each rewrite returns x (or a shorter chain) or a Mismatch saying why this node is not an identity.

def _forward(m: Match, value: Value, why: str) -> Value | Mismatch:
    """``value`` in place of the root's output, when it has the same type and can take the output name."""
    result = m.root.output
    if value.type != result.type:
        return Mismatch(why)
    if _is_output(m.graph, result) and _is_output(m.graph, value):
        return Mismatch("x is a graph output too (one value cannot carry two output names)")
    return value


def _forward_x(why: str) -> Callable[[Any, Match], Value | Mismatch]:
    return lambda ctx, m: _forward(m, m["x"], why)


def _cast_to_same_dtype(ctx: Any, m: Match) -> Value | Mismatch:
    return _forward(m, m["x"], f"casts {m['x'].dtype} to {m.root.attrs['dtype']}")


def _casts_exactly(source: str, target: str) -> bool:
    """Whether every value of dtype ``source`` survives a cast to ``target`` and back."""
    source_type, target_type = np.dtype(source), np.dtype(target)
    if source_type == target_type or source_type.kind == "b":
        return True
    if source_type.kind == "f":
        return target_type.kind == "f" and target_type.itemsize >= source_type.itemsize
    if target_type.kind in "iu":
        return bool(np.can_cast(source_type, target_type, casting="safe"))
    if target_type.kind == "f":
        magnitude_bits = np.iinfo(source_type).bits - (1 if source_type.kind == "i" else 0)
        return magnitude_bits <= np.finfo(target_type).nmant + 1
    return False


def _cast_round_trip(ctx: Any, m: Match) -> Value | Mismatch:
    x, middle = m["x"], m.node("inner").attrs["dtype"]
    if x.dtype != m.root.attrs["dtype"]:
        return Mismatch("does not cast back to the dtype it started from")
    if not _casts_exactly(x.dtype, middle):
        return Mismatch(f"{x.dtype} -> {middle} loses values, so the round trip is not an identity")
    return _forward(m, x, "does not cast back to the dtype it started from")


def _reshape_of_reshape(ctx: Any, m: Match) -> Value | Mismatch:
    target = m.root.output.shape
    if m["x"].type == m.root.output.type:
        return _forward(m, m["x"], "changes the shape")
    # the resolved output shape: a -1 in the outer target might resolve differently against x
    return ctx.op("tensor.reshape", m["x"], shape=tuple(target))


def _is_identity_perm(perm: tuple[int, ...]) -> bool:
    return tuple(perm) == tuple(range(len(perm)))


def _transpose_identity(ctx: Any, m: Match) -> Value | Mismatch:
    perm = m.root.attrs["perm"]
    if not _is_identity_perm(perm):
        return Mismatch("the perm moves axes")
    return _forward(m, m["x"], "the perm moves axes")


def _transpose_of_transpose(ctx: Any, m: Match) -> Value | Mismatch:
    inner, outer = m.node("inner").attrs["perm"], m.root.attrs["perm"]
    composed = tuple(inner[axis] for axis in outer)
    if _is_identity_perm(composed):
        return _forward(m, m["x"], "the perms do not cancel")
    return ctx.op("tensor.transpose", m["x"], perm=composed)


def _transpose_as_reshape(ctx: Any, m: Match) -> Value | Mismatch:
    x, perm = m["x"], m.root.attrs["perm"]
    moved = [axis for axis in perm if x.shape[axis] != 1]
    if moved != sorted(moved):
        return Mismatch("moves axes longer than 1, so it is not a reshape")
    shape = m.root.output.shape
    if sum(1 for dim in shape if isinstance(dim, str)) > 1:
        return Mismatch("a reshape to several symbolic dims could not run")
    return ctx.op("tensor.reshape", x, shape=tuple(shape))


def _slice_whole(ctx: Any, m: Match) -> Value | Mismatch:
    x = m["x"]
    for dim, item in zip(x.shape, slice_per_axis(x.type.rank, x.shape, m.root.attrs)):
        if item != slice(None) and range(*item.indices(dim)) != range(dim):  # sliced dims are static
            return Mismatch("keeps part of x, or reverses or strides it")
    return _forward(m, x, "keeps part of x")


def _concat_of_one(ctx: Any, m: Match) -> Value | Mismatch:
    if len(m.root.inputs) != 1:
        return Mismatch("joins several inputs")
    return _forward(m, m.root.inputs[0], "joins several inputs")


def _split_into_one(ctx: Any, m: Match) -> list[Value] | Mismatch:
    if len(m.root.outputs) != 1:
        return Mismatch("splits into several parts")
    forwarded = _forward(m, m["x"], "splits into several parts")
    return forwarded if isinstance(forwarded, Mismatch) else [forwarded]


def _forward_x_when(condition: Callable[[Match], bool], why: str) -> Callable[[Any, Match], Value | Mismatch]:
    return lambda ctx, m: _forward(m, m["x"], why) if condition(m) else Mismatch(why)


def _pads_are_zero(m: Match) -> bool:
    return not any(m.root.attrs["pads"])


def _repeats_are_one(m: Match) -> bool:
    return all(repeat == 1 for repeat in m.root.attrs["repeats"])


def _clip_is_unbounded(m: Match) -> bool:
    return m.root.attrs["min"] is None and m.root.attrs["max"] is None


def _of_x(op: str) -> Op:
    return Op(op, AnyValue("x"))


def _twice(op: str) -> Op:
    """``op(op(x))``; the inner node may have other users (it then stays for them)."""
    return Op(op, Op(op, AnyValue("x"), name="inner", shared=True))


BROADCASTS = "the constant broadcasts x to a bigger shape"

IDENTITY_RULES = RuleSet([
    Rule("mul_by_one", Op("math.mul", AnyValue("x"), Const("one", 1.0)), _forward_x(BROADCASTS)),
    Rule("div_by_one", Op("math.div", AnyValue("x"), Const("one", 1.0)), _forward_x(BROADCASTS)),
    Rule("add_zero", Op("math.add", AnyValue("x"), Const("zero", 0.0)), _forward_x(BROADCASTS)),
    Rule("sub_zero", Op("math.sub", AnyValue("x"), Const("zero", 0.0)), _forward_x(BROADCASTS)),
    Rule("cast_to_same_dtype", _of_x("math.cast"), _cast_to_same_dtype),
    Rule("cast_round_trip", _twice("math.cast"), _cast_round_trip),
    Rule("reshape_to_same_shape", _of_x("tensor.reshape"), _forward_x("changes the shape")),
    Rule("reshape_of_reshape", _twice("tensor.reshape"), _reshape_of_reshape),
    Rule("transpose_identity", _of_x("tensor.transpose"), _transpose_identity),
    Rule("transpose_of_transpose", _twice("tensor.transpose"), _transpose_of_transpose),
    Rule("transpose_as_reshape", _of_x("tensor.transpose"), _transpose_as_reshape),
    Rule("expand_to_same_shape", _of_x("tensor.expand"), _forward_x("expands x to a bigger shape")),
    Rule("slice_whole", _of_x("tensor.slice"), _slice_whole),
    Rule("concat_of_one", Op("tensor.concat", any_inputs=True), _concat_of_one),
    Rule("split_into_one", _of_x("tensor.split"), _split_into_one),
    Rule("pad_by_zero", _of_x("tensor.pad"), _forward_x_when(_pads_are_zero, "pads are not all zero")),
    Rule("tile_by_one", _of_x("tensor.tile"), _forward_x_when(_repeats_are_one, "repeats are not all one")),
    Rule("neg_of_neg", _twice("math.neg"), _forward_x("changes the type")),
    Rule("clip_unbounded", _of_x("math.clip"), _forward_x_when(_clip_is_unbounded, "clip has a bound")),
])


def remove_identities(graph: Graph, stats: dict[str, RuleStats] | None = None) -> int:
    """Apply ``IDENTITY_RULES`` to a fixed point; returns how many rewrites happened."""
    return apply_rules(graph, IDENTITY_RULES, stats)


@register_pass("identities")
@dataclass(frozen=True)
class RemoveIdentities:
    """Remove ops that hand their input back unchanged and shorten reshape/transpose/cast chains.

    Before::

        %a: float32[2,3] = math.mul(%x, %one) @a
        %t: float32[3,2] = tensor.transpose(%a) {perm=(1, 0)} @t
        %u: float32[2,3] = tensor.transpose(%t) {perm=(1, 0)} @u
        %y: float32[2,3] = math.relu(%u) @y

    after::

        %y: float32[2,3] = math.relu(%x) @y

    Adding zero may turn a -0.0 into +0.0; everything else is exact.
    """

    def __post_init__(self) -> None:
        object.__setattr__(self, "_stats", {})

    def __call__(self, graph: Graph) -> bool:
        self._stats.clear()
        return remove_identities(graph, self._stats) > 0

    def explain(self) -> dict[str, dict[str, Any]]:
        return {name: stat.to_json() for name, stat in self._stats.items()}


# ---- the composite -----------------------------------------------------------------------------------------------

@register_pass("cleanup")
@dataclass(frozen=True)
class Cleanup:
    """Fold constants, remove identities, merge common subexpressions, drop dead code; to a fixed point.

    Every pipeline starts with it. ``explain()`` gives per rule how often it fired over all
    rounds, and why it refused the candidates that are still in the graph after the last round.
    """

    fold_limit: int = DEFAULT_FOLD_LIMIT
    max_rounds: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "_stats", {})

    def __call__(self, graph: Graph) -> bool:
        totals: dict[str, RuleStats] = self._stats
        totals.clear()
        changed = False
        for _ in range(self.max_rounds):
            folded, merged, identities = RuleStats(), RuleStats(), {}
            work = fold_constants(graph, self.fold_limit, folded)
            work += remove_identities(graph, identities)
            work += eliminate_common_subexpressions(graph, stats=merged)
            dead = eliminate_dead_code(graph)
            round_stats = {"fold_constants": folded, **identities, "merge_common_subexpressions": merged,
                           "remove_dead_code": RuleStats(fired=dead)}
            for name, stat in round_stats.items():
                total = totals.setdefault(name, RuleStats())
                total.fired += stat.fired
                total.refused = stat.refused  # only the last round's refusals are still true
            if not work + dead:
                break
            changed = True
        else:
            logger.warning("cleanup did not settle in %d rounds; raise max_rounds", self.max_rounds)
        return changed

    def explain(self) -> dict[str, dict[str, Any]]:
        return {name: stat.to_json() for name, stat in self._stats.items()}
