"""Lowerings of the neural-network family (``nn.*``).

Convolutions and pools are rank-generic in the IR (NC<spatial>, pads = begins then ends), which
is exactly how Relax orders ``padding`` for its 1-d, 2-d and 3-d operators, so the attributes
pass through. LRN has no Relax operator and is written in TE.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tvm import relax, te, tirx
from tvm.relax import op as R

from ...ir.graph import Node
from ...ir.ops.nn import ACTIVATIONS
from ...ir.ops.registry import get as get_op
from ...ir.ops.registry import normalize_axis
from .attention import attention_te
from .context import LowerContext, per_axis
from .table import LOWERINGS, lowers


def apply_activation(ctx: LowerContext, node: Node, out: relax.Expr) -> relax.Expr:
    """The node's fused ``activation`` attribute, lowered by the same entry as the standalone op."""
    spec = ACTIVATIONS[node.attrs.get("activation", "none")]
    if spec is None:
        return out
    op, attrs = spec
    activation = Node(op, f"{node.name}.activation", [], get_op(op).check_attrs(attrs))
    return LOWERINGS[op](ctx, activation, [ctx.emit(out)])

CONV: dict[int, Callable[..., relax.Expr]] = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}
CONV_TRANSPOSE: dict[int, Callable[..., relax.Expr]] = {
    1: R.nn.conv1d_transpose,
    2: R.nn.conv2d_transpose,
    3: R.nn.conv3d_transpose,
}
MAX_POOL: dict[int, Callable[..., relax.Expr]] = {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d}
AVG_POOL: dict[int, Callable[..., relax.Expr]] = {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}


def _spatial_rank(ctx: LowerContext, table: dict[int, Callable[..., relax.Expr]], rank: int, what: str) -> Callable[..., relax.Expr]:
    if rank not in table:
        raise ctx.error(f"{what} with {rank} spatial dims has no Relax operator (supported: {sorted(table)})")
    return table[rank]


def _add_channel_bias(ctx: LowerContext, out: relax.Expr, bias: relax.Expr, spatial_rank: int) -> relax.Expr:
    return R.add(out, R.reshape(bias, [1, -1] + [1] * spatial_rank))


@lowers("nn.conv")
def lower_conv(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, weight = args[0], args[1]
    rank = ctx.rank_of(weight) - 2
    conv = _spatial_rank(ctx, CONV, rank, "convolution")
    out = conv(
        x,
        weight,
        strides=per_axis(node.attrs["strides"], rank, 1),
        padding=per_axis(node.attrs["pads"], 2 * rank, 0),
        dilation=per_axis(node.attrs["dilations"], rank, 1),
        groups=node.attrs["groups"],
    )
    if len(args) == 3:
        out = _add_channel_bias(ctx, ctx.emit(out), args[2], rank)
    return apply_activation(ctx, node, out)


@lowers("nn.conv_transpose")
def lower_conv_transpose(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, weight = args[0], args[1]
    rank = ctx.rank_of(weight) - 2
    conv_transpose = _spatial_rank(ctx, CONV_TRANSPOSE, rank, "transposed convolution")
    out = conv_transpose(
        x,
        weight,
        strides=per_axis(node.attrs["strides"], rank, 1),
        padding=per_axis(node.attrs["pads"], 2 * rank, 0),
        output_padding=per_axis(node.attrs["output_padding"], rank, 0),
        dilation=per_axis(node.attrs["dilations"], rank, 1),
        groups=node.attrs["groups"],
    )
    if len(args) == 3:
        out = _add_channel_bias(ctx, ctx.emit(out), args[2], rank)
    return out


def _pool_arguments(node: Node) -> dict:
    rank = len(node.attrs["kernel"])
    return {
        "pool_size": tuple(node.attrs["kernel"]),
        "strides": per_axis(node.attrs["strides"], rank, 1),
        "padding": per_axis(node.attrs["pads"], 2 * rank, 0),
        "dilation": per_axis(node.attrs["dilations"], rank, 1),
        "ceil_mode": node.attrs["ceil_mode"],
    }


@lowers("nn.max_pool")
def lower_max_pool(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    pool = _spatial_rank(ctx, MAX_POOL, len(node.attrs["kernel"]), "max pooling")
    return pool(args[0], **_pool_arguments(node))


@lowers("nn.avg_pool")
def lower_avg_pool(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    pool = _spatial_rank(ctx, AVG_POOL, len(node.attrs["kernel"]), "average pooling")
    return pool(args[0], count_include_pad=node.attrs["count_include_pad"], **_pool_arguments(node))


# ---- normalizations ----------------------------------------------------------------------------

@lowers("nn.batch_norm")
def lower_batch_norm(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, scale, bias, mean, var = args
    # training=False: DecomposeOpsForInference turns it into a scale and shift of running stats
    out = R.nn.batch_norm(x, scale, bias, mean, var, axis=1, epsilon=node.attrs["epsilon"], training=False)
    return relax.TupleGetItem(ctx.emit(out, "batch_norm"), 0)


@lowers("nn.instance_norm")
def lower_instance_norm(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, scale, bias = args
    axes = list(range(2, ctx.rank_of(x)))
    return R.nn.instance_norm(x, scale, bias, channel_axis=1, axes=axes, epsilon=node.attrs["epsilon"])


@lowers("nn.group_norm")
def lower_group_norm(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, scale, bias = args
    axes = list(range(2, ctx.rank_of(x)))
    return R.nn.group_norm(
        x, scale, bias, num_groups=node.attrs["num_groups"], channel_axis=1, axes=axes, epsilon=node.attrs["epsilon"]
    )


def _trailing_axes(ctx: LowerContext, node: Node, x: relax.Expr) -> list[int]:
    rank = ctx.rank_of(x)
    return list(range(normalize_axis(node.attrs["axis"], rank), rank))


@lowers("nn.layer_norm")
def lower_layer_norm(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, scale = args[0], args[1]
    bias = args[2] if len(args) == 3 else R.zeros(ctx.shape_of(scale), ctx.dtype_of(scale))
    return R.nn.layer_norm(x, scale, bias, axes=_trailing_axes(ctx, node, x), epsilon=node.attrs["epsilon"])


@lowers("nn.rms_norm")
def lower_rms_norm(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    x, scale = args
    return R.nn.rms_norm(x, scale, axes=_trailing_axes(ctx, node, x), epsilon=node.attrs["epsilon"])


@lowers("nn.lrn")
def lower_lrn(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    """x / (bias + alpha / size * window_sum(x^2)) ** beta; the window runs across channels."""
    x = args[0]
    size, alpha, beta, bias = (node.attrs[key] for key in ("size", "alpha", "beta", "bias"))
    window_sum = ctx.emit_te(_channel_window_square_sum, x, size, name="lrn_square_sum")
    dtype = ctx.dtype_of(x)
    denominator = R.add(ctx.const(bias, dtype), R.multiply(ctx.const(alpha / size, dtype), window_sum))
    return R.divide(x, R.power(denominator, ctx.const(beta, dtype)))


def _channel_window_square_sum(x: te.Tensor, size: int) -> te.Tensor:
    """sum of x[:, c + offset]^2 for offset in [-floor((size-1)/2), ceil((size-1)/2)] (ONNX LRN)."""
    before = (size - 1) // 2
    channels = x.shape[1]
    offset = te.reduce_axis((0, size), name="offset")

    def square_sum(*index):
        channel = index[1] - before + offset
        inside = tirx.all(channel >= 0, channel < channels)
        shifted = (index[0], tirx.if_then_else(inside, channel, 0)) + tuple(index[2:])
        value = x[shifted]
        return te.sum(tirx.if_then_else(inside, value * value, tirx.const(0, x.dtype)), axis=offset)

    return te.compute(x.shape, square_sum, name="square_sum")


# ---- softmax ------------------------------------------------------------------------------------

@lowers("nn.softmax")
def lower_softmax(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return R.nn.softmax(args[0], axis=normalize_axis(node.attrs["axis"], ctx.rank_of(args[0])))


@lowers("nn.log_softmax")
def lower_log_softmax(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    return R.nn.log_softmax(args[0], axis=normalize_axis(node.attrs["axis"], ctx.rank_of(args[0])))


@lowers("nn.linear")
def lower_linear(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    out = R.matmul(args[0], args[1])
    if len(args) == 3:
        out = R.add(ctx.emit(out), args[2])
    return apply_activation(ctx, node, out)


@lowers("nn.attention")
def lower_attention(ctx: LowerContext, node: Node, args: list[relax.Expr]) -> relax.Expr:
    """The whole attention block as one TE computation, so it becomes one kernel (one PrimFunc)."""
    depth = ctx.shape_of(args[0])[-1]
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1.0 / float(np.sqrt(int(depth)))
    return ctx.emit_te(attention_te, *args, scale=scale, causal=node.attrs["causal"], name="attention")

