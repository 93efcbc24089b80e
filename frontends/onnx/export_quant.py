"""ONNX emitters of the ``quant.*`` ops for ``to_onnx`` (registered into ``ONNX_EMITTERS``).

quantize / dequantize are QuantizeLinear / DequantizeLinear; the integer products are
MatMulInteger (linear, matmul) and a float Conv of the centered operands rounded back to int32
(exact while |accumulator| < 2^24: runtimes implement ConvInteger for uint8 only); requantize is
its int64 arithmetic with a floor division (``v - Mod(v, 2^s)`` is divisible, so Div is exact);
the weight-only product unpacks nibbles with Mod/Div (opset 17 has no bitwise and).
"""

from __future__ import annotations

import numpy as np
import onnx

from ...ir.ops import registry
from ...ir.ops.nn import ACTIVATIONS
from ...ir.ops.quant import QUANT_RANGES

INT32, INT64, FLOAT = onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
ONNX_TYPES = {"int8": onnx.TensorProto.INT8, "uint8": onnx.TensorProto.UINT8}


def _per_axis(b, call, name: str, type_, axis: int | None, rank: int) -> str:
    """A scale/zero point reshaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    if axis is None or type_.rank == 0 or type_.numel == 1:
        return b.one("Reshape", [name, b.ints([], "scalar")], call) if type_.rank else name
    shape = [1] * rank
    shape[axis % rank] = -1
    return b.one("Reshape", [name, b.ints(shape, "per_axis")], call)


def _scalar_or_vector(b, call, name: str, type_) -> str:
    """QuantizeLinear reads a 1-D scale as per-axis: a one-element one becomes a scalar."""
    return b.one("Reshape", [name, b.ints([], "scalar")], call) if type_.rank and type_.numel == 1 else name


def _quantize(b, call) -> None:
    x_type, scale_type = call.input_types[0], call.input_types[1]
    per_axis = scale_type.numel > 1
    scale = _scalar_or_vector(b, call, call.inputs[1], scale_type)
    if len(call.inputs) == 3:
        zero = _scalar_or_vector(b, call, call.inputs[2], call.input_types[2])
    else:
        zero = b.const(np.zeros(scale_type.static_shape() if per_axis else (), call.attrs["dtype"]), "zero")
    b.emit("QuantizeLinear", [call.inputs[0], scale, zero], call, call.outputs,
           axis=call.attrs["axis"] % x_type.rank if per_axis else None)


def _dequantize(b, call) -> None:
    q, q_type = call.inputs[0], call.input_types[0]
    axis = call.attrs["axis"]
    centered = b.one("Cast", [q], call, to=INT32)
    if len(call.inputs) == 3:
        zero = b.one("Cast", [_per_axis(b, call, call.inputs[2], call.input_types[2], axis, q_type.rank)], call, to=INT32)
        centered = b.one("Sub", [centered, zero], call)
    scale = _per_axis(b, call, call.inputs[1], call.input_types[1], axis, q_type.rank)
    b.emit("Mul", [b.one("Cast", [centered], call, to=FLOAT), scale], call, call.outputs)


def _requantize(b, call) -> None:
    acc, multiplier, shift = call.inputs
    rank, axis, attrs = call.input_types[0].rank, call.attrs["axis"], call.attrs
    wide_multiplier = b.one("Cast", [_per_axis(b, call, multiplier, call.input_types[1], axis, rank)], call, to=INT64)
    wide_shift = b.one("Cast", [_per_axis(b, call, shift, call.input_types[2], axis, rank)], call, to=onnx.TensorProto.UINT64)
    one = b.const(np.ones((), np.uint64), "one")
    divisor = b.one("Cast", [b.one("BitShift", [one, wide_shift], call, direction="LEFT")], call, to=INT64)
    half = b.one("Div", [divisor, b.const(np.int64(2), "two")], call)
    value = b.one("Add", [b.one("Mul", [b.one("Cast", [acc], call, to=INT64), wide_multiplier], call), half], call)
    floored = b.one("Div", [b.one("Sub", [value, b.one("Mod", [value, divisor], call)], call), divisor], call)
    shifted = b.one("Add", [floored, b.const(np.int64(attrs["zero_point"]), "zero_point")], call)
    clipped = b.one("Clip", [shifted, b.const(np.int64(attrs["min"]), "min"), b.const(np.int64(attrs["max"]), "max")], call)
    b.emit("Cast", [clipped], call, call.outputs, to=ONNX_TYPES[attrs["dtype"]])


def _centered_float(b, call, name: str, zero: int) -> str:
    value = b.one("Cast", [name], call, to=FLOAT)
    return b.one("Sub", [value, b.const(np.float32(zero), "zero")], call) if zero else value


def _conv(b, call) -> None:
    weight = call.input_types[1]
    rank = weight.rank - 2
    attrs = call.attrs
    x = _centered_float(b, call, call.inputs[0], attrs["x_zero_point"])
    w = b.one("Cast", [call.inputs[1]], call, to=FLOAT)
    out = b.one("Conv", [x, w], call, kernel_shape=list(weight.static_shape()[2:]), group=attrs["groups"],
                strides=list(attrs["strides"] or [1] * rank), pads=list(attrs["pads"] or [0] * (2 * rank)),
                dilations=list(attrs["dilations"] or [1] * rank))
    result = b.one("Cast", [b.one("Round", [out], call)], call, to=INT32)
    if len(call.inputs) == 3:
        bias = b.one("Reshape", [call.inputs[2], b.ints([-1] + [1] * rank, "per_channel")], call)
        b.emit("Add", [result, bias], call, call.outputs)
    else:
        b.emit("Identity", [result], call, call.outputs)


def _matmul_integer(b, call, a_zero: int, b_zero: int, bias: str | None) -> None:
    types = call.input_types
    zeros = [b.const(np.asarray(a_zero, types[0].dtype), "a_zero"), b.const(np.asarray(b_zero, types[1].dtype), "b_zero")]
    product = [call.inputs[0], call.inputs[1], *zeros]
    if bias is None:
        b.emit("MatMulInteger", product, call, call.outputs)
    else:
        b.emit("Add", [b.one("MatMulInteger", product, call), bias], call, call.outputs)


def _linear(b, call) -> None:
    _matmul_integer(b, call, call.attrs["x_zero_point"], 0, call.inputs[2] if len(call.inputs) == 3 else None)


def _matmul(b, call) -> None:
    _matmul_integer(b, call, call.attrs["a_zero_point"], call.attrs["b_zero_point"], None)


def _dynamic_quantize(b, call) -> None:
    x = call.inputs[0]
    peak = b.one("ReduceMax", [b.one("Abs", [x], call)], call, keepdims=0)
    positive = b.one("Greater", [peak, b.const(np.float32(0), "zero")], call)
    scaled = b.one("Div", [peak, b.const(np.float32(127), "levels")], call)
    scale = b.one("Where", [positive, scaled, b.const(np.float32(1), "one")], call, call.outputs[1])
    b.emit("QuantizeLinear", [x, scale, b.const(np.int8(0), "zero_point")], call, [call.outputs[0]])


def _weight_matmul(b, call) -> None:
    from .export import ONNX_EMITTERS

    x, weight, scales = call.inputs[:3]
    bits, group = call.attrs["bits"], call.attrs["group_size"]
    packed_rows, width = call.input_types[1].static_shape()
    depth = packed_rows * (2 if bits == 4 else 1)
    values = b.one("Cast", [weight], call, to=INT32)
    if bits == 4:
        sixteen = b.const(np.int32(16), "sixteen")

        def signed(nibble: str) -> str:  # n - 16 * (n >= 8)
            high_half = b.one("Cast", [b.one("GreaterOrEqual", [nibble, b.const(np.int32(8), "eight")], call)], call, to=INT32)
            return b.one("Sub", [nibble, b.one("Mul", [high_half, sixteen], call)], call)

        low, high = signed(b.one("Mod", [values, sixteen], call)), signed(b.one("Div", [values, sixteen], call))
        axis = b.ints([1], "axis")
        pairs = b.one("Concat", [b.one("Unsqueeze", [low, axis], call), b.one("Unsqueeze", [high, axis], call)], call, axis=1)
        values = b.one("Reshape", [pairs, b.ints([depth, width], "rows")], call)
    groups = depth // group
    expanded = b.one("Expand", [b.one("Reshape", [scales, b.ints([groups, 1, width], "grouped")], call),
                                b.ints([groups, group, width], "group_shape")], call)
    dense = b.one("Mul", [b.one("Cast", [values], call, to=FLOAT), b.one("Reshape", [expanded, b.ints([depth, width], "rows")], call)],
                  call)
    activation = ACTIVATIONS[call.attrs["activation"]]
    out = None if activation else call.outputs[0]
    product = b.one("MatMul", [x, dense], call, out if len(call.inputs) == 3 else None)
    if len(call.inputs) == 4:
        product = b.one("Add", [product, call.inputs[3]], call, out)
    if activation:
        op, attrs = activation
        ONNX_EMITTERS[op](b, call.with_io([product], [call.output_types[0]], registry.get(op).check_attrs(attrs)))


QUANT_ONNX_EMITTERS = {
    "quant.quantize": _quantize, "quant.dequantize": _dequantize, "quant.requantize": _requantize, "quant.conv": _conv,
    "quant.linear": _linear, "quant.matmul": _matmul, "quant.dynamic_quantize": _dynamic_quantize,
    "quant.weight_matmul": _weight_matmul,
}

__all__ = ["QUANT_ONNX_EMITTERS", "QUANT_RANGES"]
