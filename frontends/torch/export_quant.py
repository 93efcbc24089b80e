"""Torch functions of the ``quant.*`` ops for ``to_torch`` (registered into ``TORCH_FUNCTIONS``).

Integer products run in float64 (exact for int8 operands far beyond any real K) and are rounded
back to int32, since torch's CPU convolutions take no integer tensors; the rest is the
registry's integer arithmetic in int64. The functions are not differentiable through the
rounding (they hand a quantized graph to torch, they do not train it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from ...ir.ops.quant import QUANT_RANGES

TORCH_DTYPES = {"int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32}


def _along(values: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or values.dim() == 0 or values.numel() == 1:
        return values.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return values.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *, axis: int | None,
             dtype: str) -> torch.Tensor:
    low, high = QUANT_RANGES[dtype]
    scaled = torch.round(x.float() / _along(scale.float(), x, axis))  # half to even
    if zero_point is not None:
        scaled = scaled + _along(zero_point, x, axis).float()
    return scaled.clamp(low, high).to(TORCH_DTYPES[dtype])


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *,
               axis: int | None) -> torch.Tensor:
    centered = q.to(torch.int32)
    if zero_point is not None:
        centered = centered - _along(zero_point, q, axis).to(torch.int32)
    return centered.float() * _along(scale.float(), q, axis)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor, *, axis: int | None, zero_point: int,
               min: int, max: int, dtype: str) -> torch.Tensor:  # noqa: A002
    wide_shift = _along(shift, acc, axis).to(torch.int64)
    rounding = torch.ones_like(wide_shift) << (wide_shift - 1)
    scaled = (acc.to(torch.int64) * _along(multiplier, acc, axis).to(torch.int64) + rounding) >> wide_shift
    return (scaled + zero_point).clamp(min, max).to(TORCH_DTYPES[dtype])


def _exact_int32(values: torch.Tensor) -> torch.Tensor:
    return torch.round(values).to(torch.int64).to(torch.int32)


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, strides: Sequence[int] | None,
         pads: Sequence[int] | None, dilations: Sequence[int] | None, groups: int, x_zero_point: int) -> torch.Tensor:
    rank = weight.dim() - 2
    pads = list(pads or [0] * (2 * rank))
    widths = [width for axis in reversed(range(rank)) for width in (pads[axis], pads[axis + rank])]
    centered = F.pad(x.double() - x_zero_point, widths)
    out = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank](centered, weight.double(), None, list(strides or [1] * rank), 0,
                                                       list(dilations or [1] * rank), groups)
    if bias is not None:
        out = out + bias.double().reshape([1, -1] + [1] * rank)
    return _exact_int32(out)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, x_zero_point: int) -> torch.Tensor:
    out = torch.matmul(x.double() - x_zero_point, weight.double())
    return _exact_int32(out if bias is None else out + bias.double())


def matmul(a: torch.Tensor, b: torch.Tensor, *, a_zero_point: int, b_zero_point: int) -> torch.Tensor:
    return _exact_int32(torch.matmul(a.double() - a_zero_point, b.double() - b_zero_point))


def dynamic_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    peak = x.float().abs().max()
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    return torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8), scale


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    wide = packed.to(torch.int16)
    low, high = ((wide & 15) ^ 8) - 8, (((wide >> 4) & 15) ^ 8) - 8
    return torch.stack([low, high], dim=1).reshape(packed.shape[0] * 2, *packed.shape[1:])


def weight_matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None, *,
                  bits: int, group_size: int, activation: str) -> torch.Tensor:
    from .export import _activate

    values = unpack_int4(weight) if bits == 4 else weight
    dense = values.float() * torch.repeat_interleave(scales.float(), group_size, dim=0)
    out = torch.matmul(x.float(), dense)
    return _activate(out if bias is None else out + bias, activation)


QUANT_TORCH_FUNCTIONS = {
    "quant.quantize": quantize, "quant.dequantize": dequantize, "quant.requantize": requantize, "quant.conv": conv,
    "quant.linear": linear, "quant.matmul": matmul, "quant.dynamic_quantize": dynamic_quantize,
    "quant.weight_matmul": weight_matmul,
}
