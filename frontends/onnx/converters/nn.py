"""Neural-network ONNX ops: convolution, pooling, normalizations, softmax family, dropout, and the
matrix products (Gemm, MatMul)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ....errors import ShapeError
from ....ir.graph import Value
from ....ir.ops.registry import broadcast_shapes
from ..importer import ImportContext, OnnxNode, converter
from .common import cast_to, normalize_axes, product, reshape, shape_of


# ---- padding ----------------------------------------------------------------------------------------------

def _same_pads(sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
               upper: bool) -> list[int]:
    """Begin pads then end pads so that the output is ceil(size / stride) (ONNX SAME_UPPER/LOWER)."""
    begins, ends = [], []
    for size, k, stride, dilation in zip(sizes, kernel, strides, dilations):
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


def _window_pads(ctx: ImportContext, node: OnnxNode, sizes: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    rank = len(kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(sizes, kernel, strides, dilations, upper=auto_pad == "SAME_UPPER")
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    if auto_pad not in ("NOTSET", ""):
        ctx.refuse(f"auto_pad='{auto_pad}'")
    pads = [int(pad) for pad in node.attr("pads", [0] * (2 * rank))]
    if len(pads) != 2 * rank:
        ctx.refuse(f"pads {pads} do not have 2*{rank} entries")
    return pads


def _ints(node: OnnxNode, name: str, rank: int) -> list[int]:
    values = node.attr(name)
    return [int(value) for value in values] if values else [1] * rank


# ---- convolution -------------------------------------------------------------------------------------------------

@converter("Conv")
def convert_conv(ctx: ImportContext, node: OnnxNode) -> Value:
    x, weight = ctx.input(node, 0), ctx.input(node, 1)
    bias = ctx.optional_input(node, 2)
    rank = weight.type.rank - 2
    kernel = shape_of(ctx, weight)[2:]
    strides, dilations = _ints(node, "strides", rank), _ints(node, "dilations", rank)
    pads = _window_pads(ctx, node, shape_of(ctx, x)[2:], kernel, strides, dilations)
    inputs = [x, cast_to(ctx, weight, x.dtype)] + ([cast_to(ctx, bias, x.dtype)] if bias is not None else [])
    return ctx.emit("nn.conv", *inputs, strides=strides, pads=pads, dilations=dilations, groups=int(node.attr("group", 1)))


@converter("ConvTranspose")
def convert_conv_transpose(ctx: ImportContext, node: OnnxNode) -> Value:
    x, weight = ctx.input(node, 0), ctx.input(node, 1)
    bias = ctx.optional_input(node, 2)
    rank = weight.type.rank - 2
    kernel = shape_of(ctx, weight)[2:]
    sizes = shape_of(ctx, x)[2:]
    strides, dilations = _ints(node, "strides", rank), _ints(node, "dilations", rank)
    output_padding = [int(pad) for pad in node.attr("output_padding", [0] * rank)]
    auto_pad = node.attr("auto_pad", "NOTSET")
    output_shape = [int(dim) for dim in node.attr("output_shape", [])]
    if len(output_shape) == rank + 2:
        output_shape = output_shape[2:]
    full = [(size - 1) * stride + (k - 1) * dilation + 1 + extra
            for size, stride, k, dilation, extra in zip(sizes, strides, kernel, dilations, output_padding)]
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # the padding that yields the requested size
        targets = output_shape or [size * stride for size, stride in zip(sizes, strides)]
        if len(targets) != rank:
            ctx.refuse(f"output_shape {output_shape} does not fit {rank} spatial dims")
        begins, ends = [], []
        for axis, (length, target) in enumerate(zip(full, targets)):
            total = length - target
            if total < 0:
                output_padding[axis] += -total
                total = 0
            # the ONNX spec's split (ONNX Runtime agrees): SAME_UPPER puts the odd pad at the end
            head, tail = (total // 2, total - total // 2) if auto_pad == "SAME_UPPER" else (total - total // 2, total // 2)
            begins.append(head)
            ends.append(tail)
        pads = begins + ends
    elif auto_pad == "VALID":
        pads = [0] * (2 * rank)
    else:
        pads = [int(pad) for pad in node.attr("pads", [0] * (2 * rank))]
    inputs = [x, cast_to(ctx, weight, x.dtype)] + ([cast_to(ctx, bias, x.dtype)] if bias is not None else [])
    return ctx.emit("nn.conv_transpose", *inputs, strides=strides, pads=pads, dilations=dilations,
                    groups=int(node.attr("group", 1)), output_padding=output_padding if any(output_padding) else None)


# ---- pooling --------------------------------------------------------------------------------------------------------

def _pool(ctx: ImportContext, node: OnnxNode, op: str, final: bool = True, **extra: object) -> Value:
    x = ctx.input(node, 0)
    kernel = [int(k) for k in node.attr("kernel_shape", [])]
    if not kernel:
        ctx.refuse("kernel_shape is required")
    rank = len(kernel)
    strides, dilations = _ints(node, "strides", rank), _ints(node, "dilations", rank)
    pads = _window_pads(ctx, node, shape_of(ctx, x)[2:], kernel, strides, dilations)
    return (ctx.emit if final else ctx.op)(op, x, kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                                           ceil_mode=bool(node.attr("ceil_mode", 0)), **extra)


@converter("MaxPool")
def convert_max_pool(ctx: ImportContext, node: OnnxNode) -> list[Value | None]:
    return [_pool(ctx, node, "nn.max_pool"), None]  # the Indices output has no optc op


@converter("AveragePool")
def convert_average_pool(ctx: ImportContext, node: OnnxNode) -> Value:
    return _pool(ctx, node, "nn.avg_pool", count_include_pad=bool(node.attr("count_include_pad", 0)))


def _global_pool(ctx: ImportContext, node: OnnxNode, op: str) -> Value:
    x = ctx.input(node, 0)
    return ctx.emit(op, x, axes=list(range(2, x.type.rank)), keepdims=True)


@converter("GlobalAveragePool")
def convert_global_average_pool(ctx: ImportContext, node: OnnxNode) -> Value:
    return _global_pool(ctx, node, "reduce.mean")


@converter("GlobalMaxPool")
def convert_global_max_pool(ctx: ImportContext, node: OnnxNode) -> Value:
    return _global_pool(ctx, node, "reduce.max")


# ---- normalization ----------------------------------------------------------------------------------------------------

@converter("BatchNormalization")
def convert_batch_norm(ctx: ImportContext, node: OnnxNode) -> list[Value | None]:
    if int(node.attr("training_mode", 0)):
        ctx.refuse("training_mode=1 (export the model in eval mode)")
    if ctx.opset < 9 and int(node.attr("spatial", 1)) == 0:
        ctx.refuse("spatial=0")
    x = ctx.input(node, 0)
    params = [cast_to(ctx, ctx.input(node, index), x.dtype) for index in range(1, 5)]
    return [ctx.emit("nn.batch_norm", x, *params, epsilon=float(node.attr("epsilon", 1e-5)))]


@converter("InstanceNormalization")
def convert_instance_norm(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    scale, bias = (cast_to(ctx, ctx.input(node, index), x.dtype) for index in (1, 2))
    return ctx.emit("nn.instance_norm", x, scale, bias, epsilon=float(node.attr("epsilon", 1e-5)))


def _fit_to(ctx: ImportContext, value: Value, shape: tuple[int, ...], dtype: str) -> Value:
    """``value`` broadcast to exactly ``shape`` (scale/bias of layer norm may be broadcastable only)."""
    value = cast_to(ctx, value, dtype)
    if tuple(value.shape) == tuple(shape):
        return value
    if len(value.shape) > len(shape):
        value = reshape(ctx, value, [dim for dim in value.shape][len(value.shape) - len(shape):])
    try:
        if tuple(broadcast_shapes(value.shape, shape)) != tuple(shape):
            ctx.refuse(f"scale/bias {value.shape} do not broadcast to {shape}")
    except ShapeError:
        ctx.refuse(f"scale/bias {value.shape} do not broadcast to {shape}")
    return ctx.op("tensor.expand", value, shape=shape)


@converter("LayerNormalization")
def convert_layer_norm(ctx: ImportContext, node: OnnxNode) -> list[Value | None]:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    axis = normalize_axes(ctx, [int(node.attr("axis", -1))], len(shape))[0]
    normalized = shape[axis:]
    scale = _fit_to(ctx, ctx.input(node, 1), normalized, x.dtype)
    bias = ctx.optional_input(node, 2)
    inputs = [x, scale] + ([_fit_to(ctx, bias, normalized, x.dtype)] if bias is not None else [])
    epsilon = float(node.attr("epsilon", 1e-5))
    result: list[Value | None] = [ctx.emit("nn.layer_norm", *inputs, axis=axis, epsilon=epsilon), None, None]
    if node.wants_output(1) or node.wants_output(2):
        # the statistics outputs (training graphs ask for them): mean and 1/sqrt(var + eps)
        axes = list(range(axis, len(shape)))
        mean = ctx.emit("reduce.mean", x, axes=axes, keepdims=True, output=1)
        centered = ctx.op("math.sub", x, mean)
        variance = ctx.op("reduce.mean", ctx.op("math.mul", centered, centered), axes=axes, keepdims=True)
        shifted = ctx.op("math.add", variance, ctx.scalar_like(variance, epsilon))
        result[1:] = [mean, ctx.emit("math.rsqrt", shifted, output=2)]
    return result


@converter("GroupNormalization")
def convert_group_norm(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    channels = shape_of(ctx, x)[1]
    groups = int(node.attr("num_groups"))
    params = []
    for index in (1, 2):
        param = cast_to(ctx, ctx.input(node, index), x.dtype)
        if tuple(param.shape) == (groups,) and groups != channels:
            # opset 18 gave one scale/bias per group; repeat it over the group's channels
            indices = ctx.const(np.repeat(np.arange(groups, dtype=np.int64), channels // groups))
            param = ctx.op("tensor.gather", param, indices, axis=0)
        params.append(param)
    return ctx.emit("nn.group_norm", x, *params, num_groups=groups, epsilon=float(node.attr("epsilon", 1e-5)))


@converter("LRN")
def convert_lrn(ctx: ImportContext, node: OnnxNode) -> Value:
    return ctx.emit(
        "nn.lrn", ctx.input(node, 0), size=int(node.attr("size")), alpha=float(node.attr("alpha", 1e-4)),
        beta=float(node.attr("beta", 0.75)), bias=float(node.attr("bias", 1.0)),
    )


@converter("LpNormalization")
def convert_lp_normalization(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    p = int(node.attr("p", 2))
    if p not in (1, 2):
        ctx.refuse(f"p={p}")
    norm = ctx.op("reduce.l2" if p == 2 else "reduce.l1", x, axes=[int(node.attr("axis", -1))], keepdims=True)
    # a zero norm means a zero slice; dividing it by 1 keeps it 0 instead of 0/0
    is_zero = ctx.op("math.equal", norm, ctx.scalar_like(norm, 0.0))
    safe_norm = ctx.op("math.where", is_zero, ctx.scalar_like(norm, 1.0), norm)
    return ctx.emit("math.div", x, safe_norm)


@converter("MeanVarianceNormalization")
def convert_mean_variance_normalization(ctx: ImportContext, node: OnnxNode) -> Value:
    # ONNX's function body: (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)
    x = ctx.input(node, 0)
    axes = [int(axis) for axis in node.attr("axes", [0, 2, 3])]
    mean = ctx.op("reduce.mean", x, axes=axes, keepdims=True)
    mean_of_square = ctx.op("reduce.mean", ctx.op("math.mul", x, x), axes=axes, keepdims=True)
    variance = ctx.op("math.sub", mean_of_square, ctx.op("math.mul", mean, mean))
    deviation = ctx.op("math.add", ctx.op("math.sqrt", variance), ctx.scalar_like(x, 1e-9))
    return ctx.emit("math.div", ctx.op("math.sub", x, mean), deviation)


# ---- softmax family -----------------------------------------------------------------------------------------------------

def _over_axis(ctx: ImportContext, node: OnnxNode, build) -> Value:
    """Apply ``build(value, axis)``; before opset 13 ONNX flattens to 2-d at ``axis`` first."""
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    rank = len(shape)
    legacy = ctx.opset < 13
    axis = normalize_axes(ctx, [int(node.attr("axis", 1 if legacy else -1))], rank)[0] if rank else 0
    if not legacy or axis == rank - 1:
        return build(x, axis, True)
    flat = reshape(ctx, x, (product(shape[:axis]), product(shape[axis:])))
    return reshape(ctx, build(flat, 1, False), shape, final=True)


@converter("Softmax")
def convert_softmax(ctx: ImportContext, node: OnnxNode) -> Value:
    return _over_axis(ctx, node, lambda x, axis, final: (ctx.emit if final else ctx.op)("nn.softmax", x, axis=axis))


@converter("LogSoftmax")
def convert_log_softmax(ctx: ImportContext, node: OnnxNode) -> Value:
    return _over_axis(ctx, node, lambda x, axis, final: (ctx.emit if final else ctx.op)("nn.log_softmax", x, axis=axis))


@converter("Hardmax")
def convert_hardmax(ctx: ImportContext, node: OnnxNode) -> Value:
    def build(x: Value, axis: int, final: bool) -> Value:
        shape = shape_of(ctx, x)
        winner = ctx.op("reduce.argmax", x, axis=axis, keepdims=True)
        positions = np.arange(shape[axis], dtype=np.int64).reshape([-1 if i == axis else 1 for i in range(len(shape))])
        hit = ctx.op("math.equal", winner, ctx.const(positions))
        return (ctx.emit if final else ctx.op)("math.cast", hit, dtype=x.dtype)

    return _over_axis(ctx, node, build)


# ---- dropout -----------------------------------------------------------------------------------------------------------------

@converter("Dropout")
def convert_dropout(ctx: ImportContext, node: OnnxNode) -> list[Value | None]:
    x = ctx.input(node, 0)
    if ctx.opset >= 12:
        training = ctx.constant_input(node, 2, "training_mode")
        if training is not None and bool(np.asarray(training).reshape(-1)[0]):
            ctx.refuse("training_mode=true (export the model in eval mode)")
    elif ctx.opset < 7 and not int(node.attr("is_test", 0)):
        ctx.refuse("is_test=0 (export the model in eval mode)")
    mask = None
    if node.wants_output(1):
        mask = ctx.const(np.ones(shape_of(ctx, x), dtype=bool if ctx.opset >= 10 else x.dtype), output=1)
    return [x, mask]


# ---- matrix products ----------------------------------------------------------------------------------------------------------

@converter("MatMul")
def convert_matmul(ctx: ImportContext, node: OnnxNode) -> Value:
    return ctx.emit("linalg.matmul", ctx.input(node, 0), ctx.input(node, 1))


@converter("Gemm")
def convert_gemm(ctx: ImportContext, node: OnnxNode) -> Value:
    """Y = alpha * A' @ B' + beta * C, with transposes and scales of constants folded."""
    a, b = ctx.input(node, 0), ctx.input(node, 1)
    c = ctx.optional_input(node, 2)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if int(node.attr("transA", 0)):
        a = ctx.op("tensor.transpose", a, perm=(1, 0))
    if int(node.attr("transB", 0)):
        b = ctx.op("tensor.transpose", b, perm=(1, 0))
    scale_after = False
    if alpha != 1.0:
        if ctx.constant(b) is not None:
            b = ctx.op("math.mul", b, ctx.scalar_like(b, alpha))
        else:
            scale_after = True
    if c is not None and beta == 0.0:
        c = None
    finish = ctx.emit if c is None and not scale_after else ctx.op
    result = finish("linalg.matmul", a, b)
    if scale_after:
        result = (ctx.emit if c is None else ctx.op)("math.mul", result, ctx.scalar_like(result, alpha))
    if c is not None:
        c = cast_to(ctx, c, result.dtype)
        if beta != 1.0:
            c = ctx.op("math.mul", c, ctx.scalar_like(c, beta))
        result = ctx.emit("math.add", result, c)
    return result


# ---- Lp pooling and RMS normalization -----------------------------------------------------------------------------------

def _power(ctx: ImportContext, value: Value, exponent: float) -> Value:
    return ctx.op("math.pow", value, ctx.scalar_like(value, exponent))


@converter("GlobalLpPool")
def convert_global_lp_pool(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    p = int(node.attr("p", 2))
    axes = list(range(2, x.type.rank))
    if p in (1, 2):
        return ctx.emit("reduce.l2" if p == 2 else "reduce.l1", x, axes=axes, keepdims=True)
    total = ctx.op("reduce.sum", _power(ctx, ctx.op("math.abs", x), p), axes=axes, keepdims=True)
    return ctx.emit("math.pow", total, ctx.scalar_like(x, 1.0 / p))


@converter("LpPool")
def convert_lp_pool(ctx: ImportContext, node: OnnxNode) -> Value:
    """(sum over the window of |x|^p)^(1/p): an average pool counting pads, times the window size."""
    x = ctx.input(node, 0)
    p = int(node.attr("p", 2))
    kernel = [int(k) for k in node.attr("kernel_shape", [])]
    if not kernel:
        ctx.refuse("kernel_shape is required")
    if node.attr("ceil_mode", 0):
        ctx.refuse("ceil_mode=1")
    rank = len(kernel)
    strides, dilations = _ints(node, "strides", rank), _ints(node, "dilations", rank)
    pads = _window_pads(ctx, node, shape_of(ctx, x)[2:], kernel, strides, dilations)
    powered = _power(ctx, ctx.op("math.abs", x), p)
    mean = ctx.op("nn.avg_pool", powered, kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                  ceil_mode=False, count_include_pad=True)
    total = ctx.op("math.mul", mean, ctx.scalar_like(x, product(kernel)))
    return ctx.emit("math.pow", total, ctx.scalar_like(x, 1.0 / p))


@converter("RMSNormalization")
def convert_rms_norm(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    axis = normalize_axes(ctx, [int(node.attr("axis", -1))], len(shape))[0]
    scale = _fit_to(ctx, ctx.input(node, 1), shape[axis:], x.dtype)
    return ctx.emit("nn.rms_norm", x, scale, axis=axis, epsilon=float(node.attr("epsilon", 1e-5)))
