"""Quantized ops (``quant.*``) with exact integer reference semantics.

The set is small on purpose (a microcontroller backend implements all of it):

* ``quant.quantize(x, scale[, zero_point]) {axis, dtype}``: float -> int8/uint8,
  ``clip(round_half_even(x / scale) + zero_point)`` in float32 (ONNX QuantizeLinear);
* ``quant.dequantize(q, scale[, zero_point]) {axis}``: int -> float32, ``float32(q - zp) * scale``;
* ``quant.requantize(acc, multiplier, shift) {axis, zero_point, min, max, dtype}``: int32 -> int8
  in fixed point, ``clip(((acc * multiplier + 2^(shift-1)) >> shift) + zero_point, min, max)``
  with an int64 product (TFLite's scheme; relu/relu6 fold into ``min``/``max``);
* ``quant.conv`` / ``quant.linear`` / ``quant.matmul``: int8 (or uint8) operands, int32
  accumulation, optional int32 bias; zero points are attributes (weights are symmetric);
* ``quant.dynamic_quantize(x)``: symmetric int8 with a scale computed from ``max|x|`` at run time;
  returns ``(q, scale)``;
* ``quant.weight_matmul(x, w, scales[, bias]) {bits, group_size, activation}``: weight-only
  quantization, float activations; ``bits=4`` weights are packed two per byte along K.

Everything integer is exact: compiled kernels are checked against these bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import TensorType
from .nn import _CONV_ATTRS, _conv_infer, _conv_reference, apply_activation, check_activation
from .registry import Attr, ShapeError, define, flops_per_output, normalize_axis

QUANT_RANGES: dict[str, tuple[int, int]] = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}
INT4_RANGE = (-8, 7)


def _axis_shape(x: np.ndarray, values: np.ndarray, axis: int | None) -> np.ndarray:
    """``values`` (scalar, or one per entry of ``axis``) shaped to broadcast against ``x``."""
    if axis is None or values.ndim == 0 or values.size == 1:
        return values.reshape(())
    shape = [1] * x.ndim
    shape[normalize_axis(axis, x.ndim)] = -1
    return values.reshape(shape)


def _check_axis_vector(x: TensorType, vector: TensorType, axis: int | None, what: str) -> None:
    if vector.rank == 0 or vector.numel == 1 and vector.rank <= 1:
        return
    if vector.rank != 1:
        raise ShapeError(f"{what} must be a scalar or a vector, got {vector}")
    if axis is None:
        raise ShapeError(f"{what} {vector} is per channel: give the axis")
    dim = x.shape[normalize_axis(axis, x.rank)]
    if isinstance(dim, int) and dim != vector.shape[0]:
        raise ShapeError(f"{what} has {vector.shape[0]} entries for axis {axis} of size {dim}")


# ---- quantize / dequantize -------------------------------------------------------------------------

def _quantize_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, scale = inputs[0], inputs[1]
    if attrs["dtype"] not in ("int8", "uint8"):
        raise ShapeError(f"quantize dtype must be int8 or uint8, got {attrs['dtype']}")
    if x.dtype != "float32" or scale.dtype != "float32":
        raise ShapeError(f"quantize takes float32 x and scale, got {x.dtype} and {scale.dtype}")
    _check_axis_vector(x, scale, attrs["axis"], "scale")
    if len(inputs) == 3:
        if inputs[2].dtype != attrs["dtype"]:
            raise ShapeError(f"zero point is {inputs[2].dtype}, output is {attrs['dtype']}")
        _check_axis_vector(x, inputs[2], attrs["axis"], "zero point")
    return x.with_dtype(attrs["dtype"])


def quantize_reference(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, *, axis: int | None,
                       dtype: str) -> np.ndarray:
    low, high = QUANT_RANGES[dtype]
    scaled = np.rint(x.astype(np.float32) / _axis_shape(x, scale.astype(np.float32), axis))
    if zero_point is not None:
        scaled = scaled + _axis_shape(x, zero_point, axis).astype(np.float32)
    return np.clip(scaled, low, high).astype(dtype)


define("quant.quantize", _quantize_infer, quantize_reference, inputs=(2, 3),
       attrs={"axis": Attr("optional_int", None), "dtype": Attr("str", "int8")}, flops=flops_per_output(3),
       doc="clip(round_half_even(x / scale) + zero_point) in float32; per tensor, or per channel along axis.")


def _dequantize_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    q, scale = inputs[0], inputs[1]
    if q.dtype not in QUANT_RANGES:
        raise ShapeError(f"dequantize takes int8, uint8 or int32, got {q.dtype}")
    if scale.dtype != "float32":
        raise ShapeError(f"scale must be float32, got {scale.dtype}")
    _check_axis_vector(q, scale, attrs["axis"], "scale")
    if len(inputs) == 3:
        if inputs[2].dtype != q.dtype:
            raise ShapeError(f"zero point is {inputs[2].dtype}, input is {q.dtype}")
        _check_axis_vector(q, inputs[2], attrs["axis"], "zero point")
    return q.with_dtype("float32")


def dequantize_reference(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, *,
                         axis: int | None) -> np.ndarray:
    centered = q.astype(np.int32)
    if zero_point is not None:
        centered = centered - _axis_shape(q, zero_point, axis).astype(np.int32)
    return centered.astype(np.float32) * _axis_shape(q, scale.astype(np.float32), axis)


define("quant.dequantize", _dequantize_infer, dequantize_reference, inputs=(2, 3),
       attrs={"axis": Attr("optional_int", None)}, flops=flops_per_output(2),
       doc="float32(q - zero_point) * scale; per tensor, or per channel along axis.")


# ---- requantize ----------------------------------------------------------------------------------------

def _requantize_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    acc, multiplier, shift = inputs
    if acc.dtype != "int32" or multiplier.dtype != "int32" or shift.dtype != "int32":
        raise ShapeError(f"requantize takes int32 acc, multiplier and shift, got {acc.dtype}, {multiplier.dtype}, {shift.dtype}")
    if attrs["dtype"] not in ("int8", "uint8"):
        raise ShapeError(f"requantize dtype must be int8 or uint8, got {attrs['dtype']}")
    _check_axis_vector(acc, multiplier, attrs["axis"], "multiplier")
    _check_axis_vector(acc, shift, attrs["axis"], "shift")
    low, high = QUANT_RANGES[attrs["dtype"]]
    if not low <= attrs["min"] <= attrs["max"] <= high:
        raise ShapeError(f"clip range [{attrs['min']}, {attrs['max']}] is not inside {attrs['dtype']}")
    return acc.with_dtype(attrs["dtype"])


def requantize_reference(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, *, axis: int | None,
                         zero_point: int, min: int, max: int, dtype: str) -> np.ndarray:  # noqa: A002
    wide_multiplier = _axis_shape(acc, multiplier, axis).astype(np.int64)
    wide_shift = _axis_shape(acc, shift, axis).astype(np.int64)
    rounding = np.left_shift(np.int64(1), wide_shift - 1)
    scaled = np.right_shift(acc.astype(np.int64) * wide_multiplier + rounding, wide_shift)
    return np.clip(scaled + zero_point, min, max).astype(dtype)


define("quant.requantize", _requantize_infer, requantize_reference, inputs=3,
       attrs={"axis": Attr("optional_int", None), "zero_point": Attr("int", 0), "min": Attr("int", -128),
              "max": Attr("int", 127), "dtype": Attr("str", "int8")}, flops=flops_per_output(4),
       doc="clip(((int64(acc) * multiplier + 2^(shift-1)) >> shift) + zero_point, min, max); shift in [1, 62].")


def fixed_point(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift) int32 arrays with ``multiplier / 2^shift`` closest to ``real`` (> 0)."""
    real = np.asarray(real, dtype=np.float64)
    mantissa, exponent = np.frexp(np.maximum(real, 1e-30))  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    multiplier = np.rint(mantissa * 2.0**31).astype(np.int64)
    carry = multiplier == 2**31
    multiplier = np.where(carry, multiplier // 2, multiplier)
    exponent = exponent + carry
    shift = 31 - exponent
    if np.any(shift < 1):
        raise ShapeError(f"requantize scale {float(real.max()):.3g} is too large for a fixed-point multiplier (must be < 2^30)")
    # a scale so small that the shift passes 62 rounds everything to zero anyway
    too_far = shift > 62
    multiplier = np.where(too_far, 0, multiplier)
    shift = np.where(too_far, 62, shift)
    return multiplier.astype(np.int32), shift.astype(np.int32)


# ---- integer products ----------------------------------------------------------------------------------

def _check_integer_operands(x: TensorType, weight: TensorType, bias: TensorType | None) -> None:
    if x.dtype not in ("int8", "uint8") or weight.dtype not in ("int8", "uint8"):
        raise ShapeError(f"integer operands must be int8 or uint8, got {x.dtype} and {weight.dtype}")
    if bias is not None and bias.dtype != "int32":
        raise ShapeError(f"bias must be int32, got {bias.dtype}")


def _zero_point_attr(attrs: dict[str, Any], key: str, dtype: str) -> None:
    low, high = QUANT_RANGES[dtype]
    if not low <= attrs[key] <= high:
        raise ShapeError(f"{key}={attrs[key]} is outside {dtype}")


def _qconv_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) == 3 else None
    _check_integer_operands(x, weight, bias)
    _zero_point_attr(attrs, "x_zero_point", x.dtype)
    float_types = [x.with_dtype("float32"), weight.with_dtype("float32")]
    if bias is not None:
        float_types.append(bias.with_dtype("float32"))
    conv_attrs = {key: attrs[key] for key in _CONV_ATTRS}
    return _conv_infer(float_types, conv_attrs).with_dtype("int32")


def _exact_int32(result: np.ndarray) -> np.ndarray:
    """float64 sums of int8 products are exact (far below 2^53); int32 wraps as the kernels do."""
    return np.rint(result).astype(np.int64).astype(np.int32)


def qconv_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *, x_zero_point: int,
                    strides, pads, dilations, groups) -> np.ndarray:
    centered = x.astype(np.float64) - x_zero_point
    out = _conv_reference(centered, weight.astype(np.float64), None, strides=strides, pads=pads, dilations=dilations,
                          groups=groups)
    if bias is not None:
        out = out + bias.astype(np.float64).reshape((1, -1) + (1,) * (weight.ndim - 2))
    return _exact_int32(out)


def _product_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    weight = inputs[1]
    per_output = 2 * int(np.prod([d for d in weight.shape[1:] if isinstance(d, int)]))
    return outputs[0].numel * per_output


define("quant.conv", _qconv_infer, qconv_reference, inputs=(2, 3), attrs=dict(_CONV_ATTRS, x_zero_point=Attr("int", 0)),
       flops=_product_flops,
       doc="int32 conv of (x - x_zero_point) with a symmetric int8 weight, plus an int32 bias (NC<spatial>).")


def _qlinear_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) == 3 else None
    _check_integer_operands(x, weight, bias)
    _zero_point_attr(attrs, "x_zero_point", x.dtype)
    if weight.rank != 2 or x.rank < 1:
        raise ShapeError(f"linear needs x (..., K) and a 2-d weight (K, N), got {x} and {weight}")
    if isinstance(x.shape[-1], int) and x.shape[-1] != weight.shape[0]:
        raise ShapeError(f"x {x.shape} and weight {weight.shape} disagree on K")
    if bias is not None and tuple(bias.shape) != (weight.shape[1],):
        raise ShapeError(f"bias {bias.shape} must be ({weight.shape[1]},)")
    return TensorType(tuple(x.shape[:-1]) + (weight.shape[1],), "int32")


def qlinear_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *,
                      x_zero_point: int) -> np.ndarray:
    out = np.matmul(x.astype(np.float64) - x_zero_point, weight.astype(np.float64))
    if bias is not None:
        out = out + bias.astype(np.float64)
    return _exact_int32(out)


def _linear_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    k = inputs[1].shape[0]
    return 2 * outputs[0].numel * (k if isinstance(k, int) else 1)


define("quant.linear", _qlinear_infer, qlinear_reference, inputs=(2, 3), attrs={"x_zero_point": Attr("int", 0)},
       flops=_linear_flops, doc="int32 (x - x_zero_point) @ weight + bias: x (..., K) int8/uint8, weight (K, N) int8.")


def _qmatmul_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    from .linalg import _matmul_infer

    a, b = inputs
    _check_integer_operands(a, b, None)
    _zero_point_attr(attrs, "a_zero_point", a.dtype)
    _zero_point_attr(attrs, "b_zero_point", b.dtype)
    return _matmul_infer([a.with_dtype("float32"), b.with_dtype("float32")], {}).with_dtype("int32")


def qmatmul_reference(a: np.ndarray, b: np.ndarray, *, a_zero_point: int, b_zero_point: int) -> np.ndarray:
    return _exact_int32(np.matmul(a.astype(np.float64) - a_zero_point, b.astype(np.float64) - b_zero_point))


def _qmatmul_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    k = inputs[0].shape[-1]
    return 2 * outputs[0].numel * (k if isinstance(k, int) else 1)


define("quant.matmul", _qmatmul_infer, qmatmul_reference, inputs=2,
       attrs={"a_zero_point": Attr("int", 0), "b_zero_point": Attr("int", 0)}, flops=_qmatmul_flops,
       doc="int32 (a - a_zero_point) @ (b - b_zero_point), NumPy matmul broadcasting (ONNX MatMulInteger).")


# ---- dynamic quantization ------------------------------------------------------------------------------

def _dynamic_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x = inputs[0]
    if x.dtype != "float32":
        raise ShapeError(f"dynamic_quantize takes float32, got {x.dtype}")
    return [x.with_dtype("int8"), TensorType((), "float32")]


def dynamic_scale(x: np.ndarray) -> np.ndarray:
    """max|x| / 127 in float32 (1 for an all-zero tensor)."""
    peak = np.max(np.abs(x.astype(np.float32))) if x.size else np.float32(0)
    return np.float32(peak) / np.float32(127) if peak > 0 else np.float32(1)


def dynamic_quantize_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(dynamic_scale(x), dtype=np.float32)
    return np.clip(np.rint(x.astype(np.float32) / scale), -127, 127).astype(np.int8), scale


define("quant.dynamic_quantize", _dynamic_infer, dynamic_quantize_reference, inputs=1, flops=flops_per_output(3),
       doc="(clip(round_half_even(x / s), -127, 127) as int8, s) with s = max|x| / 127 computed at run time.")


# ---- weight-only ---------------------------------------------------------------------------------------

def pack_int4(values: np.ndarray) -> np.ndarray:
    """(K, N) ints in [-8, 7], K even -> (K/2, N) uint8: row 2i in the low nibble, 2i+1 in the high."""
    values = np.asarray(values)
    if values.shape[0] % 2:
        raise ShapeError(f"int4 packing needs an even K, got {values.shape}")
    if values.size and (values.min() < INT4_RANGE[0] or values.max() > INT4_RANGE[1]):
        raise ShapeError("int4 values must lie in [-8, 7]")
    nibbles = values.astype(np.int16) & 0xF
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """The inverse of ``pack_int4``: (K/2, N) uint8 -> (K, N) int8 in [-8, 7]."""
    packed = packed.astype(np.int16)
    low = ((packed & 0xF) ^ 8) - 8
    high = (((packed >> 4) & 0xF) ^ 8) - 8
    out = np.empty((packed.shape[0] * 2,) + packed.shape[1:], dtype=np.int8)
    out[0::2], out[1::2] = low, high
    return out


def _weight_matmul_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, weight, scales = inputs[:3]
    check_activation(attrs["activation"])
    bits, group = attrs["bits"], attrs["group_size"]
    if x.dtype != "float32" or scales.dtype != "float32":
        raise ShapeError(f"weight_matmul takes float32 x and scales, got {x.dtype} and {scales.dtype}")
    if bits not in (4, 8) or weight.dtype != ("uint8" if bits == 4 else "int8") or weight.rank != 2:
        raise ShapeError(f"bits={bits} needs a 2-d {'packed uint8' if bits == 4 else 'int8'} weight, got {weight}")
    k = weight.shape[0] * (2 if bits == 4 else 1)
    n = weight.shape[1]
    if group < 1 or k % group:
        raise ShapeError(f"group_size {group} does not divide K={k}")
    if tuple(scales.shape) != (k // group, n):
        raise ShapeError(f"scales {scales.shape} must be ({k // group}, {n}) for K={k}, group {group}")
    if isinstance(x.shape[-1], int) and x.shape[-1] != k:
        raise ShapeError(f"x {x.shape} has K={x.shape[-1]}, the weight {k}")
    if len(inputs) == 4 and (tuple(inputs[3].shape) != (n,) or inputs[3].dtype != "float32"):
        raise ShapeError(f"bias {inputs[3]} must be float32[{n}]")
    return TensorType(tuple(x.shape[:-1]) + (n,), "float32")


def dequantize_weight(weight: np.ndarray, scales: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """The float32 (K, N) weight a weight_matmul multiplies by."""
    values = unpack_int4(weight) if bits == 4 else weight
    return values.astype(np.float32) * np.repeat(scales.astype(np.float32), group_size, axis=0)


def weight_matmul_reference(x: np.ndarray, weight: np.ndarray, scales: np.ndarray, bias: np.ndarray | None = None, *,
                            bits: int, group_size: int, activation: str) -> np.ndarray:
    out = np.matmul(x.astype(np.float32), dequantize_weight(weight, scales, bits, group_size))
    if bias is not None:
        out = out + bias
    return apply_activation(out.astype(np.float32), activation)


def _weight_matmul_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    k = inputs[0].shape[-1]
    return 2 * outputs[0].numel * (k if isinstance(k, int) else 1)


define("quant.weight_matmul", _weight_matmul_infer, weight_matmul_reference, inputs=(3, 4),
       attrs={"bits": Attr("int", 8), "group_size": Attr("int", 128), "activation": Attr("str", "none")},
       flops=_weight_matmul_flops,
       doc="activation(x @ (w * scales[k // group_size]) + bias): int8 or packed int4 (K/2, N) weight, "
           "float32 group scales (K/group_size, N).")
