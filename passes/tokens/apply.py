"""Apply a token schedule: one walk over the graph that reduces at block boundaries and rebuilds
everything after them for the new counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...ir.graph import Graph, Node, Value
from ...ir.ops.registry import normalize_axis
from ...ir.verify import verify
from .find import TokenBlock
from .flow import HOOKS, RULES, Dims, TokenFlow, dim_tagged, old_size, token_dim
from .reduce import Emitter, attention_scores, follow, log_sizes_mask, merge, norm_scores, prune, weighted_mean

METHODS = ("merge", "prune")
SCORES = ("cls", "mean", "norm")


@dataclass(frozen=True)
class Settings:
    method: str = "merge"
    protect: int = 0
    score: str = "cls"          # prune only
    fuse: bool = False          # prune only
    proportional: bool = True   # merge only


@dataclass
class LayerTokens:
    """One block: tokens its attention sees, tokens after its reduction, FLOPs of its stage."""

    block: int
    attention: str
    tokens_in: int
    tokens_out: int
    flops_before: int = 0
    flops_after: int = 0


def apply_tokens(graph: Graph, blocks: Sequence[TokenBlock], counts: Sequence[int | None], settings: Settings) -> list[LayerTokens]:
    """Reduce ``graph`` in place so that ``counts[i]`` tokens leave block ``i`` (None: keep all)."""
    flow = TokenFlow(graph, protect=settings.protect, proportional=settings.proportional)
    by_point = {block.point: block for block in blocks}
    current: dict[str, Node] = {}
    tokens = blocks[0].tokens if blocks else 0
    layers: list[LayerTokens] = []
    for node in list(graph.nodes):
        node = flow.visit(node)
        current[node.name] = node
        for value in list(node.outputs):
            block = by_point.get(value.name)
            if block is None:
                continue
            target = counts[block.index]
            layer = LayerTokens(block.index, block.attention, tokens, tokens)
            layers.append(layer)
            if target is None or target >= tokens:
                continue
            reduced = _reduce(flow, graph, value, current[block.attention], block, tokens - target, settings)
            tokens = layer.tokens_out = reduced.shape[1]
    graph.remove_dead_nodes()
    verify(graph)
    return layers


def _next_node(graph: Graph, node: Node) -> Node | None:
    for index, candidate in enumerate(graph.nodes):
        if candidate is node:
            return graph.nodes[index + 1] if index + 1 < len(graph.nodes) else None
    return None


def _reduce(flow: TokenFlow, graph: Graph, stream: Value, attention: Node, block: TokenBlock, remove: int,
            settings: Settings) -> Value:
    previous_tag = flow.tag_of(stream, 1)
    emitter = Emitter(graph, _next_node(graph, stream.producer), f"tokens{block.index}")
    readers = list(stream.uses)
    batch = stream.shape[0]
    if settings.method == "prune":
        if settings.score == "norm":
            scores = norm_scores(emitter, stream)
        else:
            scores = attention_scores(emitter, attention, batch, from_class_token=settings.score == "cls")
        step = prune(emitter, stream, scores, stream.shape[1] - remove, settings.protect, settings.fuse)
    else:
        previous_sizes = flow.sizes.get(previous_tag) if previous_tag is not None else None
        key_mask = flow.key_masks.get(attention.name)
        if key_mask is None and len(attention.inputs) == 4:
            key_mask = _per_key(emitter, attention.inputs[3], batch, stream.shape[1])
        step = merge(emitter, stream, attention.inputs[1], previous_sizes, remove, settings.protect, key_mask)
    emitted = {id(node) for node in emitter.nodes}
    for reader, position in readers:
        if id(reader) not in emitted:
            graph.set_input(reader, position, step.stream)
    graph.outputs = [step.stream if value is stream else value for value in graph.outputs]
    flow.start(step.stream, 1, block.tokens, block.index)
    flow.steps[block.index] = (previous_tag, step)
    if step.sizes is not None:
        flow.sizes[block.index] = step.sizes
    return step.stream


def _per_key(emitter: Emitter, mask: Value, batch: int, tokens: int) -> Value | None:
    """The (B, N) mask token 0 sees, from a mask of shape (B|1, 1..., N|1, N); None for other masks."""
    shape = mask.shape
    if mask.type.rank < 2 or shape[-1] != tokens or any(dim != 1 for dim in shape[1:-2]) or shape[0] not in (1, batch):
        return None
    if shape[-2] != 1:
        mask = emitter.tokens(mask, 0, 1, 1, "key_mask.first_query", axis=mask.type.rank - 2)
    vector = emitter.reshape(mask, (shape[0], tokens), "key_mask")
    if shape[0] != batch:
        vector = emitter.op("tensor.expand", vector, name="key_mask.batch", shape=(batch, tokens))
    return vector


def _carry(flow: TokenFlow, emitter: Emitter, value: Value, tag: int, fill: float | bool, name: str) -> Value:
    """A (B, N0, ...) tensor over the original tokens, carried along axis 1 through every
    reduction up to ``tag``."""
    previous, step = flow.steps[tag]
    if previous is not None:
        value = _carry(flow, emitter, value, previous, fill, name)
    return follow(emitter, value, step, fill, f"{name}{tag}")


def _carry_mask(flow: TokenFlow, emitter: Emitter, mask: Value, tag: int, original: int, queries_reduced: bool) -> Value:
    """An attention mask (B|1, 1..., Nq, Nk) with its query and key axes over the original tokens
    carried through the reductions; a padding mask follows its tokens, a fused token is visible."""
    shape = mask.shape
    batch = flow.steps[tag][1].stream.shape[0]
    if any(dim != 1 for dim in shape[1:-2]) or shape[0] not in (1, batch):
        return None
    queries, keys = (shape[-2] if mask.type.rank >= 2 else 1), shape[-1]
    square = emitter.reshape(mask, (shape[0], queries, keys), "mask.square")
    if shape[0] != batch:
        square = emitter.op("tensor.expand", square, name="mask.batch", shape=(batch, queries, keys))
    fill = True if mask.dtype == "bool" else 0.0
    if keys == original:
        by_key = emitter.op("tensor.transpose", square, name="mask.by_key", perm=(0, 2, 1))
        square = emitter.op("tensor.transpose", _carry(flow, emitter, by_key, tag, fill, "mask.keys"),
                            name="mask.by_query", perm=(0, 2, 1))
    if queries == original and queries_reduced:
        square = _carry(flow, emitter, square, tag, fill, "mask.queries")
    return emitter.reshape(square, (batch,) + (1,) * (mask.type.rank - 3) + tuple(square.shape[1:]), "mask.carried")


# ---- hooks: merged tokens count as many tokens as they hold -----------------------------------------

def _attention(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> Node | None:
    """Attention over reduced keys: its padding mask follows the tokens, and with merged tokens
    log(size) is added to the scores (ToMe's proportional attention)."""
    key_dim = in_dims[1][-2]
    if not token_dim(key_dim):
        return None
    tag, original = key_dim[0].tag, key_dim[0].old
    inputs, dims = list(node.inputs), list(in_dims)
    emitter = Emitter(flow.graph, node, f"{node.name}.tokens")
    changed = False
    if len(inputs) == 4 and not dim_tagged(dims[3][-1]) and old_size(dims[3][-1]) == original > 1:
        mask = inputs[3]
        carried = _carry_mask(flow, emitter, mask, tag, original, token_dim(dims[0][-2]))
        if carried is None or mask.type.rank < 3:
            raise flow.fail(node, f"its mask {mask.shape} varies over more than batch, queries and keys; token "
                                  f"passes carry only (batch, 1, queries, keys) masks")
        inputs[3] = carried
        vector = _per_key(emitter, carried, carried.shape[0], carried.shape[-1])
        if vector is not None:
            flow.key_masks[node.name] = vector
        changed = True
    sizes = flow.sizes.get(tag)
    if flow.proportional and sizes is not None:
        if len(inputs) == 4 and inputs[3].dtype == "bool":
            raise flow.fail(node, "proportional attention needs a float mask; set proportional=False")
        logs = log_sizes_mask(emitter, sizes, inputs[1])
        inputs[3:] = [emitter.op("math.add", inputs[3], logs, name="mask") if len(inputs) == 4 else logs]
        changed = True
    if not changed:
        return None
    mask_dims = list(flow.of(inputs[3]))
    mask_dims[-1] = dims[1][-2]
    if inputs[3].shape[-2] != 1 and token_dim(dims[0][-2]):
        mask_dims[-2] = dims[0][-2]
    flow.set(inputs[3], tuple(mask_dims))
    dims = dims[:3] + [tuple(mask_dims)]
    attrs, out_dims = RULES["nn.attention"](flow, node, dims)
    rebuilt = flow.graph.rebuild_node(node, inputs, attrs)
    flow.set(rebuilt.outputs[0], out_dims[0])
    return rebuilt


def _batch(flow: TokenFlow, tag: int) -> int:
    return flow.steps[tag][1].stream.shape[0]


def _size_weighted_mean(flow: TokenFlow, node: Node, in_dims: list[Dims]) -> Node | None:
    x = in_dims[0]
    axes = node.attrs["axes"]
    axes = tuple(range(len(x))) if axes is None else tuple(normalize_axis(axis, len(x)) for axis in axes)
    token_axes = [axis for axis in axes if token_dim(x[axis]) and x[axis][0].tag in flow.sizes]
    if len(token_axes) != 1 or token_axes[0] == 0:
        return None
    sizes = flow.sizes[x[token_axes[0]][0].tag]
    if node.inputs[0].shape[0] != sizes.shape[0]:
        return None
    attrs, out_dims = RULES["reduce.mean"](flow, node, in_dims)
    emitter = Emitter(flow.graph, node, f"{node.name}.by_size")
    mean = weighted_mean(emitter, node.inputs[0], sizes, axes, node.attrs["keepdims"], token_axes[0])
    name = node.outputs[0].name
    flow.graph.replace_all_uses(node.outputs[0], mean)
    flow.graph.remove_node(node)
    flow.graph.rename_value(mean, name)
    flow.set(mean, out_dims[0])
    return mean.producer


HOOKS["nn.attention"] = _attention
HOOKS["reduce.mean"] = _size_weighted_mean


def stage_flops(graph: Graph, blocks: Sequence[TokenBlock]) -> list[int]:
    """FLOPs per stage: stage i ends at block i's reduction point; the last stage is the rest."""
    points = {block.point: block.index for block in blocks}
    totals = [0] * (len(blocks) + 1)
    stage = 0
    for node in graph.nodes:
        totals[stage] += node.opdef.count_flops([v.type for v in node.inputs], [v.type for v in node.outputs], node.attrs)
        if any(value.name in points for value in node.outputs):
            stage = min(stage + 1, len(blocks))
    return totals
