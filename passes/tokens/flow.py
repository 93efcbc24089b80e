"""Token-count flow: carry a reduced token axis through the rest of the graph.

A token pass replaces the residual stream ``(B, N, C)`` after some block by a stream with fewer
tokens. Every later node must then be rebuilt: types re-inferred, and the attributes that name
sizes (reshape and expand shapes) rewritten. Exporters merge the token axis with the batch
before linears (``(B, N, C) -> (B*N, C)``) and split it again into heads, so a dim is tracked as
a tuple of *atoms*: factors with their old and new size, and a tag naming the reduction that
changed them. A reshape redistributes atoms over its output dims, a transpose permutes them; a
node that would mix a reduced token axis with something that was not reduced (a positional
embedding added later, a softmax over tokens outside attention) is refused with its name.

``TokenFlow.visit`` rebuilds one node; the pass walks the graph once, calling it on every
original node in order and splicing in the reductions at block boundaries as it reaches them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import OptcError
from ...ir.graph import Graph, Node, Value
from ...ir.ops.registry import normalize_axis


class TokenFlowError(OptcError):
    """A node downstream of a token reduction cannot follow the new token count."""


@dataclass(frozen=True)
class Atom:
    """One factor of a dim: its size in the original graph, its size now, and which reduction
    changed it (None for factors no reduction touched)."""

    old: int
    new: int
    tag: int | None = None


Dim = tuple[Atom, ...]
Dims = tuple[Dim, ...]


def plain(size: int) -> Dim:
    return (Atom(size, size),)


def old_size(dim: Dim) -> int:
    return math.prod(atom.old for atom in dim)


def new_size(dim: Dim) -> int:
    return math.prod(atom.new for atom in dim)


def tagged(dims: Dims) -> bool:
    return any(atom.tag is not None for dim in dims for atom in dim)


def dim_tagged(dim: Dim) -> bool:
    return any(atom.tag is not None for atom in dim)


def token_dim(dim: Dim) -> bool:
    """A dim that is exactly one reduced token axis."""
    return len(dim) == 1 and dim[0].tag is not None


Rule = Callable[["TokenFlow", Node, list[Dims]], tuple[dict[str, Any], list[Dims]]]
RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(function: Rule) -> Rule:
        for op in ops:
            RULES[op] = function
        return function

    return register


@dataclass
class TokenFlow:
    """The atoms of every value a reduction reached, and the rebuild of the nodes they feed."""

    graph: Graph
    protect: int = 0                                          # leading tokens reads may index
    sizes: dict[int, Value] = field(default_factory=dict)    # tag -> (B, N) merged-token sizes
    proportional: bool = True                                 # add log(size) to attention scores
    dims: dict[int, Dims] = field(default_factory=dict)      # id(value) -> atoms
    steps: dict[int, tuple] = field(default_factory=dict)    # tag -> (previous tag, reduce.Reduced)
    key_masks: dict[str, Value] = field(default_factory=dict)  # attention node -> its (B, N) key mask, carried

    # ---- atoms of values ---------------------------------------------------------------------------
    def of(self, value: Value) -> Dims:
        known = self.dims.get(id(value))
        if known is not None:
            return known
        shape = value.shape
        if not all(isinstance(dim, int) for dim in shape):
            raise TokenFlowError(f"value {value.name} has a symbolic shape {shape}; token passes need static shapes "
                                 f"(compile with --shape to fix the batch)")
        return tuple(plain(dim) for dim in shape)

    def set(self, value: Value, dims: Dims) -> None:
        if tuple(new_size(dim) for dim in dims) != tuple(value.shape):
            raise TokenFlowError(f"value {value.name}: tracked dims {[new_size(d) for d in dims]} disagree with "
                                 f"its type {value.shape}")
        if tagged(dims):
            self.dims[id(value)] = dims

    def start(self, value: Value, axis: int, original: int, tag: int) -> None:
        """Mark ``value``'s ``axis`` as reduction ``tag``'s token axis, ``original`` tokens before any."""
        dims = list(self.of(value))
        dims[axis] = (Atom(original, value.shape[axis], tag),)
        self.dims[id(value)] = tuple(dims)

    def tag_of(self, value: Value, axis: int) -> int | None:
        dim = self.of(value)[axis]
        return dim[0].tag if token_dim(dim) else None

    # ---- rebuilding ----------------------------------------------------------------------------
    def visit(self, node: Node) -> Node:
        """Rebuild ``node`` if a reduced token axis reaches it; returns the node now in the graph."""
        in_dims = [self.of(value) for value in node.inputs]
        if not any(tagged(dims) for dims in in_dims):
            return node
        hook = HOOKS.get(node.op)
        if hook is not None:
            replaced = hook(self, node, in_dims)
            if replaced is not None:
                return replaced
        handler = RULES.get("math.*" if node.op.startswith("math.") else node.op)
        if handler is None:
            raise TokenFlowError(f"node {node.name} ({node.op}) reads a tensor whose token count was reduced, and "
                                 f"token passes do not know how {node.op} treats tokens; reduce tokens after it "
                                 f"(start=) or not at all")
        attrs, out_dims = handler(self, node, in_dims)
        rebuilt = self.graph.rebuild_node(node, list(node.inputs), attrs)
        for value, dims in zip(rebuilt.outputs, out_dims):
            self.set(value, dims)
        return rebuilt

    def fail(self, node: Node, why: str) -> TokenFlowError:
        return TokenFlowError(f"node {node.name} ({node.op}): {why}")


# ---- rules ---------------------------------------------------------------------------------------

def broadcast(flow: TokenFlow, node: Node, operands: Sequence[Dims], out_shape: Sequence[int]) -> Dims:
    """Atoms of a broadcasting result: the tagged operand dim wins; anything else it meets must be 1."""
    rank = len(out_shape)
    out: list[Dim] = []
    for index in range(rank):
        chosen: Dim | None = None
        for dims in operands:
            position = index - (rank - len(dims))
            if position < 0:
                continue
            dim = dims[position]
            if old_size(dim) == 1 and not dim_tagged(dim):
                continue
            if chosen is None or (dim_tagged(dim) and not dim_tagged(chosen)):
                if chosen is not None and not dim_tagged(chosen) and old_size(chosen) != 1:
                    raise flow.fail(node, f"combines the reduced token axis with a tensor of {old_size(chosen)} "
                                          f"tokens that was not reduced (e.g. an embedding added after the "
                                          f"reduction point); reduce tokens after this node")
                chosen = dim
            elif dim_tagged(dim) or dim_tagged(chosen):
                if dim != chosen:
                    raise flow.fail(node, f"combines a reduced token axis with a tensor of {old_size(dim)} "
                                          f"tokens that was not reduced the same way")
        out.append(chosen if chosen is not None else plain(out_shape[index]))
    return tuple(out)


def _old_shape(dims: Dims) -> tuple[int, ...]:
    return tuple(old_size(dim) for dim in dims)


def _out_shape(node: Node, index: int = 0) -> tuple[int, ...]:
    return tuple(node.outputs[index].shape)


@rule("math.*")
def _elementwise(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    return node.attrs, [broadcast(flow, node, in_dims, _out_shape(node))]


def _keep_axes(flow: TokenFlow, node: Node, dims: Dims, axes: Sequence[int], what: str) -> None:
    for axis in axes:
        if dim_tagged(dims[axis]):
            raise flow.fail(node, f"{what} over the reduced token axis")


@rule("nn.layer_norm", "nn.rms_norm")
def _norm(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x = in_dims[0]
    axis = normalize_axis(node.attrs["axis"], len(x))
    _keep_axes(flow, node, x, range(axis, len(x)), "normalizes")
    return node.attrs, [x]


@rule("nn.softmax", "nn.log_softmax")
def _softmax(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x = in_dims[0]
    _keep_axes(flow, node, x, [normalize_axis(node.attrs["axis"], len(x))], "takes a softmax")
    return node.attrs, [x]


@rule("nn.linear")
def _linear(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x = in_dims[0]
    if any(tagged(dims) for dims in in_dims[1:]) or dim_tagged(x[-1]):
        raise flow.fail(node, "contracts over the reduced token axis")
    return node.attrs, [x[:-1] + (plain(_out_shape(node)[-1]),)]


@rule("linalg.matmul")
def _matmul(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    a, b = in_dims
    if len(a) < 2 or len(b) < 2:
        raise flow.fail(node, "a vector matmul reads the reduced token axis")
    if dim_tagged(a[-1]) or dim_tagged(b[-2]) or dim_tagged(b[-1]):
        raise flow.fail(node, "contracts over the reduced token axis (attention that was not recognized?)")
    out_shape = _out_shape(node)
    batch = broadcast(flow, node, [a[:-2], b[:-2]], out_shape[:-2])
    return node.attrs, [batch + (a[-2], b[-1])]


@rule("nn.attention")
def _attention(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    query, key, value = in_dims[:3]
    if key[-2] != value[-2]:
        raise flow.fail(node, "keys and values were reduced differently")
    if dim_tagged(query[-1]) or dim_tagged(value[-1]):
        raise flow.fail(node, "the head dim carries tokens")
    if len(in_dims) == 4:
        mask = in_dims[3]
        key_dim = mask[-1]
        if not dim_tagged(key_dim) and old_size(key_dim) != 1 and dim_tagged(key[-2]):
            raise flow.fail(node, "its mask covers every original token; token passes cannot reduce a masked "
                                  "attention yet")
    batch = broadcast(flow, node, [query[:-2], key[:-2], value[:-2]], _out_shape(node)[:-2])
    return node.attrs, [batch + (query[-2], value[-1])]


def distribute(flow: TokenFlow, node: Node, dims: Dims, out_old: Sequence[int]) -> Dims:
    """Spread ``dims``' atoms, in order, over output dims of the given old sizes.

    Plain atoms may be split into factors; a tagged atom must land whole in one output dim.
    """
    queue = [atom for dim in dims for atom in dim if atom.old != 1]
    out: list[Dim] = []
    for size in out_old:
        taken: list[Atom] = []
        need = size
        while need > 1:
            if not queue:
                raise flow.fail(node, "reshapes the reduced token axis in a way token passes cannot follow")
            atom = queue[0]
            if need % atom.old == 0:
                taken.append(queue.pop(0))
                need //= atom.old
            elif atom.tag is None and atom.old % need == 0:
                taken.append(Atom(need, need))
                queue[0] = Atom(atom.old // need, atom.old // need)
                need = 1
            else:
                raise flow.fail(node, "splits the reduced token axis, or merges it with a neighbour it does not "
                                      "divide; token passes cannot follow that reshape")
        out.append(tuple(taken) if taken else plain(1))
    if queue:
        raise flow.fail(node, "reshapes the reduced token axis in a way token passes cannot follow")
    return tuple(out)


def _reshape_target(node: Node) -> tuple[int, ...]:
    shape = _out_shape(node)
    if not all(isinstance(dim, int) for dim in shape):
        raise TokenFlowError(f"node {node.name} has a symbolic shape; token passes need static shapes")
    return shape


@rule("tensor.reshape")
def _reshape(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    out = distribute(flow, node, in_dims[0], _reshape_target(node))
    return dict(node.attrs, shape=tuple(new_size(dim) for dim in out)), [out]


@rule("tensor.expand")
def _expand(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x = in_dims[0]
    target = _reshape_target(node)
    out = list(broadcast(flow, node, [x], target))
    for index, size in enumerate(target):
        position = index - (len(target) - len(x))
        if position < 0 or (old_size(x[position]) == 1 and not dim_tagged(x[position])):
            out[index] = plain(size)
    return dict(node.attrs, shape=tuple(new_size(dim) for dim in out)), [tuple(out)]


@rule("tensor.transpose")
def _transpose(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x = in_dims[0]
    return node.attrs, [tuple(x[axis] for axis in node.attrs["perm"])]


@rule("tensor.slice")
def _slice(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x = in_dims[0]
    out = list(x)
    out_shape = _out_shape(node)
    axes = node.attrs["axes"] if node.attrs["axes"] is not None else range(len(node.attrs["starts"]))
    steps = node.attrs["steps"] or [1] * len(node.attrs["starts"])
    for axis, start, end, step in zip(axes, node.attrs["starts"], node.attrs["ends"], steps):
        axis = normalize_axis(axis, len(x))
        dim = x[axis]
        if dim_tagged(dim):
            old = old_size(dim)
            start, end, _ = slice(start, end, step).indices(old)
            if not token_dim(dim) or step != 1 or end > flow.protect:
                raise flow.fail(node, f"reads tokens {start}..{end - 1} by position, but only the first "
                                      f"{flow.protect} (protected) tokens keep their positions; protect them "
                                      f"with protect={end}")
        out[axis] = plain(out_shape[axis])
    return node.attrs, [tuple(out)]


@rule("tensor.gather")
def _gather(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x, indices = in_dims
    axis = normalize_axis(node.attrs["axis"], len(x))
    if dim_tagged(x[axis]):
        array = flow.graph.param_array(node.inputs[1])
        if array is None or not token_dim(x[axis]) or array.size == 0 or int(np.max(array % old_size(x[axis]))) >= flow.protect:
            raise flow.fail(node, f"gathers tokens by position, but only the first {flow.protect} (protected) "
                                  f"tokens keep their positions; protect the ones it reads")
    if tagged(indices):
        raise flow.fail(node, "indexes with a tensor that carries reduced tokens")
    out_shape = _out_shape(node)
    middle = tuple(plain(size) for size in out_shape[axis:axis + len(indices)])
    return node.attrs, [x[:axis] + middle + x[axis + 1:]]


@rule("tensor.concat")
def _concat(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    axis = normalize_axis(node.attrs["axis"], len(in_dims[0]))
    if any(dim_tagged(dims[axis]) for dims in in_dims):
        raise flow.fail(node, "concatenates along the reduced token axis")
    rest = [dims[:axis] + (plain(1),) + dims[axis + 1:] for dims in in_dims]
    shape = list(_out_shape(node))
    shape[axis] = 1
    out = list(broadcast(flow, node, rest, shape))
    out[axis] = plain(_out_shape(node)[axis])
    return node.attrs, [tuple(out)]


@rule("tensor.split")
def _split(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x = in_dims[0]
    axis = normalize_axis(node.attrs["axis"], len(x))
    if dim_tagged(x[axis]):
        raise flow.fail(node, "splits the reduced token axis")
    return node.attrs, [x[:axis] + (plain(value.shape[axis]),) + x[axis + 1:] for value in node.outputs]


def _reduced(flow: TokenFlow, node: Node, x: Dims, axes: Sequence[int], keepdims: bool) -> Dims:
    out: list[Dim] = []
    for axis, dim in enumerate(x):
        if axis in axes:
            if keepdims:
                out.append(plain(1))
        else:
            out.append(dim)
    return tuple(out)


@rule("reduce.mean", "reduce.sum", "reduce.max", "reduce.min", "reduce.prod", "reduce.l1", "reduce.l2",
      "reduce.sum_square", "reduce.log_sum_exp")
def _reduce(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x = in_dims[0]
    axes = node.attrs["axes"]
    axes = range(len(x)) if axes is None else [normalize_axis(axis, len(x)) for axis in axes]
    return node.attrs, [_reduced(flow, node, x, list(axes), node.attrs["keepdims"])]


@rule("reduce.argmax", "reduce.argmin")
def _arg_reduce(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> tuple[dict[str, Any], list[Dims]]:
    x = in_dims[0]
    axis = normalize_axis(node.attrs["axis"], len(x))
    if dim_tagged(x[axis]):
        raise flow.fail(node, "returns token positions, which the reduction changed")
    return node.attrs, [_reduced(flow, node, x, [axis], node.attrs["keepdims"])]


# ---- hooks: nodes that read merged tokens differently ------------------------------------------------

Hook = Callable[[TokenFlow, Node, list[Dims]], "Node | None"]
HOOKS: dict[str, Hook] = {}
