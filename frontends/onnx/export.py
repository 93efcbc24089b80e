"""optc Graph -> ONNX (opset 17), for ONNX tools and runtimes.

    model = to_onnx(graph)
    onnx.save(model, "model.onnx")          # opens in Netron, runs in ONNX Runtime
    again = load_onnx("model.onnx")          # and imports back into optc

Every registry op maps to one emitter in ``ONNX_EMITTERS`` (op name -> function). An emitter gets
the ``OnnxBuilder`` and a ``Call`` (the node's input names and types, attributes, and the names its
outputs must have) and adds the ONNX nodes that compute it. Ops opset 17 has no node for become
short decompositions: GELU (Erf or Tanh), RMS norm, attention (MatMul, Softmax, MatMul), group norm
(through InstanceNormalization), dilated average pooling (a depthwise Conv with a kernel of ones)
and ``mod`` of floats. Params become initializers; every value keeps its optc name and type, so
the model shows optc's names and shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ... import __version__
from ...errors import OptcError, UnsupportedOpError
from ...ir.graph import Graph, Value
from ...ir.ops import all_ops, registry
from ...ir.ops.nn import ACTIVATIONS
from ...ir.types import FLOAT_DTYPES, TensorType
from .export_quant import QUANT_ONNX_EMITTERS

OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17, so older runtimes load the file too


@dataclass
class Call:
    """One optc node as an emitter sees it: ONNX names in, attributes, ONNX names out."""

    name: str
    inputs: list[str]
    input_types: list[TensorType]
    attrs: dict[str, Any]
    outputs: list[str]
    output_types: list[TensorType]

    def with_io(self, inputs: list[str], input_types: list[TensorType], attrs: dict[str, Any]) -> "Call":
        """The same outputs computed from other inputs (for fused activations and decompositions)."""
        return Call(self.name, inputs, input_types, attrs, self.outputs, self.output_types)


class OnnxBuilder:
    """Collects nodes and initializers; hands out fresh names that no optc value uses."""

    def __init__(self, graph: Graph) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = {value.name for value in graph.values()} | {node.name for node in graph.nodes}
        self.symbols: dict[str, tuple[str, int]] = {}  # symbolic size -> (input name, axis)

    def fresh(self, hint: str) -> str:
        name, counter = hint, 1
        while name in self._taken:
            name = f"{hint}_{counter}"
            counter += 1
        self._taken.add(name)
        return name

    def emit(self, op_type: str, inputs: Sequence[str], call: Call, outputs: Sequence[str] | int = 1,
             **attributes: Any) -> list[str]:
        """Add one node; ``outputs`` is a count of fresh names or the exact names to write."""
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{call.name}.{op_type.lower()}") for _ in range(outputs)]
        attributes = {key: value for key, value in attributes.items() if value is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=self.fresh(call.name), **attributes))
        return list(outputs)

    def one(self, op_type: str, inputs: Sequence[str], call: Call, out: str | None = None, **attributes: Any) -> str:
        return self.emit(op_type, inputs, call, [out] if out else 1, **attributes)[0]

    def const(self, array: Any, hint: str, dtype: Any = None) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def ints(self, values: Sequence[int], hint: str) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), hint)


Emitter = Callable[[OnnxBuilder, Call], None]


# ---- helpers ------------------------------------------------------------------------------------------------

def _simple(op_type: str, **renamed: str) -> Emitter:
    """One ONNX node with the same inputs; ``renamed`` maps ONNX attribute names to optc ones."""

    def emit(b: OnnxBuilder, call: Call) -> None:
        attributes = {onnx_name: call.attrs[optc_name] for onnx_name, optc_name in renamed.items()}
        b.emit(op_type, call.inputs, call, call.outputs, **attributes)

    return emit


def _scalar(b: OnnxBuilder, value: float, like: TensorType, hint: str = "scalar") -> str:
    return b.const(np.asarray(value, dtype=like.np_dtype), hint)


def _as_bool(b: OnnxBuilder, call: Call, name: str, type_: TensorType) -> str:
    return name if type_.dtype == "bool" else b.one("Cast", [name], call, to=onnx.TensorProto.BOOL)


# ---- math.* ----------------------------------------------------------------------------------------------------

def _rsqrt(b: OnnxBuilder, call: Call) -> None:
    b.emit("Reciprocal", [b.one("Sqrt", call.inputs, call)], call, call.outputs)


def _silu(b: OnnxBuilder, call: Call) -> None:
    x = call.inputs[0]
    b.emit("Mul", [x, b.one("Sigmoid", [x], call)], call, call.outputs)


def _gelu(b: OnnxBuilder, call: Call) -> None:
    x, like = call.inputs[0], call.input_types[0]
    if call.attrs["approximate"] == "tanh":
        cube = b.one("Mul", [x, b.one("Mul", [x, x], call)], call)
        inner = b.one("Add", [x, b.one("Mul", [cube, _scalar(b, 0.044715, like)], call)], call)
        core = b.one("Tanh", [b.one("Mul", [inner, _scalar(b, math.sqrt(2.0 / math.pi), like)], call)], call)
    elif call.attrs["approximate"] == "none":
        core = b.one("Erf", [b.one("Mul", [x, _scalar(b, 1.0 / math.sqrt(2.0), like)], call)], call)
    else:
        raise OptcError(f"{call.name}: gelu approximate='{call.attrs['approximate']}' is not 'none' or 'tanh'")
    half_x = b.one("Mul", [x, _scalar(b, 0.5, like)], call)
    b.emit("Mul", [half_x, b.one("Add", [core, _scalar(b, 1.0, like)], call)], call, call.outputs)


def _clip(b: OnnxBuilder, call: Call) -> None:
    like = call.input_types[0]
    bounds = []
    for key in ("min", "max"):
        bound = call.attrs[key]
        if bound is not None and like.dtype not in FLOAT_DTYPES:
            bound = math.trunc(bound)  # NumPy clips to the float bound, then the cast truncates
        bounds.append("" if bound is None else _scalar(b, bound, like, key))
    while bounds and bounds[-1] == "":
        bounds.pop()
    b.emit("Clip", [call.inputs[0], *bounds], call, call.outputs)


def _relu(b: OnnxBuilder, call: Call) -> None:
    if call.input_types[0].dtype in FLOAT_DTYPES:
        b.emit("Relu", call.inputs, call, call.outputs)
    else:  # runtimes implement Relu for floats only
        b.emit("Max", [call.inputs[0], _scalar(b, 0, call.input_types[0], "zero")], call, call.outputs)


def _not(b: OnnxBuilder, call: Call) -> None:
    b.emit("Not", [_as_bool(b, call, call.inputs[0], call.input_types[0])], call, call.outputs)


def _cast(b: OnnxBuilder, call: Call) -> None:
    b.emit("Cast", call.inputs, call, call.outputs, to=helper.np_dtype_to_tensor_dtype(np.dtype(call.attrs["dtype"])))


def _logical(op_type: str) -> Emitter:
    def emit(b: OnnxBuilder, call: Call) -> None:
        operands = [_as_bool(b, call, name, type_) for name, type_ in zip(call.inputs, call.input_types)]
        b.emit(op_type, operands, call, call.outputs)

    return emit


def _mod(b: OnnxBuilder, call: Call) -> None:
    a, divisor = call.inputs
    if call.attrs["fmod"]:
        b.emit("Mod", call.inputs, call, call.outputs, fmod=1)
    elif call.input_types[0].dtype not in FLOAT_DTYPES:
        b.emit("Mod", call.inputs, call, call.outputs, fmod=0)
    else:  # ONNX Mod takes floats only with fmod=1: a - floor(a / b) * b follows the divisor's sign
        quotient = b.one("Floor", [b.one("Div", [a, divisor], call)], call)
        b.emit("Sub", [a, b.one("Mul", [quotient, divisor], call)], call, call.outputs)


# ---- reduce.* ----------------------------------------------------------------------------------------------------

def _reduce(op_type: str, widen: bool = False) -> Emitter:
    """Opset 17 reductions take axes as an attribute, except ReduceSum (an input)."""

    def emit(b: OnnxBuilder, call: Call) -> None:
        axes, keepdims = call.attrs["axes"], int(call.attrs["keepdims"])
        x, like = call.inputs[0], call.input_types[0]
        if axes is not None and len(axes) == 0:  # NumPy reduces nothing; ONNX would reduce everything
            b.emit("Identity", [x], call, call.outputs)
            return
        cast_back = widen and like.dtype not in FLOAT_DTYPES
        if cast_back:
            x = b.one("Cast", [x], call, to=onnx.TensorProto.DOUBLE)
        out = None if cast_back else call.outputs[0]
        if op_type == "ReduceSum":
            inputs = [x] if axes is None else [x, b.ints(axes, "axes")]
            result = b.one(op_type, inputs, call, out, keepdims=keepdims)
        else:
            result = b.one(op_type, [x], call, out, keepdims=keepdims, axes=None if axes is None else list(axes))
        if cast_back:
            b.emit("Cast", [result], call, call.outputs, to=helper.np_dtype_to_tensor_dtype(like.np_dtype))

    return emit


def _arg(op_type: str) -> Emitter:
    def emit(b: OnnxBuilder, call: Call) -> None:
        b.emit(op_type, call.inputs, call, call.outputs, axis=call.attrs["axis"], keepdims=int(call.attrs["keepdims"]))

    return emit


# ---- tensor.* ----------------------------------------------------------------------------------------------------

def _shape_input(b: OnnxBuilder, call: Call, dims: Sequence[Any], unknown_fill: int) -> str:
    """An int64 shape tensor: symbols an input carries read that input's size at run time, the
    others become ``unknown_fill`` (-1 for Reshape, 1 for Expand)."""
    pieces: list[str] = []
    constant: list[int] = []
    for dim in dims:
        if isinstance(dim, str) and dim in b.symbols:
            if constant:
                pieces.append(b.ints(constant, "shape"))
                constant = []
            source, axis = b.symbols[dim]
            pieces.append(b.one("Shape", [source], call, start=axis, end=axis + 1))
        else:
            constant.append(unknown_fill if isinstance(dim, str) else int(dim))
    if constant or not pieces:
        pieces.append(b.ints(constant, "shape"))
    return pieces[0] if len(pieces) == 1 else b.one("Concat", pieces, call, axis=0)


def _reshape(b: OnnxBuilder, call: Call) -> None:
    dims = call.attrs["shape"]
    unknown = [dim for dim in dims if isinstance(dim, str) and dim not in b.symbols]
    if len(unknown) > 1:
        raise OptcError(f"{call.name}: reshape to {tuple(dims)} has {len(unknown)} sizes no graph input fixes")
    # optc's 0 is a real zero-size dim; ONNX's 0 copies the input's dim unless allowzero
    b.emit("Reshape", [call.inputs[0], _shape_input(b, call, dims, -1)], call, call.outputs,
           allowzero=1 if any(dim == 0 for dim in dims) else None)


def _split(b: OnnxBuilder, call: Call) -> None:
    b.emit("Split", [call.inputs[0], b.ints(call.attrs["sizes"], "sizes")], call, call.outputs, axis=call.attrs["axis"])


def _slice(b: OnnxBuilder, call: Call) -> None:
    inputs = [call.inputs[0], b.ints(call.attrs["starts"], "starts"), b.ints(call.attrs["ends"], "ends")]
    if call.attrs["axes"] is not None or call.attrs["steps"] is not None:
        axes = call.attrs["axes"] if call.attrs["axes"] is not None else range(len(call.attrs["starts"]))
        inputs.append(b.ints(axes, "axes"))
    if call.attrs["steps"] is not None:
        inputs.append(b.ints(call.attrs["steps"], "steps"))
    b.emit("Slice", inputs, call, call.outputs)  # ONNX clamps out-of-range bounds as Python does


def _cache_update(b: OnnxBuilder, call: Call) -> None:
    # every cache slot takes the update entry at (slot - position) where that lies in the update
    cache_type, update_type = call.input_types[0], call.input_types[1]
    rank = cache_type.rank
    axis = call.attrs["axis"] % rank
    capacity, count = cache_type.shape[axis], update_type.shape[axis]
    if not isinstance(capacity, int) or not isinstance(count, int):
        raise OptcError(f"{call.name}: cache.update over a symbolic capacity cannot export to ONNX")
    along = [1] * rank
    along[axis] = capacity
    slots = b.const(np.arange(capacity, dtype=np.int64).reshape(along), "slots")
    position = b.one("Cast", [b.one("Reshape", [call.inputs[2], b.ints([1] * rank, "ones")], call)], call,
                     to=onnx.TensorProto.INT64)
    offset = b.one("Sub", [slots, position], call)
    zero = b.const(np.asarray(0, dtype=np.int64), "zero")
    inside = b.one("And", [b.one("GreaterOrEqual", [offset, zero], call),
                           b.one("Less", [offset, b.const(np.asarray(count, dtype=np.int64), "count")], call)], call)
    index = b.one("Reshape", [b.one("Where", [inside, offset, zero], call), b.ints([capacity], "capacity")], call)
    moved = b.one("Gather", [call.inputs[1], index], call, axis=axis)
    b.emit("Where", [inside, moved, call.inputs[0]], call, call.outputs)


def _expand(b: OnnxBuilder, call: Call) -> None:
    # Expand broadcasts both ways, as NumPy; a size no input carries must equal the input's: 1 keeps it
    b.emit("Expand", [call.inputs[0], _shape_input(b, call, call.attrs["shape"], 1)], call, call.outputs)


def _tile(b: OnnxBuilder, call: Call) -> None:
    b.emit("Tile", [call.inputs[0], b.ints(call.attrs["repeats"], "repeats")], call, call.outputs)


def _pad(b: OnnxBuilder, call: Call) -> None:
    inputs = [call.inputs[0], b.ints(call.attrs["pads"], "pads")]
    if call.attrs["mode"] == "constant":
        inputs.append(_scalar(b, call.attrs["value"], call.input_types[0], "value"))
    b.emit("Pad", inputs, call, call.outputs, mode=call.attrs["mode"])


# ---- nn.* ----------------------------------------------------------------------------------------------------------

Core = Callable[[OnnxBuilder, Call, "str | None"], str]


def _activated(core: Core) -> Emitter:
    """A conv or linear node (``core`` writes it and returns its output), then its fused
    activation through the activation op's own emitter."""

    def emit(b: OnnxBuilder, call: Call) -> None:
        activation = ACTIVATIONS[call.attrs.get("activation", "none")]
        result = core(b, call, None if activation else call.outputs[0])
        if activation:
            op, attrs = activation
            ONNX_EMITTERS[op](b, call.with_io([result], [call.output_types[0]], registry.get(op).check_attrs(attrs)))

    return emit


def _conv(b: OnnxBuilder, call: Call, out: str | None) -> str:
    weight = call.input_types[1]
    rank = weight.rank - 2
    return b.one("Conv", call.inputs, call, out, kernel_shape=list(weight.static_shape()[2:]), group=call.attrs["groups"],
                 **{name: _window_list(call.attrs[name], rank, name) for name in ("strides", "pads", "dilations")})


def _linear(b: OnnxBuilder, call: Call, out: str | None) -> str:
    if len(call.inputs) == 2:
        return b.one("MatMul", call.inputs, call, out)
    return b.one("Add", [b.one("MatMul", call.inputs[:2], call), call.inputs[2]], call, out)


def _window_list(value: Sequence[int] | None, rank: int, name: str) -> list[int]:
    if value is not None:
        return list(value)
    return [0] * (2 * rank) if name == "pads" else [1] * rank


def _conv_transpose(b: OnnxBuilder, call: Call) -> None:
    weight = call.input_types[1]
    rank = weight.rank - 2
    b.emit("ConvTranspose", call.inputs, call, call.outputs, kernel_shape=list(weight.static_shape()[2:]),
           strides=_window_list(call.attrs["strides"], rank, "strides"), pads=_window_list(call.attrs["pads"], rank, "pads"),
           dilations=_window_list(call.attrs["dilations"], rank, "dilations"), group=call.attrs["groups"],
           output_padding=list(call.attrs["output_padding"] or (0,) * rank))


def _pool_windows(call: Call) -> dict[str, Any]:
    rank = len(call.attrs["kernel"])
    return {"kernel_shape": list(call.attrs["kernel"]), "strides": _window_list(call.attrs["strides"], rank, "strides"),
            "pads": _window_list(call.attrs["pads"], rank, "pads")}


def _runtime_pools_fit(call: Call) -> bool:
    """Whether a runtime's pool node computes this pool: no ceil mode (ONNX's shape rule for it
    lets a window start in the end padding, optc's does not), pads smaller than the kernel."""
    rank = len(call.attrs["kernel"])
    pads = _window_list(call.attrs["pads"], rank, "pads")
    kernel = call.attrs["kernel"]
    return not call.attrs["ceil_mode"] and all(pads[a] < kernel[a] and pads[rank + a] < kernel[a] for a in range(rank))


def _floor_mode_pads(call: Call) -> tuple[list[int], list[int], list[int]]:
    """Begin and end pads after which a floor-mode window pass gives exactly the output's windows
    (negative end pads crop), with the static spatial sizes."""
    like, kernel = call.input_types[0], call.attrs["kernel"]
    rank = len(kernel)
    if not all(isinstance(d, int) for d in like.shape[2:]):
        raise OptcError(f"{call.name}: this pool needs static spatial sizes for ONNX")
    spatial = [int(d) for d in like.shape[2:]]
    strides = _window_list(call.attrs["strides"], rank, "strides")
    dilations = _window_list(call.attrs["dilations"], rank, "dilations")
    begins = _window_list(call.attrs["pads"], rank, "pads")[:rank]
    out = call.output_types[0].shape[2:]
    ends = [(out[a] - 1) * strides[a] + dilations[a] * (kernel[a] - 1) + 1 - spatial[a] - begins[a] for a in range(rank)]
    return begins, ends, spatial


def _max_pool(b: OnnxBuilder, call: Call) -> None:
    rank = len(call.attrs["kernel"])
    dilations = _window_list(call.attrs["dilations"], rank, "dilations")
    if _runtime_pools_fit(call):
        b.emit("MaxPool", call.inputs, call, call.outputs, dilations=dilations, **_pool_windows(call))
        return
    like = call.input_types[0]
    begins, ends, _ = _floor_mode_pads(call)
    lowest = -np.inf if like.dtype in FLOAT_DTYPES else np.iinfo(like.np_dtype).min
    pads = b.ints([0, 0, *begins, 0, 0, *ends], "pads")
    padded = b.one("Pad", [call.inputs[0], pads, _scalar(b, lowest, like, "lowest")], call)
    b.emit("MaxPool", [padded], call, call.outputs, kernel_shape=list(call.attrs["kernel"]), dilations=dilations,
           strides=_window_list(call.attrs["strides"], rank, "strides"))


def _avg_pool(b: OnnxBuilder, call: Call) -> None:
    rank = len(call.attrs["kernel"])
    dilations = _window_list(call.attrs["dilations"], rank, "dilations")
    if all(d == 1 for d in dilations) and _runtime_pools_fit(call):
        b.emit("AveragePool", call.inputs, call, call.outputs, count_include_pad=int(call.attrs["count_include_pad"]),
               **_pool_windows(call))
        return
    _avg_pool_as_conv(b, call, rank, dilations)


def _avg_pool_as_conv(b: OnnxBuilder, call: Call, rank: int, dilations: list[int]) -> None:
    """Window sums by a depthwise Conv with a kernel of ones over the padded input, divided by
    per-window counts known at export time (AveragePool has no dilations before opset 19)."""
    x, like = call.inputs[0], call.input_types[0]
    if not isinstance(like.shape[1], int):
        raise OptcError(f"{call.name}: this average pool needs a static channel count for ONNX")
    kernel, attrs = tuple(call.attrs["kernel"]), call.attrs
    strides = _window_list(attrs["strides"], rank, "strides")
    pads = _window_list(attrs["pads"], rank, "pads")
    out = tuple(call.output_types[0].shape[2:])
    _, ends, spatial_sizes = _floor_mode_pads(call)
    spatial = tuple(spatial_sizes)
    padded = b.one("Pad", [x, b.ints([0, 0, *pads[:rank], 0, 0, *ends], "pads")], call)
    channels = int(like.shape[1])
    ones = b.const(np.ones((channels, 1) + kernel, dtype=like.np_dtype), "ones")
    sums = b.one("Conv", [padded, ones], call, kernel_shape=list(kernel), strides=strides, dilations=dilations,
                 group=channels)
    # what each window counts: the input, explicit pads when count_include_pad, never ceil mode's extra
    covered = np.pad(np.ones(spatial), [(pads[a], pads[rank + a]) for a in range(rank)],
                     constant_values=1.0 if attrs["count_include_pad"] else 0.0)
    for a in range(rank):
        length = pads[a] + spatial[a] + ends[a]
        covered = np.take(covered, range(min(length, covered.shape[a])), axis=a)
        covered = np.pad(covered, [(0, length - covered.shape[a]) if i == a else (0, 0) for i in range(rank)])
    conv = registry.get("nn.conv")
    counts = conv.run([covered[None, None], np.ones((1, 1) + kernel)],
                      conv.check_attrs({"strides": strides, "dilations": dilations}))[0]
    if tuple(counts.shape[2:]) != out:
        raise OptcError(f"{call.name}: average pool geometry gives {counts.shape[2:]}, the graph says {out}")
    b.emit("Div", [sums, b.const(counts.astype(like.np_dtype), "counts")], call, call.outputs)


def _group_norm(b: OnnxBuilder, call: Call) -> None:
    # opset 17 has no GroupNormalization: instance-normalize (N, G, -1), then the per-channel affine
    x, scale, bias = call.inputs
    like = call.input_types[0]
    groups = call.attrs["num_groups"]
    grouped = b.one("Reshape", [x, b.ints([0, groups, -1], "groups")], call)
    unit = np.ones(groups, dtype=like.np_dtype)
    normalized = b.one("InstanceNormalization", [grouped, b.const(unit, "ones"), b.const(unit * 0, "zeros")], call,
                       epsilon=call.attrs["epsilon"])
    restored = b.one("Reshape", [normalized, b.one("Shape", [x], call)], call)
    per_channel = b.ints([-1] + [1] * (like.rank - 2), "per_channel")
    scaled = b.one("Mul", [restored, b.one("Reshape", [scale, per_channel], call)], call)
    b.emit("Add", [scaled, b.one("Reshape", [bias, per_channel], call)], call, call.outputs)


def _layer_norm(b: OnnxBuilder, call: Call) -> None:
    b.emit("LayerNormalization", call.inputs, call, call.outputs, axis=call.attrs["axis"], epsilon=call.attrs["epsilon"])


def _rms_norm(b: OnnxBuilder, call: Call) -> None:
    x, scale = call.inputs
    like = call.input_types[0]
    axes = list(range(call.attrs["axis"] % like.rank, like.rank))
    mean_square = b.one("ReduceMean", [b.one("Mul", [x, x], call)], call, axes=axes, keepdims=1)
    root = b.one("Sqrt", [b.one("Add", [mean_square, _scalar(b, call.attrs["epsilon"], like, "epsilon")], call)], call)
    b.emit("Mul", [b.one("Div", [x, root], call), scale], call, call.outputs)


def _lrn(b: OnnxBuilder, call: Call) -> None:
    size, alpha, beta, bias = (call.attrs[key] for key in ("size", "alpha", "beta", "bias"))
    if size % 2:
        b.emit("LRN", call.inputs, call, call.outputs, size=size, alpha=alpha, beta=beta, bias=bias)
        return
    # runtimes take odd sizes only: sum the squares over the channel window with a Conv of ones
    # ((size-1)//2 channels before, size//2 after, as ONNX's LRN), then the same formula
    x, like = call.inputs[0], call.input_types[0]
    spatial = like.rank - 2
    lifted = b.one("Unsqueeze", [b.one("Mul", [x, x], call), b.ints([1], "axis")], call)
    ones = b.const(np.ones((1, 1, size) + (1,) * spatial, dtype=like.np_dtype), "ones")
    pads = [(size - 1) // 2] + [0] * spatial + [size // 2] + [0] * spatial
    total = b.one("Squeeze", [b.one("Conv", [lifted, ones], call, pads=pads), b.ints([1], "axis")], call)
    scaled = b.one("Mul", [total, _scalar(b, alpha / size, like, "alpha")], call)
    base = b.one("Add", [scaled, _scalar(b, bias, like, "bias")], call)
    b.emit("Div", [x, b.one("Pow", [base, _scalar(b, beta, like, "beta")], call)], call, call.outputs)


def _attention(b: OnnxBuilder, call: Call) -> None:
    # opset 17 has no Attention: softmax(q @ k^T * scale [+ causal] [+ mask]) @ v
    query, key, value = call.inputs[:3]
    q_type, k_type = call.input_types[0], call.input_types[1]
    depth = q_type.shape[-1]
    scale = call.attrs["scale"]
    if scale is None:
        if not isinstance(depth, int):
            raise OptcError(f"{call.name}: attention over a symbolic head size needs an explicit scale for ONNX")
        scale = 1.0 / math.sqrt(depth)
    perm = list(range(k_type.rank - 2)) + [k_type.rank - 1, k_type.rank - 2]
    scores = b.one("MatMul", [query, b.one("Transpose", [key], call, perm=perm)], call)
    scores = b.one("Mul", [scores, _scalar(b, scale, q_type, "scale")], call)
    if call.attrs["causal"]:
        rows, cols = q_type.shape[-2], k_type.shape[-2]
        if not isinstance(rows, int) or not isinstance(cols, int):
            raise OptcError(f"{call.name}: causal attention over symbolic lengths cannot export to ONNX")
        causal = np.where(np.tril(np.ones((rows, cols), dtype=bool)), 0.0, -np.inf).astype(q_type.np_dtype)
        scores = b.one("Add", [scores, b.const(causal, "causal")], call)
    masked = len(call.inputs) == 4
    if masked:
        mask, mask_type = call.inputs[3], call.input_types[3]
        if mask_type.dtype == "bool":
            scores = b.one("Where", [mask, scores, _scalar(b, -np.inf, q_type, "minus_inf")], call)
        else:
            scores = b.one("Add", [scores, mask], call)
    weights = b.one("Softmax", [scores], call, axis=-1)
    if masked:  # a query whose every key is masked attends to nothing (softmax alone gives NaN)
        weights = b.one("Where", [b.one("IsNaN", [weights], call), _scalar(b, 0.0, q_type, "zero"), weights], call)
    b.emit("MatMul", [weights, value], call, call.outputs)


# ---- the table: every registry op -> the emitter that writes it as ONNX ---------------------------------------------

ONNX_EMITTERS: dict[str, Emitter] = {
    # math.*: unary on floats
    "math.exp": _simple("Exp"), "math.log": _simple("Log"), "math.sqrt": _simple("Sqrt"), "math.rsqrt": _rsqrt,
    "math.reciprocal": _simple("Reciprocal"), "math.sin": _simple("Sin"), "math.cos": _simple("Cos"),
    "math.tanh": _simple("Tanh"), "math.erf": _simple("Erf"), "math.sigmoid": _simple("Sigmoid"),
    "math.floor": _simple("Floor"), "math.ceil": _simple("Ceil"), "math.round": _simple("Round"),
    "math.softplus": _simple("Softplus"), "math.softsign": _simple("Softsign"), "math.silu": _silu, "math.gelu": _gelu,
    "math.hard_sigmoid": _simple("HardSigmoid", alpha="alpha", beta="beta"), "math.hard_swish": _simple("HardSwish"),
    "math.leaky_relu": _simple("LeakyRelu", alpha="alpha"), "math.elu": _simple("Elu", alpha="alpha"),
    "math.selu": _simple("Selu", alpha="alpha", gamma="gamma"), "math.shrink": _simple("Shrink", lambd="lambd", bias="bias"),
    # math.*: unary on any dtype
    "math.neg": _simple("Neg"), "math.abs": _simple("Abs"), "math.sign": _simple("Sign"), "math.relu": _relu,
    "math.clip": _clip, "math.not": _not, "math.isnan": _simple("IsNaN"), "math.cast": _cast,
    # math.*: binary, broadcasting
    "math.add": _simple("Add"), "math.sub": _simple("Sub"), "math.mul": _simple("Mul"),
    "math.div": _simple("Div"),  # integer Div truncates toward zero, as optc's
    "math.pow": _simple("Pow"), "math.maximum": _simple("Max"), "math.minimum": _simple("Min"), "math.mod": _mod,
    "math.equal": _simple("Equal"), "math.less": _simple("Less"), "math.less_equal": _simple("LessOrEqual"),
    "math.greater": _simple("Greater"), "math.greater_equal": _simple("GreaterOrEqual"),
    "math.and": _logical("And"), "math.or": _logical("Or"), "math.xor": _logical("Xor"),
    "math.prelu": _simple("PRelu"), "math.where": _simple("Where"),
    # linalg.*
    "linalg.matmul": _simple("MatMul"),
    # reduce.*
    "reduce.sum": _reduce("ReduceSum"), "reduce.mean": _reduce("ReduceMean", widen=True),
    "reduce.max": _reduce("ReduceMax"), "reduce.min": _reduce("ReduceMin"), "reduce.prod": _reduce("ReduceProd"),
    "reduce.sum_square": _reduce("ReduceSumSquare"), "reduce.l1": _reduce("ReduceL1"),
    "reduce.l2": _reduce("ReduceL2", widen=True), "reduce.log_sum_exp": _reduce("ReduceLogSumExp", widen=True),
    "reduce.argmax": _arg("ArgMax"), "reduce.argmin": _arg("ArgMin"),
    # tensor.*
    "tensor.reshape": _reshape, "tensor.transpose": _simple("Transpose", perm="perm"),
    "tensor.concat": _simple("Concat", axis="axis"), "tensor.split": _split, "tensor.slice": _slice,
    "cache.update": _cache_update,
    "tensor.gather": _simple("Gather", axis="axis"), "tensor.expand": _expand, "tensor.tile": _tile, "tensor.pad": _pad,
    # nn.*
    "nn.conv": _activated(_conv),
    "nn.conv_transpose": _conv_transpose, "nn.max_pool": _max_pool, "nn.avg_pool": _avg_pool,
    "nn.batch_norm": _simple("BatchNormalization", epsilon="epsilon"),
    "nn.instance_norm": _simple("InstanceNormalization", epsilon="epsilon"), "nn.group_norm": _group_norm,
    "nn.layer_norm": _layer_norm, "nn.rms_norm": _rms_norm, "nn.lrn": _lrn,
    "nn.softmax": _simple("Softmax", axis="axis"), "nn.log_softmax": _simple("LogSoftmax", axis="axis"),
    "nn.linear": _activated(_linear), "nn.attention": _attention,
}
ONNX_EMITTERS.update(QUANT_ONNX_EMITTERS)  # quant.*: frontends/onnx/export_quant.py


def missing_onnx_emitters() -> list[str]:
    """Registry ops without an ONNX emitter (empty when the table covers the registry)."""
    return sorted(name for name in all_ops() if name not in ONNX_EMITTERS)


# ---- graph -> ModelProto ---------------------------------------------------------------------------------------------

def _value_info(name: str, type_: TensorType) -> onnx.ValueInfoProto:
    elem_type = helper.np_dtype_to_tensor_dtype(type_.np_dtype)
    return helper.make_tensor_value_info(name, elem_type, [dim for dim in type_.shape])


def to_onnx(graph: Graph, *, doc: str = "") -> onnx.ModelProto:
    """An opset-17 ModelProto computing ``graph``: inputs, outputs and values keep their optc names.

    Raises ``UnsupportedOpError`` listing every op without an emitter (none, while the table
    covers the registry) and ``OptcError`` for a node ONNX cannot express (a reshape with several
    sizes no input fixes, an attention with a symbolic head size and no scale).
    """
    unsupported: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op not in ONNX_EMITTERS:
            unsupported.setdefault(node.op, []).append(node.name)
    if unsupported:
        raise UnsupportedOpError(unsupported, source=f"to_onnx({graph.name})")
    b = OnnxBuilder(graph)
    for value in graph.inputs:
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, str):
                b.symbols.setdefault(dim, (value.name, axis))
    for value, array in graph.params.items():
        if value.uses or any(value is out for out in graph.outputs):
            b.initializers.append(numpy_helper.from_array(np.asarray(array), value.name))
    for node in graph.nodes:
        call = Call(node.name, [value.name for value in node.inputs], [value.type for value in node.inputs],
                    dict(node.attrs), [value.name for value in node.outputs], [value.type for value in node.outputs])
        ONNX_EMITTERS[node.op](b, call)

    produced = {name for proto in b.nodes for name in proto.output}
    outputs: list[onnx.ValueInfoProto] = []
    seen: set[str] = set()
    for value in graph.outputs:
        name = value.name
        if name not in produced or name in seen:  # an input, a param or a repeated output: a copy
            name = b.fresh(f"{value.name}_output")
            b.nodes.append(helper.make_node("Identity", [value.name], [name], name=b.fresh(name)))
        seen.add(name)
        outputs.append(_value_info(name, value.type))
    inner = [_value_info(value.name, value.type) for node in graph.nodes for value in node.outputs
             if value.name not in seen]
    onnx_graph = helper.make_graph(b.nodes, graph.name, [_value_info(v.name, v.type) for v in graph.inputs], outputs,
                                   b.initializers, doc_string=doc, value_info=inner)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="optc", producer_version=__version__)
    return model


__all__ = ["ONNX_EMITTERS", "OPSET", "Call", "OnnxBuilder", "missing_onnx_emitters", "to_onnx"]
