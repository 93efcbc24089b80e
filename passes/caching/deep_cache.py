"""DeepCache: split a U-Net denoiser into a full step and a cached step at one skip branch.

A U-Net joins each skip connection with the feature coming up from deeper levels, usually by
``tensor.concat(deep, skip)``. The deep operand changes slowly across sampling steps, so the
*full* step computes everything and also returns it (a state output), while the *cached* step
takes it as a state input and never computes the deep branch (every node only it needed):

    before:
      %deep: float32[1,64,8,8] = nn.upsample(%up2)        # the whole 4x4 and 2x2 U-Net behind it
      %cat: float32[1,96,8,8] = tensor.concat(%deep, %skip1) {axis=1}
    full:    ... the same, returning %eps, %deep_feature
    cached:  input %deep_feature: float32[1,64,8,8]
      %cat: float32[1,96,8,8] = tensor.concat(%deep_feature, %skip1) {axis=1}

Depth 1 is the outermost skip (the cheapest cached step); deeper branches cache less. Joins by
``math.add`` (DiT-style residual caches) are found with ``joins=("math.add",)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import OptcError, PassError
from ...ir.graph import Graph, Node, Value
from ...ir.verify import verify
from .split import EntrySplit

PASS_NAME = "split_deep_cache"


class DeepCacheError(PassError):
    def __init__(self, message: str) -> None:
        super().__init__(PASS_NAME, [], OptcError(message))


@dataclass(frozen=True)
class SkipBranch:
    """One skip join: the node, its skip and deep operands, and what caching the deep one saves."""

    depth: int
    join: str               # node name of the concat/add
    skip: str               # value name of the skip operand
    deep: str               # value name of the deep operand (the cached feature)
    shape: tuple            # the deep feature's shape
    deep_nodes: tuple[str, ...]  # nodes only the deep operand needs (the cached step drops them)
    deep_flops: int


def _ancestors(value: Value) -> set[int]:
    """ids of the nodes ``value`` depends on (its producer included)."""
    seen: set[int] = set()
    stack = [value.producer] if value.producer is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(item.producer for item in node.inputs if item.producer is not None)
    return seen


def _only_needed_by(graph: Graph, value: Value) -> list[Node]:
    """The nodes that become dead once ``value`` is no longer computed, in graph order."""
    trial = graph.clone()
    twin = trial.find(value.name)
    stand_in = trial.add_input("__stand_in", twin.type)
    trial.replace_all_uses(twin, stand_in)
    trial.remove_dead_nodes()
    kept = {node.name for node in trial.nodes}
    return [node for node in graph.nodes if node.name not in kept]


def find_skip_branches(graph: Graph, joins: tuple[str, ...] = ("tensor.concat",)) -> list[SkipBranch]:
    """The skip joins of a U-Net, outermost (depth 1) first.

    A join of two operands is a skip join when one operand (the skip) is an ancestor of the
    other (the deep path continues from it). Depth orders joins by how much the deep operand
    depends on: the outermost skip's deep operand depends on the most.
    """
    found = []
    for node in graph.nodes:
        if node.op not in joins or len(node.inputs) != 2:
            continue
        first, second = node.inputs
        if first.producer is None or second.producer is None:
            continue
        if id(first.producer) in _ancestors(second):
            skip, deep = first, second
        elif id(second.producer) in _ancestors(first):
            skip, deep = second, first
        else:
            continue
        found.append((len(_ancestors(deep)), node, skip, deep))
    found.sort(key=lambda item: -item[0])
    branches = []
    for depth, (_, node, skip, deep) in enumerate(found, start=1):
        dropped = _only_needed_by(graph, deep)
        flops = sum(item.opdef.count_flops([v.type for v in item.inputs], [v.type for v in item.outputs], item.attrs)
                    for item in dropped)
        branches.append(SkipBranch(depth, node.name, skip.name, deep.name, tuple(deep.shape),
                                   tuple(item.name for item in dropped), int(flops)))
    return branches


def split_deep_cache(graph: Graph, depth: int = 1, *, feature: str = "deep_feature",
                     joins: tuple[str, ...] = ("tensor.concat",)) -> EntrySplit:
    """``full`` and ``cached`` entry points sharing the deep feature of the skip at ``depth``.

    ``full`` returns the source outputs and ``feature``; ``cached`` takes the source inputs and
    ``feature`` and returns the source outputs. The state buffer ``feature`` starts unset
    (``init="none"``): a cached step before any full step is an error.
    """
    branches = find_skip_branches(graph, joins)
    if not branches:
        raise DeepCacheError(f"graph {graph.name} has no skip join ({', '.join(joins)} of a value with one of its "
                             "ancestors); DeepCache needs a U-Net-style skip connection")
    if not 1 <= depth <= len(branches):
        raise DeepCacheError(f"depth {depth} is out of range: graph {graph.name} has {len(branches)} skip branches")
    branch = branches[depth - 1]
    if any(value.name == feature for value in graph.inputs + graph.outputs):
        raise DeepCacheError(f"graph {graph.name} already has an input or output named '{feature}'; pass feature=...")

    full = graph.clone()
    full.name = f"{graph.name}_full"
    deep = full.find(branch.deep)
    if not full.rename_value(deep, feature):
        raise DeepCacheError(f"graph {graph.name} already has a value named '{feature}'; pass feature=...")
    full.outputs = list(full.outputs) + [deep]

    cached = graph.clone()
    cached.name = f"{graph.name}_cached"
    stored = cached.add_input(feature, cached.find(branch.deep).type)
    cached.replace_all_uses(cached.find(branch.deep), stored)
    cached.remove_dead_nodes()
    for entry in (full, cached):
        verify(entry)
    state = {feature: {"init": "none", "inputs": {"cached": feature}, "outputs": {"full": feature}}}
    info = {"branch": branch, "branches": branches, "flops": {"full": full.flops(), "cached": cached.flops()}}
    return EntrySplit({"full": full, "cached": cached}, state, info)


__all__ = ["DeepCacheError", "SkipBranch", "find_skip_branches", "split_deep_cache"]
