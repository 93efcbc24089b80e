"""Find the transformer blocks whose residual stream token passes may reduce.

A block is an ``nn.attention`` (recognized by ``fuse``) whose output, through the projection
and the reshapes around it, is added back to a rank-3 residual stream ``(B, N, C)``. The
reduction point is that sum (pre-norm blocks, ViT/DeiT), or the layer norm right after it when
the sum feeds nothing else (post-norm blocks, BERT). Reducing there means the MLP and every
later block see fewer tokens, as in ToMe and EViT.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...ir.graph import Graph, Node, Value

# ops between an attention output and the residual add: head merge, projection, bias, scale
_PROJECTION_OPS = {"tensor.reshape", "tensor.transpose", "nn.linear", "linalg.matmul", "math.add", "math.mul"}
_MAX_PROJECTION_DEPTH = 8


@dataclass(frozen=True)
class TokenBlock:
    """One transformer block, by the names of its attention node and its reduction point."""

    index: int
    attention: str   # the nn.attention node
    point: str       # the residual-stream value tokens are reduced at
    tokens: int      # tokens in the stream (original graph)
    batch: int | str
    channels: int | str


def _residual_add(graph: Graph, attention: Node) -> Node | None:
    tokens = attention.inputs[0].shape[-2]
    reached: set[int] = {id(attention.outputs[0])}
    frontier: list[Value] = [attention.outputs[0]]
    for _ in range(_MAX_PROJECTION_DEPTH):
        following: list[Value] = []
        for value in frontier:
            for user, _ in value.uses:
                if user.op == "math.add" and len(user.inputs) == 2:
                    first, second = user.inputs
                    stream = second if id(first) in reached else first
                    if (id(stream) not in reached and stream.type.rank == 3 and stream.shape[1] == tokens
                            and tuple(user.outputs[0].shape) == tuple(stream.shape)):
                        return user
                if user.op in _PROJECTION_OPS and id(user.outputs[0]) not in reached:
                    reached.add(id(user.outputs[0]))
                    following.append(user.outputs[0])
        frontier = following
        if not frontier:
            break
    return None


def _point(graph: Graph, add: Node) -> Value:
    value = add.outputs[0]
    users = [user for user, _ in value.uses]
    is_output = any(value is out for out in graph.outputs)
    if len(users) == 1 and users[0].op == "nn.layer_norm" and users[0].inputs[0] is value and not is_output:
        return users[0].outputs[0]  # post-norm: the stream is the normalized sum
    return value


def find_blocks(graph: Graph) -> list[TokenBlock]:
    """The encoder blocks of ``graph`` in order (causal attention, i.e. decoders, is left alone)."""
    blocks: list[TokenBlock] = []
    for node in graph.nodes:
        if node.op != "nn.attention" or node.attrs.get("causal"):
            continue
        add = _residual_add(graph, node)
        if add is None:
            continue
        point = _point(graph, add)
        batch, tokens, channels = point.shape
        blocks.append(TokenBlock(len(blocks), node.name, point.name, tokens, batch, channels))
    return blocks


def protected_prefix(graph: Graph, blocks: list[TokenBlock]) -> int:
    """How many leading tokens later nodes read by position (a class token: 1; DeiT: 2)."""
    if not blocks:
        return 0
    names = {block.point for block in blocks}
    tokens = blocks[0].tokens
    seen_point = False
    prefix = 0
    for node in graph.nodes:
        if any(value.name in names for value in node.outputs):
            seen_point = True
            continue
        if not seen_point or not node.inputs or node.inputs[0].type.rank != 3 or node.inputs[0].shape[1] != tokens:
            continue
        if node.op == "tensor.slice":
            axes = node.attrs["axes"] if node.attrs["axes"] is not None else range(len(node.attrs["starts"]))
            for axis, end in zip(axes, node.attrs["ends"]):
                if axis % 3 == 1:
                    prefix = max(prefix, min(end, tokens))
        elif node.op == "tensor.gather" and node.attrs["axis"] % 3 == 1:
            array = graph.param_array(node.inputs[1])
            if array is not None and array.size:
                prefix = max(prefix, int((array % tokens).max()) + 1)
    return prefix if prefix < tokens else 0
