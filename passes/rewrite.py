"""The pattern rewrite engine: rules are data, applied by a worklist to a fixed point.

A rule is a pattern rooted at one op plus a short function that builds the replacement::

    from optc.passes.rewrite import Any, Const, Mismatch, Op, Rule, RewritePass

    def drop_multiply_by_one(ctx, m):
        if m["x"].type != m.root.output.type:
            return Mismatch("the constant broadcasts x to a bigger shape")
        return m["x"]

    rules = [Rule("mul_by_one", Op("math.mul", Any("x"), Const("one", 1.0)), drop_multiply_by_one)]
    changed = RewritePass("my_cleanup", rules)(graph)

Patterns:

- ``Any("x")`` captures any value; ``Param("w")`` a constant (graph param), whose array is
  ``m.array("w")``; ``Const("c", 1.0)`` a constant whose every element equals the number.
- ``Op("nn.conv", Any("x"), Param("w"), attrs={"groups": 1}, name="conv")`` matches a node by op
  name, its inputs by sub-patterns (``inputs=None`` accepts any inputs), attributes by value or by
  predicate. ``math.add``, ``math.mul``, ``math.maximum`` and ``math.minimum`` match both input
  orders. Naming an ``Op`` captures its output value under that name and its node as
  ``m.node(name)``.
- ``OneOf(Op(...), Op(...))`` matches the first alternative that fits (forms of one computation).
- A value captured twice under one name must be the same value (``x * sigmoid(x)``).
- Nodes matched below the root must have no users outside the match, unless the ``Op`` says
  ``shared=True``; otherwise fusing would compute them twice.

The rewrite function gets a ``RewriteContext`` (``ctx.op(...)`` adds nodes just before the root,
``ctx.const(array)`` adds a param) and the ``Match``; it returns the replacement value (or one per
root output), or ``Mismatch(reason)``. The engine checks that each replacement has the type of the
value it replaces, rewires the users, removes what became dead, and records per rule how often it
fired and why it refused candidates, for ``--explain``.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any as AnyType

import numpy as np

from ..errors import VerificationError
from ..ir.builder import Builder
from ..ir.graph import Graph, Node, Value
from ..ir.verify import verify

logger = logging.getLogger(__name__)

COMMUTATIVE = frozenset({"math.add", "math.mul", "math.maximum", "math.minimum", "math.and", "math.or", "math.equal"})


@dataclass(frozen=True)
class Mismatch:
    """Why a pattern or a rule refused; shown by ``--explain``."""

    reason: str

    def __bool__(self) -> bool:
        return False


class Match:
    """The captures of one successful match."""

    __slots__ = ("graph", "root", "values", "nodes")

    def __init__(self, graph: Graph, root: Node) -> None:
        self.graph = graph
        self.root = root
        self.values: dict[str, Value] = {}
        self.nodes: dict[str, Node] = {}

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def array(self, name: str) -> np.ndarray:
        """The constant behind a captured param."""
        array = self.graph.params.get(self.values[name])
        if array is None:
            raise KeyError(f"capture {name} is not a constant")
        return array

    def attr(self, node_name: str, attr: str) -> AnyType:
        return self.nodes[node_name].attrs[attr]

    def _copy(self) -> "Match":
        copy = Match(self.graph, self.root)
        copy.values = dict(self.values)
        copy.nodes = dict(self.nodes)
        return copy


# ---- patterns -----------------------------------------------------------------------------------------

class Pattern:
    name: str | None = None

    def match(self, value: Value, m: Match) -> Match | Mismatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def _bind(self, value: Value, m: Match) -> Match | Mismatch:
        if self.name is None:
            return m
        bound = m.values.get(self.name)
        if bound is not None and bound is not value:
            return Mismatch(f"'{self.name}' would be two different values")
        m.values[self.name] = value
        return m


@dataclass
class Any(Pattern):
    """Any value, captured under ``name``."""

    name: str | None = None
    dtype: str | None = None

    def match(self, value: Value, m: Match) -> Match | Mismatch:
        if self.dtype is not None and value.dtype != self.dtype:
            return Mismatch(f"needs {self.dtype}, found {value.dtype}")
        return self._bind(value, m)


@dataclass
class Param(Pattern):
    """A constant (graph param); ``predicate`` may inspect its array."""

    name: str | None = None
    predicate: Callable[[np.ndarray], bool] | None = None
    why: str = "the constant does not fit"

    def match(self, value: Value, m: Match) -> Match | Mismatch:
        array = m.graph.params.get(value)
        if array is None:
            return Mismatch("needs a constant, found a computed value" if value.producer else "needs a constant, found a graph input")
        if self.predicate is not None and not self.predicate(array):
            return Mismatch(self.why)
        return self._bind(value, m)


def Const(name: str | None, number: float, tolerance: float = 0.0) -> Param:  # noqa: N802 - reads as a pattern
    """A constant whose every element equals ``number`` (within ``tolerance``)."""

    def equals(array: np.ndarray) -> bool:
        return array.size > 0 and bool(np.all(np.abs(array.astype(np.float64) - number) <= tolerance))

    return Param(name, equals, why=f"not a constant {number:g}")


@dataclass
class Op(Pattern):
    """A node of op ``op`` whose inputs match ``inputs`` (None: any inputs) and attributes ``attrs``."""

    op: str
    inputs: Sequence[Pattern] | None = None
    attrs: dict[str, AnyType] = field(default_factory=dict)
    name: str | None = None
    shared: bool = False  # allow users outside the match (the node then stays alive)

    def __init__(self, op: str, *inputs: Pattern, attrs: dict[str, AnyType] | None = None, name: str | None = None,
                 shared: bool = False, any_inputs: bool = False) -> None:
        self.op = op
        self.inputs = None if any_inputs else list(inputs)
        self.attrs = dict(attrs or {})
        self.name = name
        self.shared = shared

    def match(self, value: Value, m: Match) -> Match | Mismatch:
        node = value.producer
        if node is None:
            return Mismatch(f"needs {self.op}, found a {'constant' if value in m.graph.params else 'graph input'}")
        if node.op != self.op:
            return Mismatch(f"needs {self.op}, found {node.op}")
        return self.match_node(node, value, m)

    def match_node(self, node: Node, value: Value, m: Match) -> Match | Mismatch:
        for key, expected in self.attrs.items():
            actual = node.attrs.get(key)
            ok = expected(actual) if callable(expected) else actual == expected
            if not ok:
                return Mismatch(f"{node.op} with {key}={actual!r} does not fit")
        if self.inputs is not None:
            if len(node.inputs) != len(self.inputs):
                return Mismatch(f"{node.op} has {len(node.inputs)} inputs, the pattern {len(self.inputs)}")
            orders = [list(node.inputs)]
            if self.op in COMMUTATIVE and len(node.inputs) == 2:
                orders.append(list(reversed(node.inputs)))
            first_failure: Mismatch | None = None
            for order in orders:
                result: Match | Mismatch = m._copy()
                for pattern, input_value in zip(self.inputs, order):
                    result = pattern.match(input_value, result)
                    if isinstance(result, Mismatch):
                        break
                if not isinstance(result, Mismatch):
                    break
                if first_failure is None:  # report the written order's reason
                    first_failure = result
            else:
                return first_failure if first_failure is not None else Mismatch("no input order fits")
            m = result
        else:
            m = m._copy()
        m.nodes[self.name if self.name is not None else f"#{id(self)}"] = node  # '#': unnamed, kept for checks
        return self._bind(value, m)


class OneOf(Op):
    """The first of several ``Op`` patterns that matches the value.

    As a rule's root every alternative must have the same op. It is an ``Op`` whose inputs are the
    alternatives so that the engine's check for intermediates read outside the match walks the
    named nodes of every alternative (alternatives share names only for the same role).
    """

    def __init__(self, *alternatives: Op) -> None:
        ops = sorted({alternative.op for alternative in alternatives})
        super().__init__("|".join(ops), *alternatives)
        self.alternatives = list(alternatives)

    def match(self, value: Value, m: Match) -> Match | Mismatch:
        # the reason of an alternative whose own op matched says more than "needs math.div, found ..."
        deeper: list[Mismatch] = []
        shallow: list[Mismatch] = []
        for alternative in self.alternatives:
            result = alternative.match(value, m._copy())
            if not isinstance(result, Mismatch):
                return result
            root_matched = value.producer is not None and value.producer.op == alternative.op
            (deeper if root_matched else shallow).append(result)
        return (deeper or shallow)[0]

    def match_node(self, node: Node, value: Value, m: Match) -> Match | Mismatch:
        return self.match(value, m)


# ---- rules ----------------------------------------------------------------------------------------------

Rewrite = Callable[["RewriteContext", Match], "Value | Sequence[Value] | Mismatch"]


@dataclass
class Rule:
    """A pattern rooted at one op and the function that replaces what it matched."""

    name: str
    pattern: Op
    rewrite: Rewrite

    def __post_init__(self) -> None:
        if isinstance(self.pattern, OneOf):
            if "|" in self.pattern.op:
                raise ValueError(f"rule {self.name}: the alternatives at the root must share one op, not {self.pattern.op}")
            for alternative in self.pattern.alternatives:
                alternative.shared = True  # it matches the root, which the rewrite replaces

    @property
    def root_op(self) -> str:
        return self.pattern.op


class RewriteContext:
    """Builds replacement nodes just before the matched root, folding constants as it goes."""

    def __init__(self, graph: Graph, before: Node) -> None:
        self.graph = graph
        self.before = before
        self.created: list[Node] = []
        self.created_params: list[Value] = []
        self._builder = Builder(graph)

    def op(self, op: str, *inputs: Value, name: str | None = None, **attrs: AnyType) -> Value:
        outputs = self.ops(op, inputs, attrs, name=name)
        if len(outputs) != 1:
            raise VerificationError(f"{op} has {len(outputs)} outputs; use ctx.ops")
        return outputs[0]

    def ops(self, op: str, inputs: Sequence[Value], attrs: dict[str, AnyType] | None = None, name: str | None = None) -> list[Value]:
        if inputs and all(value in self.graph.params for value in inputs):
            folded = self._builder.ops(op, inputs, attrs, name=name)  # folded to params
            self.created_params.extend(value for value in folded if value in self.graph.params)
            return folded
        node = self.graph.add_node(op, inputs, attrs or {}, name=name or self.before.name, before=self.before)
        self.created.append(node)
        return node.outputs

    def const(self, array: AnyType, name: str = "const", dtype: str | None = None) -> Value:
        value = self._builder.const(array, name=name, dtype=dtype)
        self.created_params.append(value)
        return value


@dataclass
class RuleStats:
    fired: int = 0
    refused: Counter = field(default_factory=Counter)

    def to_json(self) -> dict[str, AnyType]:
        return {"fired": self.fired, "refused": dict(self.refused.most_common())}


class RuleSet:
    """Rules indexed by root op; ``RuleSet(a) + RuleSet(b)`` combines them."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules = list(rules)
        names = [rule.name for rule in self.rules]
        duplicated = {name for name in names if names.count(name) > 1}
        if duplicated:
            raise ValueError(f"rule names used twice: {sorted(duplicated)}")
        self.by_root: dict[str, list[Rule]] = defaultdict(list)
        for rule in self.rules:
            self.by_root[rule.root_op].append(rule)

    def __add__(self, other: "RuleSet | Iterable[Rule]") -> "RuleSet":
        return RuleSet(self.rules + list(other.rules if isinstance(other, RuleSet) else other))

    def __iter__(self):
        return iter(self.rules)


def apply_rules(graph: Graph, rules: RuleSet | Iterable[Rule], stats: dict[str, RuleStats] | None = None,
                max_rewrites: int = 100_000, verify_each: bool = False) -> int:
    """Apply ``rules`` until none matches; returns how many rewrites happened.

    Candidates are the nodes whose op roots some rule; after a rewrite the new nodes and the
    users of the replacement are visited again. ``verify_each`` runs the full verifier after
    every rewrite (tests do; the pass manager verifies after the whole pass anyway).
    """
    rule_set = rules if isinstance(rules, RuleSet) else RuleSet(rules)
    stats = stats if stats is not None else {}
    for rule in rule_set:
        stats.setdefault(rule.name, RuleStats())
    alive: set[int] = {id(node) for node in graph.nodes}
    worklist: list[Node] = [node for node in reversed(graph.nodes) if node.op in rule_set.by_root]
    queued: set[int] = {id(node) for node in worklist}
    rewrites = 0
    while worklist:
        node = worklist.pop()
        queued.discard(id(node))
        if id(node) not in alive:
            continue
        for rule in rule_set.by_root.get(node.op, ()):
            replaced = _try_rule(graph, rule, node, stats[rule.name])
            if replaced is None:
                continue
            created, removed, replacements = replaced
            rewrites += 1
            if rewrites > max_rewrites:
                raise VerificationError(f"rewrite rules did not reach a fixed point after {max_rewrites} rewrites (last: {rule.name})")
            if verify_each:
                verify(graph)
            alive.difference_update(id(dead) for dead in removed)
            alive.update(id(new) for new in created)
            revisit = list(created) + [user for value in replacements for user in value.users()]
            if value_producers := [value.producer for value in replacements if value.producer is not None]:
                revisit.extend(value_producers)
            for candidate in revisit:
                if id(candidate) in alive and id(candidate) not in queued and candidate.op in rule_set.by_root:
                    worklist.append(candidate)
                    queued.add(id(candidate))
            break
    if rewrites:
        graph.remove_unused_params()
    return rewrites


def _try_rule(graph: Graph, rule: Rule, node: Node, stat: RuleStats) -> tuple[list[Node], list[Node], list[Value]] | None:
    m = Match(graph, node)
    matched = rule.pattern.match_node(node, node.outputs[0], m)
    if isinstance(matched, Mismatch):
        # a candidate only counts as refused when its root op matched and something deeper did not
        stat.refused[matched.reason] += 1
        return None
    shared = _shared_intermediates(rule.pattern, matched)
    if shared:
        stat.refused[f"an intermediate result ({shared}) has users outside the pattern"] += 1
        return None
    ctx = RewriteContext(graph, node)
    result = rule.rewrite(ctx, matched)
    if isinstance(result, Mismatch):
        stat.refused[result.reason] += 1
        _discard(graph, ctx)
        return None
    replacements = [result] if isinstance(result, Value) else list(result)
    output_ids = {id(value) for value in graph.outputs}
    input_ids = {id(value) for value in graph.inputs}
    if any(id(old) in output_ids and id(new) in input_ids for old, new in zip(node.outputs, replacements)):
        stat.refused["would make a graph output a graph input directly (its name would change)"] += 1
        _discard(graph, ctx)
        return None
    if any(id(old) in output_ids and id(new) in output_ids for old, new in zip(node.outputs, replacements)):
        stat.refused["would merge two graph outputs into one value (a result name would be lost)"] += 1
        _discard(graph, ctx)
        return None
    if len(replacements) != len(node.outputs):
        raise VerificationError(f"rule {rule.name} gave {len(replacements)} replacements for {len(node.outputs)} outputs of {node.name}")
    for old, new in zip(node.outputs, replacements):
        if old.type != new.type:
            raise VerificationError(f"rule {rule.name} replaced %{old.name}: {old.type} with %{new.name}: {new.type} at {node.name}")
    for old, new in zip(node.outputs, replacements):
        was_output_name = old.name if any(old is out for out in graph.outputs) else None
        graph.replace_all_uses(old, new)
        if was_output_name:
            _take_output_name(graph, old, new, was_output_name)
    removed = _remove_dead(graph, [node] + list(matched.nodes.values()))
    stat.fired += 1
    logger.debug("rule %s fired at %s", rule.name, node.name)
    return ctx.created, removed, replacements


def _take_output_name(graph: Graph, old: Value, new: Value, name: str) -> None:
    """Keep graph output names stable across rewrites (results are keyed by them)."""
    if sum(1 for out in graph.outputs if out is new) == 1:
        graph.rename_value(old, f"{name}__replaced")
        graph.rename_value(new, name)


def _shared_intermediates(pattern: Pattern, m: Match) -> str | None:
    """The first matched non-root node whose outputs are read outside the match."""
    inside = {id(node) for node in m.nodes.values()} | {id(m.root)}
    outputs = {id(value) for value in m.graph.outputs}
    for op_pattern in _op_patterns(pattern):
        if op_pattern.shared or op_pattern is pattern:
            continue
        node = m.nodes.get(op_pattern.name if op_pattern.name is not None else f"#{id(op_pattern)}")
        if node is None:
            continue
        for value in node.outputs:
            if id(value) in outputs or any(id(user) not in inside for user, _ in value.uses):
                return node.name
    return None


def _op_patterns(pattern: Pattern) -> Iterable[Op]:
    if isinstance(pattern, Op):
        yield pattern
        for child in pattern.inputs or ():
            yield from _op_patterns(child)


def _remove_dead(graph: Graph, candidates: list[Node]) -> list[Node]:
    """Remove the candidates (and, transitively, their producers) that nothing reads any more."""
    removed: list[Node] = []
    outputs = {id(value) for value in graph.outputs}
    pending = list(candidates)
    seen: set[int] = set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        if any(value.uses or id(value) in outputs for value in node.outputs):
            continue
        if not any(candidate is node for candidate in graph.nodes):
            continue
        seen.add(id(node))
        producers = [value.producer for value in node.inputs if value.producer is not None]
        graph.remove_node(node)
        removed.append(node)
        pending.extend(producers)
    return removed


def _discard(graph: Graph, ctx: RewriteContext) -> None:
    """Undo what a refusing rule built: its nodes and constants, so a refusal changes nothing."""
    for node in reversed(ctx.created):
        if all(not value.uses for value in node.outputs):
            graph.remove_node(node)
    for value in ctx.created_params:
        if value in graph.params and not value.uses:
            del graph.params[value]
            graph._names.discard(value.name)


@dataclass
class RewritePass:
    """A pass that applies a rule set to a fixed point and keeps per-rule statistics."""

    name: str
    rules: RuleSet | list[Rule]
    verify_each: bool = False
    stats: dict[str, RuleStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pass_name = self.name

    def __call__(self, graph: Graph) -> bool:
        self.stats = {}
        return apply_rules(graph, self.rules, self.stats, verify_each=self.verify_each) > 0

    def explain(self) -> dict[str, dict[str, AnyType]]:
        return {name: stat.to_json() for name, stat in self.stats.items()}
