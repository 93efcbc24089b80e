"""Resize and Upsample as separable per-axis gathers with constant indices and weights.

Every resampling mode ONNX defines without antialiasing is separable: along one axis, output
``i`` is ``sum_k w_k[i] * x[idx_k[i]]`` (one tap for nearest, two for linear, four for cubic).
The taps depend only on static sizes and attributes, so they are computed here with NumPy
(in float32, as ONNX Runtime does) and each resized axis becomes ``tensor.gather`` ops, plus
``math.mul``/``math.add`` for the weighted taps. No resize op is needed in the registry.
"""

from __future__ import annotations

import numpy as np

from ....ir.graph import Value
from ..importer import ImportContext, OnnxNode, converter
from .common import int_list, normalize_axes, shape_of

Taps = list[tuple[np.ndarray, np.ndarray]]  # (indices, weights) per tap, each of the output length


def _source_coordinates(transform: str, out_size: int, in_size: int, scale: float) -> np.ndarray:
    out = np.arange(out_size, dtype=np.float32)
    scale32 = np.float32(scale)
    resized_length = scale32 * np.float32(in_size)  # ONNX uses scale * length, not the rounded size
    if transform == "half_pixel":
        return (out + np.float32(0.5)) / scale32 - np.float32(0.5)
    if transform == "half_pixel_symmetric":
        adjustment = np.float32(out_size) / (scale32 * np.float32(in_size))
        center = np.float32(in_size) / np.float32(2)
        offset = center * (np.float32(1) - adjustment)
        return offset + (out + np.float32(0.5)) / scale32 - np.float32(0.5)
    if transform == "pytorch_half_pixel":
        return (out + np.float32(0.5)) / scale32 - np.float32(0.5) if resized_length > 1 else np.zeros(out_size, np.float32)
    if transform == "align_corners":
        if resized_length == 1:
            return np.zeros(out_size, np.float32)
        return out * np.float32(in_size - 1) / (resized_length - np.float32(1))
    return out / scale32  # asymmetric


def _nearest(coordinates: np.ndarray, nearest_mode: str, scale: float) -> np.ndarray:
    if nearest_mode == "round_prefer_ceil":
        return np.floor(coordinates + np.float32(0.5))
    if nearest_mode == "floor":
        return np.floor(coordinates)
    if nearest_mode == "ceil":
        return np.ceil(coordinates)
    if nearest_mode == "simple":  # Upsample and Resize-10: truncate when enlarging
        return np.floor(coordinates) if scale >= 1 else np.ceil(coordinates)
    return np.ceil(coordinates - np.float32(0.5))  # round_prefer_floor


def _cubic_coefficients(ratio: np.ndarray, a: float) -> list[np.ndarray]:
    a = np.float32(a)
    one = np.float32(1)
    return [
        ((a * (ratio + one) - 5 * a) * (ratio + one) + 8 * a) * (ratio + one) - 4 * a,
        ((a + 2) * ratio - (a + 3)) * ratio * ratio + one,
        ((a + 2) * (one - ratio) - (a + 3)) * (one - ratio) * (one - ratio) + one,
        ((a * ((one - ratio) + one) - 5 * a) * ((one - ratio) + one) + 8 * a) * ((one - ratio) + one) - 4 * a,
    ]


def axis_taps(mode: str, in_size: int, out_size: int, scale: float, transform: str, nearest_mode: str,
              cubic_a: float, exclude_outside: bool) -> Taps:
    """The gather indices and weights that resample one axis."""
    coordinates = _source_coordinates(transform, out_size, in_size, scale)
    last = in_size - 1
    if mode == "nearest":
        index = np.clip(_nearest(coordinates, nearest_mode, scale), 0, last).astype(np.int64)
        return [(index, np.ones(out_size, np.float32))]
    if mode == "linear":
        coordinates = np.clip(coordinates, 0, last)
        low = np.floor(coordinates)
        ratio = coordinates - low
        low_index = low.astype(np.int64)
        return [(low_index, np.float32(1) - ratio), (np.minimum(low_index + 1, last), ratio)]
    low = np.floor(coordinates)
    ratio = coordinates - low
    indices = [low.astype(np.int64) + offset for offset in (-1, 0, 1, 2)]
    weights = _cubic_coefficients(ratio.astype(np.float32), cubic_a)
    if exclude_outside:
        weights = [np.where((index >= 0) & (index <= last), weight, 0).astype(np.float32) for index, weight in zip(indices, weights)]
        total = sum(weights)
        weights = [weight / total for weight in weights]
    return [(np.clip(index, 0, last), weight) for index, weight in zip(indices, weights)]


def _resample_axis(ctx: ImportContext, x: Value, axis: int, taps: Taps, final: bool) -> Value:
    rank = x.type.rank
    broadcast = [-1 if i == axis else 1 for i in range(rank)]
    make = ctx.emit if final else ctx.op
    if len(taps) == 1:
        return make("tensor.gather", x, ctx.const(taps[0][0]), axis=axis)
    total = None
    for position, (index, weight) in enumerate(taps):
        picked = ctx.op("tensor.gather", x, ctx.const(index), axis=axis)
        term = ctx.op("math.mul", picked, ctx.const(weight.astype(x.dtype).reshape(broadcast)))
        is_last = position == len(taps) - 1
        total = term if total is None else (make if is_last else ctx.op)("math.add", total, term)
    return total  # type: ignore[return-value]


def _resample(ctx: ImportContext, x: Value, out_shape: list[int], scales: list[float], mode: str, transform: str,
              nearest_mode: str, cubic_a: float, exclude_outside: bool) -> Value:
    shape = shape_of(ctx, x)
    changed = [axis for axis in range(len(shape)) if shape[axis] != out_shape[axis] or scales[axis] != 1.0]
    if mode != "nearest" and not x.dtype.startswith("float"):
        ctx.refuse(f"mode '{mode}' on {x.dtype} input")
    if any(size == 0 for size in out_shape) or any(shape[axis] == 0 for axis in changed):
        ctx.refuse("resizing to or from an empty axis")
    result = x
    for position, axis in enumerate(changed):
        taps = axis_taps(mode, shape[axis], out_shape[axis], scales[axis], transform, nearest_mode, cubic_a, exclude_outside)
        result = _resample_axis(ctx, result, axis, taps, final=position == len(changed) - 1)
    return result


def _sizes_and_scales(ctx: ImportContext, node: OnnxNode, shape: tuple[int, ...], scales: list[float] | None,
                      sizes: list[int] | None, axes: list[int]) -> tuple[list[int], list[float]]:
    full_scales = [1.0] * len(shape)
    out_shape = list(shape)
    if sizes is not None:
        if len(sizes) != len(axes):
            ctx.refuse(f"sizes {sizes} do not match axes {axes}")
        policy = node.attr("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            for axis, size in zip(axes, sizes):
                out_shape[axis] = size
                full_scales[axis] = size / shape[axis] if shape[axis] else 1.0
        elif policy in ("not_larger", "not_smaller"):
            ratios = [size / shape[axis] for axis, size in zip(axes, sizes)]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            for axis in axes:
                out_shape[axis] = int(np.floor(shape[axis] * scale + 0.5))
                full_scales[axis] = scale
        else:
            ctx.refuse(f"keep_aspect_ratio_policy='{policy}'")
    elif scales is not None:
        if len(scales) != len(axes):
            ctx.refuse(f"scales {scales} do not match axes {axes}")
        for axis, scale in zip(axes, scales):
            if scale <= 0:
                ctx.refuse(f"scale {scale} is not positive")
            full_scales[axis] = scale
            out_shape[axis] = int(np.floor(np.float32(shape[axis]) * np.float32(scale)))
    else:
        ctx.refuse("neither scales nor sizes is given")
    return out_shape, full_scales


@converter("Resize")
def convert_resize(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        ctx.refuse(f"mode='{mode}'")
    if ctx.opset < 11:
        scales_array = ctx.constant_input(node, 1, "scales")
        scales = [float(value) for value in np.asarray(scales_array).reshape(-1)] if scales_array is not None else None
        out_shape, full_scales = _sizes_and_scales(ctx, node, shape, scales, None, list(range(len(shape))))
        return _resample(ctx, x, out_shape, full_scales, mode, "asymmetric", "simple", -0.75, False)
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    if transform == "tf_crop_and_resize":
        ctx.refuse("coordinate_transformation_mode='tf_crop_and_resize'")
    if transform not in ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"):
        ctx.refuse(f"coordinate_transformation_mode='{transform}'")
    axes = normalize_axes(ctx, [int(axis) for axis in node.attr("axes", range(len(shape)))], len(shape))
    scales_array = ctx.constant_input(node, 2, "scales")
    scales = [float(value) for value in np.asarray(scales_array).reshape(-1)] if scales_array is not None else None
    sizes = int_list(ctx.constant_input(node, 3, "sizes"))
    if scales is not None and not scales:
        scales = None
    if sizes is not None and not sizes:
        sizes = None
    out_shape, full_scales = _sizes_and_scales(ctx, node, shape, scales, sizes, axes)
    if int(node.attr("antialias", 0)) and mode != "nearest" and any(scale < 1 for scale in full_scales):
        ctx.refuse("antialias=1 when downscaling")
    return _resample(
        ctx, x, out_shape, full_scales, mode, transform, node.attr("nearest_mode", "round_prefer_floor"),
        float(node.attr("cubic_coeff_a", -0.75)), bool(int(node.attr("exclude_outside", 0))),
    )


@converter("Upsample")
def convert_upsample(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    mode = node.attr("mode", "nearest")
    mode = "linear" if mode == "bilinear" else mode
    if mode not in ("nearest", "linear"):
        ctx.refuse(f"mode='{mode}'")
    if ctx.opset >= 9:
        scales_array = ctx.constant_input(node, 1, "scales")
        scales = [float(value) for value in np.asarray(scales_array).reshape(-1)] if scales_array is not None else None
    else:
        scales = [float(value) for value in node.attr("scales", [])] or None
    out_shape, full_scales = _sizes_and_scales(ctx, node, shape, scales, None, list(range(len(shape))))
    return _resample(ctx, x, out_shape, full_scales, mode, "asymmetric", "simple", -0.75, False)
