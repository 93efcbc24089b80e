"""Recognize scaled-dot-product attention in the forms exporters write: part of ``recognize``.

``softmax(q @ k^T * scale [+ mask]) @ v``, with the reshapes torch puts around batched matmuls,
the head transposes exporters write, scales on the scores or split over q and k, additive and
``where`` masks in any order, becomes ``nn.attention(q, k, v, mask)``; a constant lower-triangular
mask becomes ``causal=True``. Matching walks the graph in code rather than one pattern because
exporters put these pieces in any order between the two matmuls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.ops.reduce import reduced_axes
from ..ir.types import FLOAT_DTYPES
from .rewrite import Any, Const, Match, Mismatch, Op, Param, RewriteContext, Rule, RuleSet

Replacement = Value | Mismatch


# ---- attention ----------------------------------------------------------------------------------------------
#
# Matched in code rather than by one pattern: between the softmax and the two matmuls exporters put
# any sequence of reshapes that merge or split batch dims, scalar scales, additive masks and where
# masks. Every reshape walked through keeps the last two dims, so all of q, k, v and the scores
# share one flattened batch index and can be viewed in the frame of the softmax.

MASKED_BELOW = -1e30  # a where fill (times the scale after it) at most this is a mask, not a value


@dataclass
class ScoreMask:
    value: Value        # the float addend, or the bool condition of a where
    kind: str           # "add", "keep" (where(c, scores, fill)) or "drop" (where(c, fill, scores))
    fill: float         # what a where writes where it masks (0 for "add")
    factor: float       # the scale applied after the mask
    frame: tuple        # the shape of the scores where the mask applies


def _read_only_by(graph: Graph, value: Value, readers: set[int]) -> bool:
    return all(id(user) in readers for user, _ in value.uses) and not any(value is out for out in graph.outputs)


def _numel(dims: Sequence) -> int | None:
    return int(np.prod(dims, dtype=np.int64)) if all(isinstance(dim, int) for dim in dims) else None


def _same_batch(shape: Sequence, batch: Sequence) -> bool:
    """Whether ``shape``'s batch dims can be viewed as ``batch`` (same dims, or the same static count)."""
    leading = tuple(shape[:-2])
    return leading == tuple(batch) or (_numel(leading) is not None and _numel(leading) == _numel(batch))


def _is_batch_view(node: Node) -> bool:
    """A reshape that only merges or splits the dims before the last two."""
    if node.op != "tensor.reshape":
        return False
    source, target = node.inputs[0].shape, node.outputs[0].shape
    return len(source) >= 2 and len(target) >= 2 and tuple(source[-2:]) == tuple(target[-2:]) and \
        _same_batch(source, target[:-2])


def _scalar(graph: Graph, value: Value) -> float | None:
    array = graph.params.get(value)
    if array is None or array.size != 1 or array.dtype.name not in FLOAT_DTYPES:
        return None
    return float(array.reshape(()))


def _scaled(graph: Graph, node: Node) -> tuple[Value, float] | None:
    """(operand, factor) when ``node`` multiplies or divides by a scalar constant without broadcasting."""
    if node.op == "math.mul":
        for operand, constant in ((0, 1), (1, 0)):
            factor = _scalar(graph, node.inputs[constant])
            if factor is not None and node.inputs[operand].type == node.outputs[0].type:
                return node.inputs[operand], factor
    if node.op == "math.div":
        divisor = _scalar(graph, node.inputs[1])
        if divisor and node.inputs[0].type == node.outputs[0].type:
            return node.inputs[0], 1.0 / divisor
    return None


def _walk_operand(graph: Graph, value: Value, scales: bool) -> list[tuple[Value, float]]:
    """The values below the batch views (and scalar scales) on a matmul operand, with the scale so far."""
    factor = 1.0
    walked = [(value, factor)]
    while value.producer is not None:
        node = value.producer
        scaled = _scaled(graph, node) if scales else None
        if _is_batch_view(node):
            value = node.inputs[0]
        elif scaled is not None:
            value, factor = scaled[0], factor * scaled[1]
        else:
            break
        walked.append((value, factor))
    return walked


def _peel(graph: Graph, value: Value, scales: bool, batch: Sequence) -> tuple[Value, float]:
    """The deepest value below ``value``'s views already viewed with ``batch`` dims, else the deepest.

    The views and scales walked through may be shared: they stay for their other readers.
    """
    walked = _walk_operand(graph, value, scales)
    in_frame = [item for item in walked if tuple(item[0].shape[:-2]) == tuple(batch)]
    return (in_frame or walked)[-1]


def _key(graph: Graph, key_t: Value, batch: Sequence) -> tuple[Value, tuple[int, ...] | None, float]:
    """(key, perm that makes it (..., S, D) or None, scale) from the k^T operand of q @ k^T."""
    deepest, factor = _walk_operand(graph, key_t, scales=True)[-1]
    transpose = deepest.producer
    if transpose is None or transpose.op != "tensor.transpose":
        key_t, factor = _peel(graph, key_t, True, batch)
        rank = key_t.type.rank
        return key_t, tuple(range(rank - 2)) + (rank - 1, rank - 2), factor
    perm = transpose.attrs["perm"]
    key_perm = tuple(perm[:-2]) + (perm[-1], perm[-2])
    if key_perm != tuple(range(len(perm))):
        return transpose.inputs[0], key_perm, factor
    key, more = _peel(graph, transpose.inputs[0], True, batch)
    return key, None, factor * more


def _fill(graph: Graph, value: Value) -> float | None:
    array = graph.params.get(value)
    if array is None or array.size == 0 or array.dtype.name not in FLOAT_DTYPES:
        return None
    first = array.reshape(-1)[0]
    return float(first) if bool(np.all(array == first)) else None


def _scores(graph: Graph, value: Value, readers: set[int], factor: float,
            masks: tuple[ScoreMask, ...]) -> tuple[Node, float, list[ScoreMask]] | Mismatch:
    """Walk from the softmax input down to q @ k^T: (that matmul, the scale, the masks)."""
    while True:
        if not _read_only_by(graph, value, readers):
            return Mismatch("a value between q @ k^T and the softmax is also read elsewhere")
        node = value.producer
        if node is None:
            return Mismatch("the scores are a graph input, not q @ k^T")
        readers = {id(node)}
        scaled = _scaled(graph, node)
        if node.op == "linalg.matmul":
            return node, factor, list(masks)
        if _is_batch_view(node):
            value = node.inputs[0]
        elif scaled is not None:
            value, factor = scaled[0], factor * scaled[1]
        elif node.op == "math.add":
            failure: Mismatch | None = None
            for chain, addend in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
                if chain.type != node.outputs[0].type:
                    continue
                mask = ScoreMask(addend, "add", 0.0, factor, tuple(node.outputs[0].shape))
                found = _scores(graph, chain, readers, factor, masks + (mask,))
                if not isinstance(found, Mismatch):
                    return found
                failure = found if failure is None else failure
            return failure if failure is not None else Mismatch("a mask broadcasts the scores to a bigger shape")
        elif node.op == "math.where":
            condition, kept, other = node.inputs
            if _fill(graph, other) is not None and kept.type == node.outputs[0].type:
                kind, value, fill = "keep", kept, _fill(graph, other)
            elif _fill(graph, kept) is not None and other.type == node.outputs[0].type:
                kind, value, fill = "drop", other, _fill(graph, kept)
            else:
                return Mismatch("a where on the scores does not write a constant where it masks")
            masks = masks + (ScoreMask(condition, kind, fill, factor, tuple(node.outputs[0].shape)),)
        else:
            return Mismatch(f"the scores come from {node.op}, not from q @ k^T")


# the fixes exporters write so that a query whose keys are all masked gets zeros, not NaNs: torch's
# SDPA converter where(any(scores != -inf), softmax, 0), the ONNX exporter where(isnan(softmax), 0, softmax)
ROW_ATTENDS = Op("math.cast", Op("reduce.max", Op("math.cast", Op("math.not", Op(
    "math.equal", Any("scores"), Param(None, lambda array: bool(np.all(np.isneginf(array))), why="not -inf"),
    name="is_masked"), name="attends"), attrs={"dtype": "int32"}, name="attends_int"), name="any_attends"),
    attrs={"dtype": "bool"}, name="row_attends")
ZERO = Const(None, 0.0)
NAN_TO_ZERO = Op("math.where", Op("math.isnan", Any("weights"), name="is_nan"), ZERO, Any("weights"))


def _row_guard(graph: Graph, node: Node | None) -> tuple[Node, Value, set[int]] | None:
    """(guard node, the weights it guards, the isnan node of the ONNX form) for either fix."""
    if node is None or node.op != "math.where":
        return None
    found = NAN_TO_ZERO.match(node.outputs[0], Match(graph, node))
    if not isinstance(found, Mismatch):
        return node, found["weights"], {id(found.node("is_nan"))}
    if not isinstance(ZERO.match(node.inputs[2], Match(graph, node)), Mismatch):
        return node, node.inputs[1], set()
    return None


def _softmax_below(graph: Graph, weights: Value, consumer: Node) -> tuple[Node, bool, set[int]] | Mismatch:
    """The softmax under the attention weights, whether a row guard zeroes its fully masked rows,
    and the nodes that may read the scores."""
    walked = [(weights, {id(consumer)})]  # each value on the way and who may read it
    node = weights.producer
    while node is not None and _is_batch_view(node):
        walked.append((node.inputs[0], {id(node)}))
        node = node.inputs[0].producer
    guard = _row_guard(graph, node)
    if guard is not None:
        guard_node, weights, guard_nodes = guard
        walked.append((weights, {id(guard_node)} | guard_nodes))
        walked.extend((user.outputs[0], {id(guard_node)}) for user in weights.users() if id(user) in guard_nodes)
        node = weights.producer
    if node is None or node.op != "nn.softmax":
        return Mismatch("the left operand is not a softmax")
    if not all(_read_only_by(graph, value, readers) for value, readers in walked):
        return Mismatch("the attention weights are also read elsewhere")
    rank = node.outputs[0].type.rank
    if node.attrs["axis"] % rank != rank - 1:
        return Mismatch("the softmax is not over the last axis")
    if guard is None:
        return node, False, {id(node)}
    guard_node, _, guard_nodes = guard
    if guard_nodes:  # where(isnan(softmax), 0, softmax) reads the softmax, not the scores
        return node, True, {id(node)}
    scores = node.inputs[0]
    found = ROW_ATTENDS.match(guard_node.inputs[0], Match(graph, guard_node))
    if isinstance(found, Mismatch) or found["scores"] is not scores:
        return Mismatch("the where after the softmax does not keep the rows where any score is above -inf")
    if reduced_axes(rank, found.attr("any_attends", "axes")) != (rank - 1,) or not found.attr("any_attends", "keepdims"):
        return Mismatch("the row guard does not reduce the last axis")
    inside = {id(guard_node)} | {id(row_node) for row_node in found.nodes.values()}
    if any(not _read_only_by(graph, row_node.outputs[0], inside) for row_node in found.nodes.values()):
        return Mismatch("the row guard is also read elsewhere")
    return node, True, {id(node), id(found.node("is_masked"))}


def _is_causal(keep: np.ndarray, rows: object, cols: object) -> bool:
    """Whether a constant keep-mask is the top-left lower triangle, the same for every batch."""
    if not isinstance(rows, int) or not isinstance(cols, int) or keep.shape[-2:] != (rows, cols):
        return False
    return bool(np.all(keep.reshape(-1, rows, cols) == np.tril(np.ones((rows, cols), dtype=bool))))


@dataclass
class AttentionPlan:
    """What ``match_attention`` found: nn.attention's inputs and attributes before they are built."""

    query: Value
    key: Value          # (..., S, D) after key_perm, when that is set
    key_perm: tuple[int, ...] | None
    value: Value
    scale: float
    causal: bool
    masks: list[ScoreMask]
    frame: tuple        # the shape of the softmax input: batch dims + (queries, keys)
    guard: bool         # zero the rows the masks mask entirely (torch's rule, kept where present)


def _as_bool_mask(graph: Graph, mask: ScoreMask) -> ScoreMask:
    """An added where(c, 0, -inf) is the bool mask c (the form the ONNX exporter writes)."""
    node = mask.value.producer
    if mask.kind != "add" or node is None or node.op != "math.where":
        return mask
    fills = [_fill(graph, value) for value in node.inputs[1:]]
    if fills == [0.0, -np.inf]:
        return ScoreMask(node.inputs[0], "keep", -np.inf, mask.factor, mask.frame)
    if fills == [-np.inf, 0.0]:
        return ScoreMask(node.inputs[0], "drop", -np.inf, mask.factor, mask.frame)
    return mask


def _may_be_minus_inf(graph: Graph, mask: ScoreMask) -> bool:
    """Whether the mask can mask a whole row (only -inf does; a huge finite fill leaves a uniform row)."""
    if mask.kind != "add":
        return mask.fill == -np.inf
    array = graph.params.get(mask.value)
    if array is not None:
        return bool(np.any(np.isneginf(array)))
    node = mask.value.producer
    if node is not None and node.op == "math.where":
        fills = [_fill(graph, value) for value in node.inputs[1:]]
        return not all(fill is not None and np.isfinite(fill) for fill in fills)
    return True


def _plan_masks(graph: Graph, masks: list[ScoreMask], frame: tuple) -> tuple[list[ScoreMask], bool] | Mismatch:
    """The masks nn.attention takes, and whether the rest were a causal mask."""
    kept: list[ScoreMask] = []
    causal = False
    for mask in masks:
        if mask.factor <= 0:
            return Mismatch(f"a mask is scaled by {mask.factor:g} after it applies")
        if tuple(mask.frame) != tuple(frame) and (_numel(mask.frame) is None or _numel(frame) is None):
            return Mismatch("a mask applies in a symbolic view of the scores")
        mask = _as_bool_mask(graph, mask)
        array = graph.params.get(mask.value)
        if mask.kind == "add":
            if array is not None:
                with np.errstate(over="ignore", invalid="ignore"):
                    masked = array.astype(np.float64) * mask.factor <= MASKED_BELOW
                if np.all((array == 0) | masked) and _is_causal(array == 0, frame[-2], frame[-1]):
                    causal = True
                    continue
        elif mask.fill == -np.inf or mask.fill * mask.factor <= MASKED_BELOW:
            if array is not None and _is_causal(array if mask.kind == "keep" else ~array, frame[-2], frame[-1]):
                causal = True
                continue
        else:
            return Mismatch(f"a where writes {mask.fill:g} into the scores, which is not a mask")
        kept.append(mask)
    return kept, causal


def match_attention(graph: Graph, product: Node) -> AttentionPlan | Mismatch:
    """Recognize ``softmax(q @ k^T * scale + masks) @ v`` ending at the matmul ``product``."""
    found = _softmax_below(graph, product.inputs[0], product)
    if isinstance(found, Mismatch):
        return found
    softmax_node, guarded, score_readers = found
    frame = tuple(softmax_node.inputs[0].shape)
    walked = _scores(graph, softmax_node.inputs[0], score_readers, 1.0, ())
    if isinstance(walked, Mismatch):
        return walked
    scores_product, scale, masks = walked
    for left, right, what in ((*scores_product.inputs, "q @ k^T"), (*product.inputs, "weights @ v")):
        if left.type.rank != right.type.rank or tuple(left.shape[:-2]) != tuple(right.shape[:-2]):
            return Mismatch(f"{what} broadcasts its batch dims")
    planned = _plan_masks(graph, masks, frame)
    if isinstance(planned, Mismatch):
        return planned
    masks, causal = planned
    if guarded and causal and masks:
        return Mismatch("torch's row guard over a causal mask and another mask")
    batch, (queries, keys) = frame[:-2], frame[-2:]
    query, query_factor = _peel(graph, scores_product.inputs[0], True, batch)
    key, key_perm, key_factor = _key(graph, scores_product.inputs[1], batch)
    value, _ = _peel(graph, product.inputs[1], False, batch)
    key_shape = tuple(key.shape[axis] for axis in key_perm) if key_perm else tuple(key.shape)
    if query.dtype not in FLOAT_DTYPES or value.dtype != query.dtype:
        return Mismatch(f"the attention is over {query.dtype} and {value.dtype}, not one float dtype")
    if not all(_same_batch(shape, batch) for shape in (query.shape, key_shape, value.shape)):
        return Mismatch(f"q, k or v cannot be viewed with the batch dims {batch} of the scores")
    if query.shape[-2] != queries or key_shape[-2] != keys or value.shape[-2] != keys or query.shape[-1] != key_shape[-1]:
        return Mismatch(f"q {query.shape}, k {key_shape} and v {value.shape} do not fit scores {frame}")
    needs_guard = guarded and any(_may_be_minus_inf(graph, mask) for mask in masks)
    return AttentionPlan(query, key, key_perm, value, scale * query_factor * key_factor, causal, masks, frame, needs_guard)


def _viewed(ctx: RewriteContext, value: Value, shape: Sequence) -> Value:
    return value if tuple(value.shape) == tuple(shape) else ctx.op("tensor.reshape", value, shape=tuple(shape))


def _scalar_const(ctx: RewriteContext, number: float, dtype: str) -> Value:
    with np.errstate(over="ignore"):
        return ctx.const(np.array(number, dtype=dtype), name="attention_constant")


def _mask_value(ctx: RewriteContext, mask: ScoreMask, frame: tuple, dtype: str) -> Value:
    """One mask as nn.attention reads it (bool keeps, float adds), viewed in the softmax's frame."""
    if mask.kind == "add":
        out = mask.value if mask.factor == 1.0 else ctx.op("math.mul", mask.value, _scalar_const(ctx, mask.factor, dtype))
    elif mask.fill == -np.inf:
        out = mask.value if mask.kind == "keep" else ctx.op("math.not", mask.value)
    else:  # a huge finite fill: adding it swamps the score, as writing it does
        fill, zero = _scalar_const(ctx, mask.fill * mask.factor, dtype), _scalar_const(ctx, 0.0, dtype)
        out = ctx.op("math.where", mask.value, *((zero, fill) if mask.kind == "keep" else (fill, zero)))
    if tuple(mask.frame) != tuple(frame):
        if tuple(out.shape) != tuple(mask.frame):
            out = ctx.op("tensor.expand", out, shape=tuple(mask.frame))
        out = ctx.op("tensor.reshape", out, shape=tuple(frame))
    return out


def _combined_mask(ctx: RewriteContext, plan: AttentionPlan, dtype: str) -> Value | None:
    values = [_mask_value(ctx, mask, plan.frame, dtype) for mask in plan.masks]
    if not values:
        return None
    if all(value.dtype == "bool" for value in values):
        combined = values[0]
        for value in values[1:]:
            combined = ctx.op("math.and", combined, value)
        return combined
    additive = [value if value.dtype != "bool" else
                ctx.op("math.where", value, _scalar_const(ctx, 0.0, dtype), _scalar_const(ctx, -np.inf, dtype))
                for value in values]
    combined = additive[0]
    for value in additive[1:]:
        combined = ctx.op("math.add", combined, value)
    return combined


def build_attention(ctx: RewriteContext, plan: AttentionPlan, shape: Sequence) -> Value:
    """nn.attention from a plan, viewed as ``shape`` (the shape of what it replaces)."""
    batch, dtype = plan.frame[:-2], plan.query.dtype
    key = plan.key if plan.key_perm is None else ctx.op("tensor.transpose", plan.key, perm=plan.key_perm)
    inputs = [_viewed(ctx, item, tuple(batch) + tuple(item.shape[-2:])) for item in (plan.query, key, plan.value)]
    mask = _combined_mask(ctx, plan, dtype)
    out = ctx.op("nn.attention", *inputs, *([mask] if mask is not None else []), scale=plan.scale, causal=plan.causal)
    if plan.guard and mask is not None:
        attends = mask if mask.dtype == "bool" else \
            ctx.op("math.not", ctx.op("math.equal", mask, _scalar_const(ctx, -np.inf, dtype)))
        rows = ctx.op("reduce.max", ctx.op("math.cast", attends, dtype="int32"), axes=(-1,), keepdims=True)
        out = ctx.op("math.where", ctx.op("math.cast", rows, dtype="bool"), out, _scalar_const(ctx, 0.0, dtype))
    return _viewed(ctx, out, shape)


def attention(ctx: RewriteContext, m: Match) -> Replacement:
    """softmax(q @ k^T * scale [+ mask]) @ v -> nn.attention(q, k, v[, mask]) {scale, causal}."""
    plan = match_attention(ctx.graph, m.root)
    if isinstance(plan, Mismatch):
        return plan
    product = m.root.outputs[0]
    users = product.users()
    if len(users) == 1 and _is_batch_view(users[0]) and not any(product is out for out in ctx.graph.outputs):
        return Mismatch("a reshape views the product; attention_viewed rewrites it there")
    return build_attention(ctx, plan, product.shape)


def attention_viewed(ctx: RewriteContext, m: Match) -> Replacement:
    """reshape(softmax(...) @ v) as torch writes batched matmuls -> nn.attention viewed as the reshape."""
    if not _is_batch_view(m.root):
        return Mismatch("the reshape after weights @ v changes its last two dims")
    plan = match_attention(ctx.graph, m.node("product"))
    return plan if isinstance(plan, Mismatch) else build_attention(ctx, plan, m.root.outputs[0].shape)


ATTENTION_RULES = RuleSet([
    Rule("attention", Op("linalg.matmul", any_inputs=True), attention),
    Rule("attention_viewed", Op("tensor.reshape", Op("linalg.matmul", any_inputs=True, name="product")),
          attention_viewed),
])
