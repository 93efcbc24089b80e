"""Neural-network ATen ops: attention, convolution, normalizations, softmax, pooling and upsampling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ....ir.graph import Value
from ....ir.types import Dim
from ..aten import Context, Unavailable, Unsupported, _axis, _binary, _ints, _overload, _static, converts

aten = torch.ops.aten


# ---- attention ---------------------------------------------------------------------------------------------


@converts(aten.scaled_dot_product_attention.default)
def scaled_dot_product_attention(ctx: Context, query: Value, key: Value, value: Value, attn_mask: Value | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Value:
    """softmax(q @ k^T * scale + mask) @ v, with rows that mask everything giving zeros (torch's rule)."""
    if dropout_p:
        raise Unsupported(f"attention dropout p={dropout_p} (call model.eval())")
    dtype = ctx.out_dtype()
    query, key, value = (ctx.cast(item, dtype) for item in (query, key, value))
    head_dim = query.shape[-1]
    if scale is None:
        if not isinstance(head_dim, int):
            raise Unsupported("attention over a symbolic head size without an explicit scale")
        scale = 1.0 / math.sqrt(head_dim)
    if enable_gqa and query.shape[-3] != key.shape[-3]:
        key, value = _repeat_heads(ctx, key, query.shape[-3]), _repeat_heads(ctx, value, query.shape[-3])
    rank = key.type.rank
    key_t = ctx.op("tensor.transpose", key, perm=tuple(range(rank - 2)) + (rank - 1, rank - 2))
    scores = _binary(ctx, "math.mul", ctx.op("linalg.matmul", query, key_t), float(scale), dtype)
    masked = False
    if is_causal:
        rows, cols = query.shape[-2], key.shape[-2]
        if not isinstance(rows, int) or not isinstance(cols, int):
            raise Unsupported("causal attention over a symbolic sequence length")
        causal = np.where(np.tril(np.ones((rows, cols), dtype=bool)), 0.0, -np.inf)
        scores = ctx.op("math.add", scores, ctx.const(causal, dtype))
    if attn_mask is not None:
        masked = True
        if attn_mask.dtype == "bool":
            scores = ctx.op("math.where", attn_mask, scores, ctx.const(-np.inf, dtype))
        else:
            scores = ctx.op("math.add", scores, ctx.cast(attn_mask, dtype))
    weights = ctx.op("nn.softmax", scores, axis=-1)
    if masked:
        # a query that may attend to nothing gets zeros, not the NaNs of softmax over all -inf
        attends = ctx.op("math.not", ctx.op("math.equal", scores, ctx.const(-np.inf, dtype)))
        any_key = ctx.op("reduce.max", ctx.cast(attends, "int32"), axes=(-1,), keepdims=True)
        weights = ctx.op("math.where", ctx.cast(any_key, "bool"), weights, ctx.const(0, dtype))
    return ctx.op("linalg.matmul", weights, value)


def _repeat_heads(ctx: Context, value: Value, heads: Dim) -> Value:
    """(B, Hk, S, E) -> (B, heads, S, E), each key/value head repeated for its query group."""
    shape = _static(value, "grouped-query attention")
    if not isinstance(heads, int) or heads % shape[-3]:
        raise Unsupported(f"grouped-query attention with {heads} query heads and {shape[-3]} key heads")
    group = heads // shape[-3]
    spread = ctx.reshape(value, shape[:-2] + (1,) + shape[-2:])
    wide = ctx.op("tensor.expand", spread, shape=shape[:-2] + (group,) + shape[-2:])
    return ctx.reshape(wide, shape[:-3] + (heads,) + shape[-2:])


# ---- neural-network ops ----------------------------------------------------------------------------------


@converts(aten.convolution.default)
def convolution(ctx: Context, input: Value, weight: Value, bias: Value | None, stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], transposed: bool, output_padding: Sequence[int],
                groups: int) -> Value:
    rank = weight.type.rank - 2
    if isinstance(padding, str):
        raise Unsupported(f"convolution padding='{padding}'")
    pads = _ints(padding, rank)
    attrs: dict[str, Any] = {
        "strides": _ints(stride, rank), "pads": pads + pads, "dilations": _ints(dilation, rank), "groups": int(groups),
    }
    inputs = [input, ctx.cast(weight, input.dtype)] + ([ctx.cast(bias, input.dtype)] if bias is not None else [])
    if transposed:
        attrs["output_padding"] = _ints(output_padding, rank)
        return ctx.op("nn.conv_transpose", *inputs, **attrs)
    return ctx.op("nn.conv", *inputs, **attrs)


def _channel_params(ctx: Context, x: Value, weight: Value | None, bias: Value | None) -> tuple[Value, Value]:
    channels = x.shape[1]
    if not isinstance(channels, int):
        raise Unsupported("normalization over a symbolic channel count")
    scale = ctx.cast(weight, x.dtype) if weight is not None else ctx.const(np.ones(channels), x.dtype)
    shift = ctx.cast(bias, x.dtype) if bias is not None else ctx.const(np.zeros(channels), x.dtype)
    return scale, shift


@converts(aten._native_batch_norm_legit_no_training.default, aten._native_batch_norm_legit.default,
          aten.native_batch_norm.default, _overload("_native_batch_norm_legit_functional"))
def batch_norm(ctx: Context, input: Value, weight: Value | None, bias: Value | None, running_mean: Value | None,
               running_var: Value | None, eps: float, training: bool = False) -> list[Any]:
    if training or running_mean is None or running_var is None:
        raise Unsupported("batch norm in training mode (call model.eval())")
    scale, shift = _channel_params(ctx, input, weight, bias)
    out = ctx.op("nn.batch_norm", input, scale, shift, ctx.cast(running_mean, input.dtype),
                 ctx.cast(running_var, input.dtype), epsilon=float(eps))
    return [out, Unavailable("batch-norm saved mean"), Unavailable("batch-norm saved inverse std")]


@converts(aten.native_layer_norm.default)
def layer_norm(ctx: Context, input: Value, normalized_shape: Sequence[int], weight: Value | None, bias: Value | None,
               eps: float) -> list[Any]:
    shape = tuple(int(d) for d in normalized_shape)
    scale = ctx.cast(weight, input.dtype) if weight is not None else ctx.const(np.ones(shape), input.dtype)
    inputs = [input, scale] + ([ctx.cast(bias, input.dtype)] if bias is not None else [])
    out = ctx.op("nn.layer_norm", *inputs, axis=-len(shape), epsilon=float(eps))
    return [out, Unavailable("layer-norm mean"), Unavailable("layer-norm inverse std")]


@converts(aten.native_group_norm.default)
def group_norm(ctx: Context, input: Value, weight: Value | None, bias: Value | None, group: int, eps: float) -> list[Any]:
    scale, shift = _channel_params(ctx, input, weight, bias)
    out = ctx.op("nn.group_norm", input, scale, shift, num_groups=int(group), epsilon=float(eps))
    return [out, Unavailable("group-norm mean"), Unavailable("group-norm inverse std")]


@converts(aten._softmax.default, aten._log_softmax.default)
def softmax(ctx: Context, self: Value, dim: int) -> Value:
    log = ctx.node is not None and ctx.node.target is aten._log_softmax.default
    x = ctx.cast(self, ctx.out_dtype())
    return ctx.op("nn.log_softmax" if log else "nn.softmax", x, axis=_axis(dim, x.type.rank))


def _pool_attrs(rank: int, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> dict[str, Any]:
    kernel = _ints(kernel_size, rank)
    strides = _ints(stride, rank) if stride not in (None, [], ()) else kernel
    pads = _ints(padding, rank)
    return {"kernel": kernel, "strides": strides, "pads": pads + pads, "dilations": _ints(dilation, rank),
            "ceil_mode": bool(ceil_mode)}


@converts(aten.max_pool2d_with_indices.default, aten.max_pool3d_with_indices.default)
def max_pool(ctx: Context, self: Value, kernel_size: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1,
             ceil_mode: bool = False) -> Any:
    rank = self.type.rank - 2
    out = ctx.op("nn.max_pool", self, **_pool_attrs(rank, kernel_size, stride, padding, dilation, ceil_mode))
    return [out, Unavailable("max-pool indices")]


@converts(aten.avg_pool2d.default, aten.avg_pool3d.default)
def avg_pool(ctx: Context, self: Value, kernel_size: Any, stride: Any = (), padding: Any = 0, ceil_mode: bool = False,
             count_include_pad: bool = True, divisor_override: int | None = None) -> Value:
    if divisor_override is not None:
        raise Unsupported(f"avg_pool with divisor_override={divisor_override}")
    rank = self.type.rank - 2
    attrs = _pool_attrs(rank, kernel_size, stride, padding, 1, ceil_mode)
    return ctx.op("nn.avg_pool", self, count_include_pad=bool(count_include_pad), **attrs)


def _adaptive_windows(self: Value, output_size: Sequence[int]) -> tuple[tuple[Dim, ...], tuple[int, ...]]:
    """(input spatial dims, output spatial dims) of an adaptive pooling."""
    return tuple(self.shape[2:]), _ints(output_size, self.type.rank - 2)


@converts(aten._adaptive_avg_pool2d.default, aten._adaptive_avg_pool3d.default)
def adaptive_avg_pool(ctx: Context, self: Value, output_size: Sequence[int]) -> Value:
    spatial, out = _adaptive_windows(self, output_size)
    axes = tuple(range(2, self.type.rank))
    if all(o == 1 for o in out):
        return ctx.op("reduce.mean", self, axes=axes, keepdims=True)
    if all(isinstance(s, int) and s % o == 0 for s, o in zip(spatial, out)):
        kernel = tuple(int(s) // o for s, o in zip(spatial, out))
        return ctx.op("nn.avg_pool", self, kernel=kernel, strides=kernel)
    raise Unsupported(f"adaptive average pooling from {spatial} to {out} (only divisible sizes)")


@converts(aten.adaptive_max_pool2d.default, aten.adaptive_max_pool3d.default)
def adaptive_max_pool(ctx: Context, self: Value, output_size: Sequence[int]) -> list[Any]:
    spatial, out = _adaptive_windows(self, output_size)
    if all(o == 1 for o in out):
        pooled = ctx.op("reduce.max", self, axes=tuple(range(2, self.type.rank)), keepdims=True)
    elif all(isinstance(s, int) and s % o == 0 for s, o in zip(spatial, out)):
        kernel = tuple(int(s) // o for s, o in zip(spatial, out))
        pooled = ctx.op("nn.max_pool", self, kernel=kernel, strides=kernel)
    else:
        raise Unsupported(f"adaptive max pooling from {spatial} to {out} (only divisible sizes)")
    return [pooled, Unavailable("max-pool indices")]


# ---- upsampling ------------------------------------------------------------------------------------------


@converts(aten.upsample_nearest2d.vec)
def upsample_nearest(ctx: Context, input: Value) -> Value:
    """Integer-factor nearest upsampling: each pixel repeated, as reshape -> expand -> reshape."""
    shape = _static(input, "nearest upsampling")
    out_shape = ctx.out_shape()
    factors = []
    for size, out in zip(shape[2:], out_shape[2:]):
        if not isinstance(out, int) or out % size:
            raise Unsupported(f"nearest upsampling from {shape} to {out_shape} (only integer factors)")
        factors.append(out // size)
    interleaved = tuple(shape[:2]) + tuple(d for size in shape[2:] for d in (size, 1))
    expanded = tuple(shape[:2]) + tuple(d for size, f in zip(shape[2:], factors) for d in (size, f))
    wide = ctx.op("tensor.expand", ctx.reshape(input, interleaved), shape=expanded)
    return ctx.reshape(wide, out_shape)
