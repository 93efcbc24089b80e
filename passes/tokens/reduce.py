"""The reductions themselves, written with ops every backend lowers.

Ranking, top-k selection and ToMe's bipartite merge become comparisons, sums, gathers and small
one-hot matmuls: a token's rank is how many tokens score higher (ties broken by position); the
positions of the kept tokens, in their original order, come from a running count compared with
slot numbers and one matmul with the positions; the tokens move with one gather on the flattened
batch and token axes; a merge adds the r moved tokens into their destinations with a
``(B, Nb, r)`` assignment matmul. Nothing needs sort, top-k or scatter kernels, so the result
runs on the CPU, CUDA and the microcontroller C target alike; the extra cost is O(N^2) compares
per reduction, small next to the attention and MLP work it removes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...ir.graph import Graph, Node, Value

# a score this far above any real one keeps a protected token
_PROTECTED_BONUS = 1e30


@dataclass
class Emitter:
    """Adds nodes before ``before`` (or at the end), named under ``prefix``, and remembers them."""

    graph: Graph
    before: Node | None
    prefix: str
    nodes: list[Node] = field(default_factory=list)

    def op(self, op: str, *inputs: Value, name: str, **attrs: Any) -> Value:
        node = self.graph.add_node(op, inputs, attrs, name=f"{self.prefix}.{name}", before=self.before)
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, name: str, array: np.ndarray) -> Value:
        return self.graph.add_param(f"{self.prefix}.{name}", array)

    def reshape(self, value: Value, shape: tuple[int, ...], name: str) -> Value:
        return self.op("tensor.reshape", value, name=name, shape=shape)

    def tokens(self, value: Value, start: int, stop: int, step: int, name: str, axis: int = 1) -> Value:
        return self.op("tensor.slice", value, name=name, starts=(start,), ends=(stop,), axes=(axis,), steps=(step,))


def rank(e: Emitter, scores: Value, name: str) -> Value:
    """(B, N) float scores -> (B, N) float ranks: how many tokens score higher, ties by position."""
    batch, count = scores.shape
    mine = e.reshape(scores, (batch, count, 1), f"{name}.mine")
    theirs = e.reshape(scores, (batch, 1, count), f"{name}.theirs")
    higher = e.op("math.greater", theirs, mine, name=f"{name}.higher")
    earlier = e.const(f"{name}.earlier", np.tril(np.ones((1, count, count), dtype=bool), -1))
    tie = e.op("math.and", e.op("math.equal", theirs, mine, name=f"{name}.equal"), earlier, name=f"{name}.tie")
    ahead = e.op("math.cast", e.op("math.or", higher, tie, name=f"{name}.ahead"), name=f"{name}.count", dtype="float32")
    return e.op("reduce.sum", ahead, name=f"{name}.rank", axes=(2,), keepdims=False)


def kept_indices(e: Emitter, keep: Value, kept: int, name: str) -> Value:
    """(B, N) bool with ``kept`` True per row -> (B, kept) int64 positions of the True ones, in order.

    Slot p of row b takes the token whose running count of kept tokens is p + 1: a (B, kept, N)
    comparison and one matmul with the positions, no sort.
    """
    batch, count = keep.shape
    keep_float = e.op("math.cast", keep, name=f"{name}.keep", dtype="float32")
    upto = e.const(f"{name}.upto", np.triu(np.ones((count, count), dtype=np.float32)))
    running = e.op("linalg.matmul", keep_float, upto, name=f"{name}.running")  # kept tokens at or before each
    slot = e.op("math.sub", running, e.const(f"{name}.one", np.float32(1.0)), name=f"{name}.slot")
    slots = e.const(f"{name}.slots", np.arange(kept, dtype=np.float32).reshape(1, kept, 1))
    hit = e.op("math.equal", e.reshape(slot, (batch, 1, count), f"{name}.slot_row"), slots, name=f"{name}.hit")
    chosen = e.op("math.and", hit, e.reshape(keep, (batch, 1, count), f"{name}.keep_row"), name=f"{name}.chosen")
    matrix = e.op("math.cast", chosen, name=f"{name}.matrix", dtype="float32")
    positions = e.const(f"{name}.positions", np.arange(count, dtype=np.float32).reshape(count, 1))
    found = e.op("linalg.matmul", matrix, positions, name=f"{name}.found")
    return e.op("math.cast", e.reshape(found, (batch, kept), f"{name}.found_row"), name=f"{name}.indices", dtype="int64")


def gather_tokens(e: Emitter, value: Value, indices: Value, name: str) -> Value:
    """value[b, indices[b, j], ...] for (B, N, ...) values and (B, k) indices -> (B, k, ...): one
    gather on the flattened batch and token axes (memory moves, no FLOPs)."""
    batch, count, *rest = value.shape
    flat = e.reshape(value, (batch * count, *rest), f"{name}.flat")
    if batch > 1:
        offsets = e.const(f"{name}.offsets", (np.arange(batch, dtype=np.int64) * count).reshape(batch, 1))
        indices = e.op("math.add", indices, offsets, name=f"{name}.global")
    return e.op("tensor.gather", flat, indices, name=name, axis=0)


def _heads_mean(e: Emitter, value: Value, batch: int, name: str) -> Value:
    """(..., N, X) with leading dims = batch x heads -> (B, N, X), the mean over heads."""
    *leading, count, width = value.shape
    heads = int(np.prod(leading)) // batch
    grouped = e.reshape(value, (batch, heads, count, width), f"{name}.heads")
    return e.op("reduce.mean", grouped, name=f"{name}.mean", axes=(1,), keepdims=False)


def _swap_last(e: Emitter, value: Value, name: str) -> Value:
    perm = tuple(range(value.type.rank - 2)) + (value.type.rank - 1, value.type.rank - 2)
    return e.op("tensor.transpose", value, name=name, perm=perm)


def attention_scores(e: Emitter, attention: Node, batch: int, from_class_token: bool) -> Value:
    """(B, N) attention each key receives: from query 0 (EViT), or averaged over every query."""
    query, key = attention.inputs[0], attention.inputs[1]
    scale = attention.attrs.get("scale")
    scale = 1.0 / np.sqrt(query.shape[-1]) if scale is None else scale
    if from_class_token:
        query = e.tokens(query, 0, 1, 1, "score.class_query", axis=query.type.rank - 2)
    logits = e.op("linalg.matmul", query, _swap_last(e, key, "score.keys"), name="score.logits")
    logits = e.op("math.mul", logits, e.const("score.scale", np.float32(scale)), name="score.scaled")
    if len(attention.inputs) == 4:
        mask = attention.inputs[3]
        if mask.dtype == "bool":
            logits = e.op("math.where", mask, logits, e.const("score.masked_out", np.float32(-1e30)), name="score.masked")
        else:
            logits = e.op("math.add", logits, mask, name="score.masked")
    probabilities = e.op("nn.softmax", logits, name="score.probabilities", axis=-1)
    *leading, queries, keys = probabilities.shape
    flat = e.reshape(probabilities, (batch, int(np.prod(leading)) * queries // batch, keys), "score.rows")
    return e.op("reduce.mean", flat, name="score.received", axes=(1,), keepdims=False)


def norm_scores(e: Emitter, stream: Value) -> Value:
    return e.op("reduce.l2", stream, name="score.norm", axes=(2,), keepdims=False)


@dataclass(frozen=True)
class Reduced:
    """A reduced stream, and for each of its tokens the position of the token it stands for in
    the stream before (a merge destination stands for itself); ``fused`` means one extra last
    token stands for all the pruned ones."""

    stream: Value
    origin: Value          # (B, N') int64
    sizes: Value | None = None
    fused: bool = False


def prune(e: Emitter, stream: Value, scores: Value, kept: int, protect: int, fuse: bool) -> Reduced:
    """Keep the ``kept`` best-scoring tokens (protected ones first), optionally plus one token
    that is the score-weighted mean of the pruned ones: (B, N, C) -> (B, kept [+1], C)."""
    batch, count, _ = stream.shape
    ranked = scores
    if protect:
        bonus = np.zeros((1, count), dtype=np.float32)
        bonus[0, :protect] = _PROTECTED_BONUS
        ranked = e.op("math.add", scores, e.const("protected", bonus), name="score.protected")
    keep = e.op("math.less", rank(e, ranked, "rank"), e.const("kept", np.float32(kept)), name="keep")
    origin = kept_indices(e, keep, kept, "select")
    reduced = gather_tokens(e, stream, origin, "kept_tokens")
    if not fuse:
        return Reduced(reduced, origin)
    dropped = e.op("math.not", keep, name="dropped")
    weights = e.op("math.mul", scores, e.op("math.cast", dropped, name="dropped_float", dtype="float32"),
                   name="fuse.weights")
    total = e.op("reduce.sum", weights, name="fuse.total", axes=(1,), keepdims=True)
    total = e.op("math.add", total, e.const("fuse.epsilon", np.float32(1e-12)), name="fuse.total_safe")
    weights = e.op("math.div", weights, total, name="fuse.normalized")
    fused = e.op("linalg.matmul", e.reshape(weights, (batch, 1, count), "fuse.row"), stream, name="fuse.token")
    return Reduced(e.op("tensor.concat", reduced, fused, name="with_fused", axis=1), origin, fused=True)


def merge(e: Emitter, stream: Value, keys: Value, sizes: Value | None, remove: int, protect: int,
          key_mask: Value | None = None) -> Reduced:
    """ToMe bipartite soft matching: merge ``remove`` tokens of the even set into their most similar
    odd-set token (cosine of the keys averaged over heads), as size-weighted means.

    Returns the new stream ``(B, N - remove, C)`` and token sizes ``(B, N - remove)``; protected
    leading tokens stay first and are never merged. With a ``(B, N)`` attention ``key_mask``,
    only tokens with the same mask value merge (padding with padding, text with text).
    """
    batch, count, width = stream.shape
    if sizes is None:
        sizes = e.const("sizes", np.ones((batch, count), dtype=np.float32))
    metric = _heads_mean(e, keys, batch, "metric")
    metric = e.op("math.div", metric, e.op("reduce.l2", metric, name="metric.norm", axes=(2,), keepdims=True),
                  name="metric.unit")
    sources = (count - protect + 1) // 2
    targets = (count - protect) // 2
    metric_a = e.tokens(metric, protect, count, 2, "metric.a")
    metric_b = e.tokens(metric, protect + 1, count, 2, "metric.b")
    similarity = e.op("linalg.matmul", metric_a, _swap_last(e, metric_b, "metric.b_t"), name="similarity")
    if key_mask is not None:
        mask_a = e.reshape(e.tokens(key_mask, protect, count, 2, "mask.a"), (batch, sources, 1), "mask.a_column")
        mask_b = e.reshape(e.tokens(key_mask, protect + 1, count, 2, "mask.b"), (batch, 1, targets), "mask.b_row")
        alike = e.op("math.equal", mask_a, mask_b, name="mask.alike")
        similarity = e.op("math.where", alike, similarity, e.const("mask.unlike", np.float32(-2.0)), name="similarity.masked")
    best = e.op("reduce.max", similarity, name="best", axes=(2,), keepdims=False)
    target = e.op("reduce.argmax", similarity, name="target", axis=2, keepdims=False)
    merged = e.op("math.less", rank(e, best, "rank"), e.const("remove", np.float32(remove)), name="merged")
    stays = e.op("math.not", merged, name="stays")

    stream_a, stream_b = e.tokens(stream, protect, count, 2, "a"), e.tokens(stream, protect + 1, count, 2, "b")
    sizes_a, sizes_b = e.tokens(sizes, protect, count, 2, "sizes.a"), e.tokens(sizes, protect + 1, count, 2, "sizes.b")
    kept = kept_indices(e, stays, sources - remove, "stay")
    kept_a = gather_tokens(e, stream_a, kept, "a.kept")
    kept_sizes = gather_tokens(e, sizes_a, kept, "a.kept_sizes")

    moved = kept_indices(e, merged, remove, "move")
    weighted_a = e.op("math.mul", stream_a, e.reshape(sizes_a, (batch, sources, 1), "sizes.a_column"), name="a.weighted")
    moved_sum = gather_tokens(e, weighted_a, moved, "moved")
    moved_size = e.reshape(gather_tokens(e, sizes_a, moved, "moved.sizes"), (batch, remove, 1), "moved.size_column")
    moved_target = gather_tokens(e, target, moved, "moved.target")
    slots = e.const("targets", np.arange(targets, dtype=np.int64).reshape(1, targets, 1))
    hit = e.op("math.equal", e.reshape(moved_target, (batch, 1, remove), "moved.target_row"), slots, name="assign.hit")
    assign = e.op("math.cast", hit, name="assign", dtype="float32")  # (B, Nb, remove): where each moved token goes

    weighted_b = e.op("math.mul", stream_b, e.reshape(sizes_b, (batch, targets, 1), "sizes.b_column"), name="b.weighted")
    total = e.op("math.add", weighted_b, e.op("linalg.matmul", assign, moved_sum, name="merged.sum"), name="b.sum")
    gained = e.reshape(e.op("linalg.matmul", assign, moved_size, name="merged.sizes"), (batch, targets), "merged.size_row")
    size_b = e.op("math.add", sizes_b, gained, name="b.sizes")
    mean_b = e.op("math.div", total, e.reshape(size_b, (batch, targets, 1), "b.size_column"), name="b.mean")
    streams, size_parts = [kept_a, mean_b], [kept_sizes, size_b]
    if protect:
        streams.insert(0, e.tokens(stream, 0, protect, 1, "protected"))
        size_parts.insert(0, e.tokens(sizes, 0, protect, 1, "sizes.protected"))
    reduced = e.op("tensor.concat", *streams, name="merged_tokens", axis=1)
    new_sizes = e.op("tensor.concat", *size_parts, name="sizes.merged", axis=1)
    # where each new token came from: protected in place, kept sources at p + 2i, destinations at p + 1 + 2j
    from_a = e.op("math.add", e.op("math.mul", kept, e.const("two", np.int64(2)), name="origin.a_twice"),
                  e.const("origin.a_start", np.int64(protect)), name="origin.a")
    origin_b = np.broadcast_to(protect + 1 + 2 * np.arange(targets, dtype=np.int64), (batch, targets))
    parts = [from_a, e.const("origin.b", np.ascontiguousarray(origin_b))]
    if protect:
        parts.insert(0, e.const("origin.protected", np.ascontiguousarray(
            np.broadcast_to(np.arange(protect, dtype=np.int64), (batch, protect)))))
    origin = e.op("tensor.concat", *parts, name="origin", axis=1)
    return Reduced(reduced, origin, new_sizes)


def log_sizes_mask(e: Emitter, sizes: Value, key: Value) -> Value:
    """log(size) of each key, shaped to broadcast over ``key``'s scores (proportional attention)."""
    batch, count = sizes.shape
    leading = key.shape[:-2]
    logs = e.op("math.log", sizes, name="log_sizes")
    groups = int(np.prod(leading)) // batch
    per_group = e.op("tensor.expand", e.reshape(logs, (batch, 1, count), "log_sizes.row"), name="log_sizes.groups",
                     shape=(batch, groups, count))
    return e.reshape(per_group, tuple(leading) + (1, count), "log_sizes.mask")


def weighted_mean(e: Emitter, value: Value, sizes: Value, axes: tuple[int, ...], keepdims: bool, token_axis: int) -> Value:
    """mean over tokens that counts each merged token as many times as tokens it holds."""
    shape = [1] * value.type.rank
    shape[0], shape[token_axis] = sizes.shape
    weights = e.reshape(sizes, tuple(shape), "mean.weights")
    total = e.op("reduce.sum", e.op("math.mul", value, weights, name="mean.weighted"), name="mean.total",
                 axes=axes, keepdims=keepdims)
    count = e.op("reduce.sum", weights, name="mean.count", axes=axes, keepdims=keepdims)
    return e.op("math.div", total, count, name="mean")


def follow(e: Emitter, vector: Value, step: Reduced, fill: float | bool, name: str) -> Value:
    """A per-token (B, N, ...) tensor carried through one reduction: each new token takes its
    origin's values; a fused token takes ``fill``."""
    carried = gather_tokens(e, vector, step.origin, name)
    if step.fused:
        extra = np.full((vector.shape[0], 1, *vector.shape[2:]), fill, dtype=np.dtype(vector.dtype))
        carried = e.op("tensor.concat", carried, e.const(f"{name}.fused", extra), name=f"{name}.with_fused", axis=1)
    return carried
