"""Neural-network ops (``nn.*``): N-d convolution and pooling, normalizations, softmax, LRN.

Convolution and pooling take any number of spatial dims (1-d, 2-d, 3-d); layout is NC<spatial>.
``pads`` lists the begin pads of every spatial axis, then the end pads.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..types import FLOAT_DTYPES, TensorType
from .registry import Attr, ShapeError, define, flops_per_output, normalize_axis


def _spatial(x: TensorType, kernel_rank: int) -> tuple:
    if x.rank != kernel_rank + 2:
        raise ShapeError(f"input {x} needs rank {kernel_rank + 2} (N, C and {kernel_rank} spatial dims)")
    return tuple(x.shape[2:])


def _window_attrs(attrs: dict[str, Any], rank: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    strides = attrs["strides"] or (1,) * rank
    dilations = attrs.get("dilations") or (1,) * rank
    pads = attrs["pads"] or (0,) * (2 * rank)
    if len(strides) != rank or len(dilations) != rank or len(pads) != 2 * rank:
        raise ShapeError(f"strides {strides}, dilations {dilations}, pads {pads} do not fit {rank} spatial dims")
    return tuple(strides), tuple(dilations), tuple(pads)


def _out_dim(size: Any, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int, ceil: bool = False) -> Any:
    if not isinstance(size, int):
        return f"{size}'"  # a derived symbol: exact value unknown until bound
    span = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    if span < 0:
        raise ShapeError(f"window of {dilation * (kernel - 1) + 1} does not fit padded size {size + pad_begin + pad_end}")
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window would start in the end padding only (PyTorch and ONNX rule)
    return out


_CONV_ATTRS = {
    "strides": Attr("optional_ints", None),
    "pads": Attr("optional_ints", None),
    "dilations": Attr("optional_ints", None),
    "groups": Attr("int", 1),
}

# Fused epilogues: an activation applied to a conv or linear output, named by the elementwise op
# (and attributes) that computes it. The fusion passes produce them; the lowering applies the same op.
ACTIVATIONS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "none": None,
    "relu": ("math.relu", {}),
    "relu6": ("math.clip", {"min": 0.0, "max": 6.0}),
    "gelu": ("math.gelu", {"approximate": "none"}),
    "gelu_tanh": ("math.gelu", {"approximate": "tanh"}),
    "silu": ("math.silu", {}),
    "sigmoid": ("math.sigmoid", {}),
    "tanh": ("math.tanh", {}),
    "hard_swish": ("math.hard_swish", {}),
}


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ShapeError(f"unknown activation '{name}'; known: {sorted(ACTIVATIONS)}")


def apply_activation(x: np.ndarray, name: str) -> np.ndarray:
    from .registry import get

    spec = ACTIVATIONS[name]
    if spec is None:
        return x
    op, attrs = spec
    return get(op).run([x], get(op).check_attrs(attrs))[0]


def _activation_flops(name: str, elements: int) -> int:
    """What the standalone activation op counts for this many elements (fusing changes no FLOPs)."""
    spec = ACTIVATIONS[name]
    if spec is None:
        return 0
    from .registry import get

    op, attrs = spec
    out = TensorType((elements,), "float32")
    return get(op).count_flops([out], [out], get(op).check_attrs(attrs))


def _conv_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    check_activation(attrs.get("activation", "none"))
    x, weight = inputs[0], inputs[1]
    rank = weight.rank - 2
    spatial = _spatial(x, rank)
    strides, dilations, pads = _window_attrs(attrs, rank)
    groups = attrs["groups"]
    channels = x.shape[1]
    if isinstance(channels, int) and channels != weight.shape[1] * groups:
        raise ShapeError(f"input has {channels} channels; weight {weight.shape} with groups={groups} expects {weight.shape[1] * groups}")
    if weight.shape[0] % groups:
        raise ShapeError(f"{weight.shape[0]} output channels do not divide into {groups} groups")
    if len(inputs) == 3 and tuple(inputs[2].shape) != (weight.shape[0],):
        raise ShapeError(f"bias {inputs[2].shape} must be ({weight.shape[0]},)")
    if x.dtype != weight.dtype:
        raise ShapeError(f"input {x.dtype} and weight {weight.dtype} differ")
    out = tuple(
        _out_dim(size, weight.shape[2 + axis], strides[axis], dilations[axis], pads[axis], pads[axis + rank])
        for axis, size in enumerate(spatial)
    )
    return TensorType((x.shape[0], weight.shape[0]) + out, x.dtype)


def _windows(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...]) -> np.ndarray:
    """View (N, C, *out, *kernel) over an already padded input."""
    rank = len(kernel)
    extent = tuple(dilation * (k - 1) + 1 for k, dilation in zip(kernel, dilations))
    view = sliding_window_view(x, extent, axis=tuple(range(2, 2 + rank)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
    return view[index]


def _conv_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *, strides, pads, dilations, groups,
                    activation: str = "none") -> np.ndarray:
    rank = weight.ndim - 2
    strides, dilations, pads = _window_attrs({"strides": strides, "pads": pads, "dilations": dilations}, rank)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[a], pads[a + rank]) for a in range(rank)])
    windows = _windows(padded, weight.shape[2:], strides, dilations)  # N, C, *O, *K
    batch, channels = x.shape[:2]
    out_spatial = windows.shape[2 : 2 + rank]
    windows = windows.reshape((batch, groups, channels // groups) + out_spatial + tuple(weight.shape[2:]))
    grouped_weight = weight.reshape((groups, weight.shape[0] // groups) + weight.shape[1:])
    letters = "defhijkl"[:rank]
    kernel_letters = "pqrstu"[:rank]
    out = np.einsum(
        f"ngc{letters}{kernel_letters},gmc{kernel_letters}->ngm{letters}",
        windows,
        grouped_weight,
        optimize=True,
    ).reshape((batch, weight.shape[0]) + out_spatial)
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * rank)
    return apply_activation(out.astype(x.dtype, copy=False), activation)


def _conv_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    weight = inputs[1]
    per_output = 2 * int(np.prod([d for d in weight.shape[1:] if isinstance(d, int)]))
    return (outputs[0].numel * per_output + (outputs[0].numel if len(inputs) == 3 else 0)
            + _activation_flops(attrs.get("activation", "none"), outputs[0].numel))


define("nn.conv", _conv_infer, _conv_reference, inputs=(2, 3), attrs=dict(_CONV_ATTRS, activation=Attr("str", "none")),
       flops=_conv_flops, doc="x (N, C, *S), weight (M, C/groups, *K), optional bias (M,), then the activation.")


# ---- transposed convolution ----------------------------------------------------------------------

_CONV_T_ATTRS = dict(_CONV_ATTRS, output_padding=Attr("optional_ints", None))


def _conv_transpose_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, weight = inputs[0], inputs[1]
    rank = weight.rank - 2
    spatial = _spatial(x, rank)
    strides, dilations, pads = _window_attrs(attrs, rank)
    output_padding = attrs["output_padding"] or (0,) * rank
    groups = attrs["groups"]
    if isinstance(x.shape[1], int) and x.shape[1] != weight.shape[0]:
        raise ShapeError(f"input has {x.shape[1]} channels, weight {weight.shape} expects {weight.shape[0]}")
    out = []
    for axis, size in enumerate(spatial):
        if not isinstance(size, int):
            out.append(f"{size}'")
            continue
        full = (size - 1) * strides[axis] + dilations[axis] * (weight.shape[2 + axis] - 1) + 1 + output_padding[axis]
        out.append(full - pads[axis] - pads[axis + rank])
    return TensorType((x.shape[0], weight.shape[1] * groups) + tuple(out), x.dtype)


def _conv_transpose_reference(x, weight, bias=None, *, strides, pads, dilations, groups, output_padding) -> np.ndarray:
    rank = weight.ndim - 2
    strides, dilations, pads = _window_attrs({"strides": strides, "pads": pads, "dilations": dilations}, rank)
    output_padding = output_padding or (0,) * rank
    batch, channels = x.shape[:2]
    kernel = weight.shape[2:]
    out_per_group = weight.shape[1]
    full = tuple(
        (x.shape[2 + a] - 1) * strides[a] + dilations[a] * (kernel[a] - 1) + 1 + output_padding[a] for a in range(rank)
    )
    out = np.zeros((batch, groups, out_per_group) + full, dtype=np.float64)
    xg = x.reshape((batch, groups, channels // groups) + x.shape[2:]).astype(np.float64)
    wg = weight.reshape((groups, channels // groups, out_per_group) + kernel).astype(np.float64)
    letters = "defhij"[:rank]
    for position in itertools.product(*(range(k) for k in kernel)):
        contribution = np.einsum(f"ngc{letters},gcm->ngm{letters}", xg, wg[(slice(None),) * 3 + position])
        target = tuple(
            slice(position[a] * dilations[a], position[a] * dilations[a] + (x.shape[2 + a] - 1) * strides[a] + 1, strides[a])
            for a in range(rank)
        )
        out[(slice(None),) * 3 + target] += contribution
    out = out.reshape((batch, groups * out_per_group) + full)
    crop = tuple(slice(pads[a], full[a] - pads[a + rank]) for a in range(rank))
    out = out[(slice(None), slice(None)) + crop]
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * rank)
    return out.astype(x.dtype)


def _conv_transpose_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    weight = inputs[1]
    return 2 * inputs[0].numel * int(np.prod([d for d in weight.shape[1:] if isinstance(d, int)]))


define("nn.conv_transpose", _conv_transpose_infer, _conv_transpose_reference, inputs=(2, 3), attrs=_CONV_T_ATTRS,
       flops=_conv_transpose_flops, doc="x (N, C, *S), weight (C, M/groups, *K), optional bias (M,).")


# ---- pooling ---------------------------------------------------------------------------------------

_POOL_ATTRS = {
    "kernel": Attr("ints"),
    "strides": Attr("optional_ints", None),
    "pads": Attr("optional_ints", None),
    "dilations": Attr("optional_ints", None),
    "ceil_mode": Attr("bool", False),
}


def _pool_geometry(shape: tuple, attrs: dict[str, Any]) -> tuple[tuple, tuple[int, ...]]:
    """Output spatial dims and the extra end padding that ceil mode needs."""
    kernel = attrs["kernel"]
    rank = len(kernel)
    strides, dilations, pads = _window_attrs(attrs, rank)
    out, extra = [], []
    for axis, size in enumerate(shape[2:]):
        dim = _out_dim(size, kernel[axis], strides[axis], dilations[axis], pads[axis], pads[axis + rank], attrs["ceil_mode"])
        out.append(dim)
        if isinstance(dim, int):
            needed = (dim - 1) * strides[axis] + dilations[axis] * (kernel[axis] - 1) + 1
            extra.append(max(0, needed - (size + pads[axis] + pads[axis + rank])))
        else:
            extra.append(0)
    return tuple(out), tuple(extra)


def _pool_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    _spatial(x, len(attrs["kernel"]))
    out, _ = _pool_geometry(tuple(x.shape), attrs)
    return x.with_shape(tuple(x.shape[:2]) + out)


def _pool_padded(x: np.ndarray, attrs: dict[str, Any], fill: float) -> np.ndarray:
    rank = len(attrs["kernel"])
    _, _, pads = _window_attrs(attrs, rank)
    _, extra = _pool_geometry(x.shape, attrs)
    widths = [(0, 0), (0, 0)] + [(pads[a], pads[a + rank] + extra[a]) for a in range(rank)]
    return np.pad(x, widths, constant_values=fill)


def _max_pool_reference(x: np.ndarray, **attrs: Any) -> np.ndarray:
    rank = len(attrs["kernel"])
    strides, dilations, _ = _window_attrs(attrs, rank)
    padded = _pool_padded(x, attrs, -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min)
    windows = _windows(padded, attrs["kernel"], strides, dilations)
    return windows.max(axis=tuple(range(-rank, 0))).astype(x.dtype)


def _avg_pool_reference(x: np.ndarray, **attrs: Any) -> np.ndarray:
    rank = len(attrs["kernel"])
    strides, dilations, pads = _window_attrs(attrs, rank)
    sums = _windows(_pool_padded(x, attrs, 0.0), attrs["kernel"], strides, dilations).sum(axis=tuple(range(-rank, 0)))
    # count what each window covers: the input, plus explicit pads when count_include_pad, never
    # the end padding that ceil mode adds
    _, extra = _pool_geometry(x.shape, attrs)
    ones = np.pad(np.ones((1, 1) + x.shape[2:], dtype=np.float64),
                  [(0, 0), (0, 0)] + [(pads[a], pads[a + rank]) for a in range(rank)],
                  constant_values=1.0 if attrs["count_include_pad"] else 0.0)
    ones = np.pad(ones, [(0, 0), (0, 0)] + [(0, extra[a]) for a in range(rank)])
    counts = _windows(ones, attrs["kernel"], strides, dilations).sum(axis=tuple(range(-rank, 0)))
    return (sums / counts).astype(x.dtype)


def _pool_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    return outputs[0].numel * int(np.prod(attrs["kernel"]))


define("nn.max_pool", _pool_infer, _max_pool_reference, attrs=_POOL_ATTRS, flops=_pool_flops)
define("nn.avg_pool", _pool_infer, _avg_pool_reference, attrs=dict(_POOL_ATTRS, count_include_pad=Attr("bool", False)),
       flops=_pool_flops)


# ---- normalizations -------------------------------------------------------------------------------------

def _float_input(x: TensorType) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"needs a float input, got {x.dtype}")


def _channel_params_infer(count: int):
    def infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        x = inputs[0]
        _float_input(x)
        if x.rank < 2:
            raise ShapeError(f"input {x} needs a channel axis")
        for param in inputs[1 : 1 + count]:
            if tuple(param.shape) != (x.shape[1],):
                raise ShapeError(f"per-channel parameter {param.shape} must be ({x.shape[1]},)")
        return x

    return infer


def _per_channel(array: np.ndarray, rank: int) -> np.ndarray:
    return array.reshape((1, -1) + (1,) * (rank - 2))


def _batch_norm_reference(x, scale, bias, mean, var, *, epsilon) -> np.ndarray:
    rank = x.ndim
    inv = scale / np.sqrt(var.astype(np.float64) + epsilon)
    out = (x - _per_channel(mean, rank)) * _per_channel(inv, rank) + _per_channel(bias, rank)
    return out.astype(x.dtype)


define("nn.batch_norm", _channel_params_infer(4), _batch_norm_reference, inputs=5,
       attrs={"epsilon": Attr("float", 1e-5)}, flops=flops_per_output(2),
       doc="Inference batch norm: inputs x, scale, bias, running mean, running var.")


def _instance_norm_reference(x, scale, bias, *, epsilon) -> np.ndarray:
    axes = tuple(range(2, x.ndim))
    wide = x.astype(np.float64)
    mean = wide.mean(axis=axes, keepdims=True)
    var = wide.var(axis=axes, keepdims=True)
    out = (wide - mean) / np.sqrt(var + epsilon) * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)
    return out.astype(x.dtype)


define("nn.instance_norm", _channel_params_infer(2), _instance_norm_reference, inputs=3,
       attrs={"epsilon": Attr("float", 1e-5)}, flops=flops_per_output(5))


def _group_norm_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = _channel_params_infer(2)(inputs, attrs)
    if isinstance(x.shape[1], int) and x.shape[1] % attrs["num_groups"]:
        raise ShapeError(f"{x.shape[1]} channels do not divide into {attrs['num_groups']} groups")
    return x


def _group_norm_reference(x, scale, bias, *, num_groups, epsilon) -> np.ndarray:
    grouped = x.reshape((x.shape[0], num_groups, -1)).astype(np.float64)
    mean = grouped.mean(axis=-1, keepdims=True)
    var = grouped.var(axis=-1, keepdims=True)
    normalized = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(x.shape)
    return (normalized * _per_channel(scale, x.ndim) + _per_channel(bias, x.ndim)).astype(x.dtype)


define("nn.group_norm", _group_norm_infer, _group_norm_reference, inputs=3,
       attrs={"num_groups": Attr("int"), "epsilon": Attr("float", 1e-5)}, flops=flops_per_output(5))


def _layer_norm_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    _float_input(x)
    axis = normalize_axis(attrs["axis"], x.rank)
    normalized_shape = tuple(x.shape[axis:])
    for param in inputs[1:]:
        if tuple(param.shape) != normalized_shape:
            raise ShapeError(f"scale/bias {param.shape} must be {normalized_shape}")
    return x


def _layer_norm_reference(x, scale, bias=None, *, axis, epsilon) -> np.ndarray:
    axes = tuple(range(axis % x.ndim, x.ndim))
    wide = x.astype(np.float64)
    mean = wide.mean(axis=axes, keepdims=True)
    var = wide.var(axis=axes, keepdims=True)
    out = (wide - mean) / np.sqrt(var + epsilon) * scale
    if bias is not None:
        out = out + bias
    return out.astype(x.dtype)


define("nn.layer_norm", _layer_norm_infer, _layer_norm_reference, inputs=(2, 3),
       attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5)}, flops=flops_per_output(5),
       doc="Normalize over axes [axis, rank); scale and optional bias have that trailing shape.")


def _rms_norm_reference(x, scale, *, axis, epsilon) -> np.ndarray:
    axes = tuple(range(axis % x.ndim, x.ndim))
    wide = x.astype(np.float64)
    out = wide / np.sqrt(np.mean(wide * wide, axis=axes, keepdims=True) + epsilon) * scale
    return out.astype(x.dtype)


define("nn.rms_norm", _layer_norm_infer, _rms_norm_reference, inputs=2,
       attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-6)}, flops=flops_per_output(4))


def _lrn_reference(x, *, size, alpha, beta, bias) -> np.ndarray:
    square = (x.astype(np.float64)) ** 2
    channels = x.shape[1]
    before, after = (size - 1) // 2, size // 2  # ONNX: floor((size-1)/2) before, ceil((size-1)/2) after
    padded = np.pad(square, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    total = sum(padded[:, offset : offset + channels] for offset in range(size))
    return (x / (bias + alpha / size * total) ** beta).astype(x.dtype)


define("nn.lrn", lambda i, a: (_float_input(i[0]), i[0])[1], _lrn_reference,
       attrs={"size": Attr("int"), "alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75), "bias": Attr("float", 1.0)},
       flops=lambda i, o, a: o[0].numel * (a["size"] + 4))


# ---- softmax -----------------------------------------------------------------------------------------

def _softmax_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    _float_input(inputs[0])
    normalize_axis(attrs["axis"], inputs[0].rank)
    return inputs[0]


def _softmax_reference(x: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # a row of only -inf gives NaN, as in torch
        shifted = x - x.max(axis=axis, keepdims=True)
        exp = np.exp(shifted)
        return (exp / exp.sum(axis=axis, keepdims=True)).astype(x.dtype)


def _log_softmax_reference(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))).astype(x.dtype)


define("nn.softmax", _softmax_infer, _softmax_reference, attrs={"axis": Attr("int", -1)}, flops=flops_per_output(5))
define("nn.log_softmax", _softmax_infer, _log_softmax_reference, attrs={"axis": Attr("int", -1)}, flops=flops_per_output(5))


# ---- fused ops the fusion passes produce --------------------------------------------------------------

def _linear_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    check_activation(attrs["activation"])
    x, weight = inputs[0], inputs[1]
    if weight.rank != 2 or x.rank < 1:
        raise ShapeError(f"linear needs x (..., K) and a 2-d weight (K, N), got {x} and {weight}")
    if isinstance(x.shape[-1], int) and x.shape[-1] != weight.shape[0]:
        raise ShapeError(f"x {x.shape} and weight {weight.shape} disagree on K")
    if len(inputs) == 3 and tuple(inputs[2].shape) != (weight.shape[1],):
        raise ShapeError(f"bias {inputs[2].shape} must be ({weight.shape[1]},)")
    if any(t.dtype != x.dtype for t in inputs):
        raise ShapeError("x, weight and bias must share a dtype")
    return x.with_shape(tuple(x.shape[:-1]) + (weight.shape[1],))


def _linear_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *, activation: str) -> np.ndarray:
    out = np.matmul(x, weight)
    if bias is not None:
        out = out + bias
    return apply_activation(out.astype(x.dtype, copy=False), activation)


def _linear_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    k = inputs[1].shape[0]
    elements = outputs[0].numel
    return 2 * elements * (k if isinstance(k, int) else 1) + (elements if len(inputs) == 3 else 0) + _activation_flops(attrs["activation"], elements)


define("nn.linear", _linear_infer, _linear_reference, inputs=(2, 3), attrs={"activation": Attr("str", "none")},
       flops=_linear_flops, doc="activation(x @ weight + bias): x (..., K), weight (K, N), optional bias (N,).")


def _attention_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    query, key, value = inputs[:3]
    if not (query.rank == key.rank == value.rank >= 2):
        raise ShapeError(f"query, key and value need the same rank >= 2: {query}, {key}, {value}")
    if tuple(query.shape[:-2]) != tuple(key.shape[:-2]) or tuple(key.shape[:-2]) != tuple(value.shape[:-2]):
        raise ShapeError(f"leading dims differ: {query.shape}, {key.shape}, {value.shape}")
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ShapeError(f"query {query.shape} / key {key.shape} / value {value.shape} do not fit")
    if any(t.dtype != query.dtype for t in (key, value)) or query.dtype not in FLOAT_DTYPES:
        raise ShapeError("query, key and value must share a float dtype")
    if len(inputs) == 4:
        from .registry import broadcast_shapes

        mask = inputs[3]
        scores = tuple(query.shape[:-1]) + (key.shape[-2],)
        if broadcast_shapes(mask.shape, scores) != scores:
            raise ShapeError(f"mask {mask.shape} does not broadcast to the scores {scores}")
        if mask.dtype not in ("bool", query.dtype):
            raise ShapeError(f"mask must be bool (True keeps) or {query.dtype} (added), got {mask.dtype}")
    return query.with_shape(tuple(query.shape[:-1]) + (value.shape[-1],))


def _attention_reference(query, key, value, mask=None, *, scale, causal) -> np.ndarray:
    wide = np.float64
    scale = 1.0 / np.sqrt(query.shape[-1]) if scale is None else scale
    scores = np.matmul(query.astype(wide), np.swapaxes(key.astype(wide), -1, -2)) * scale
    if causal:
        rows, cols = scores.shape[-2:]
        scores = np.where(np.tril(np.ones((rows, cols), dtype=bool)), scores, -np.inf)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + mask
    with np.errstate(invalid="ignore"):
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights = weights / weights.sum(axis=-1, keepdims=True)
    weights = np.where(np.isnan(weights), 0.0, weights)  # a row with every key masked attends to nothing
    return np.matmul(weights, value.astype(wide)).astype(query.dtype)


def _attention_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    query, key, value = inputs[:3]
    scores = query.numel // max(int(query.shape[-1]) if isinstance(query.shape[-1], int) else 1, 1) * (
        key.shape[-2] if isinstance(key.shape[-2], int) else 1)
    depth = query.shape[-1] if isinstance(query.shape[-1], int) else 1
    return 2 * scores * depth + 5 * scores + 2 * scores * (value.shape[-1] if isinstance(value.shape[-1], int) else 1)


define("nn.attention", _attention_infer, _attention_reference, inputs=(3, 4),
       attrs={"scale": Attr("optional_float", None), "causal": Attr("bool", False)}, flops=_attention_flops,
       doc="softmax(query @ key^T * scale [causal] [+ mask]) @ value over (..., S, D) tensors; "
           "scale defaults to 1/sqrt(D); a bool mask keeps True, a float mask is added; causal is top-left aligned; "
           "a query whose every key is masked gets zeros (as torch SDPA gives).")
