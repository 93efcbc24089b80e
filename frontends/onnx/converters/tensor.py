"""Data movement and shape ONNX ops: reshape family, transpose, concat, split, slice, gather,
expand, tile, pad, and the ops that produce constants at import (Shape, Size, Constant,
ConstantOfShape, Range, Trilu on constants)."""

from __future__ import annotations

import math

import numpy as np

from ....errors import ModelLoadError
from ....ir.graph import Value
from ....ir.ops.registry import broadcast_shapes
from ..importer import ImportContext, OnnxNode, converter, onnx_dtype, tensor_to_array
from .common import axes_argument, int_list, normalize_axes, product, reshape, shape_of


# ---- reshape family ------------------------------------------------------------------------------------

def _resolve_target(ctx: ImportContext, in_shape: tuple[int, ...], target: list[int], allow_zero: bool) -> list[int]:
    dims = [in_shape[axis] if dim == 0 and not allow_zero and axis < len(in_shape) else dim for axis, dim in enumerate(target)]
    if dims.count(-1) > 1:
        ctx.refuse(f"shape {target} has more than one -1")
    if -1 in dims:
        known = product([dim for dim in dims if dim != -1])
        total = product(in_shape)
        if known == 0 or total % known:
            ctx.refuse(f"cannot reshape {in_shape} to {target}")
        dims[dims.index(-1)] = total // known
    if product(dims) != product(in_shape) or any(dim < 0 for dim in dims):
        ctx.refuse(f"cannot reshape {in_shape} to {target}")
    return dims


@converter("Reshape")
def convert_reshape(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    if ctx.opset < 5:
        target = [int(dim) for dim in node.attr("shape", [])]
    else:
        target = int_list(ctx.constant_input(node, 1, "shape"))  # type: ignore[assignment]
        if target is None:
            ctx.refuse("shape input is missing")
    dims = _resolve_target(ctx, shape_of(ctx, x), target, bool(node.attr("allowzero", 0)))
    return reshape(ctx, x, dims, final=True)


@converter("Flatten")
def convert_flatten(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    axis = int(node.attr("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        ctx.refuse(f"axis {node.attr('axis')} is out of range for rank {len(shape)}")
    return reshape(ctx, x, (product(shape[:axis]), product(shape[axis:])), final=True)


@converter("Squeeze")
def convert_squeeze(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    axes = axes_argument(ctx, node, 1, since=13)
    if axes is None:
        squeezed = [axis for axis, dim in enumerate(shape) if dim == 1]
    else:
        squeezed = normalize_axes(ctx, axes, len(shape))
        if any(shape[axis] != 1 for axis in squeezed):
            ctx.refuse(f"cannot squeeze axes {axes} of shape {shape}: not all are 1")
    return reshape(ctx, x, [dim for axis, dim in enumerate(shape) if axis not in squeezed], final=True)


@converter("Unsqueeze")
def convert_unsqueeze(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    axes = axes_argument(ctx, node, 1, since=13)
    if axes is None:
        ctx.refuse("axes are required")
    rank = len(shape) + len(axes)  # type: ignore[arg-type]
    inserted = set(normalize_axes(ctx, axes, rank))  # type: ignore[arg-type]
    remaining = iter(shape)
    return reshape(ctx, x, [1 if axis in inserted else next(remaining) for axis in range(rank)], final=True)


@converter("Transpose")
def convert_transpose(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    rank = x.type.rank
    perm = [int(axis) for axis in node.attr("perm", list(reversed(range(rank))))]
    if perm == list(range(rank)):
        return x
    return ctx.emit("tensor.transpose", x, perm=perm)


@converter("DepthToSpace")
def convert_depth_to_space(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    batch, channels, height, width = shape_of(ctx, x)
    block = int(node.attr("blocksize"))
    if channels % (block * block):
        ctx.refuse(f"{channels} channels do not divide by blocksize^2 = {block * block}")
    depth = channels // (block * block)
    if node.attr("mode", "DCR") == "DCR":
        split = reshape(ctx, x, (batch, block, block, depth, height, width))
        moved = ctx.op("tensor.transpose", split, perm=(0, 3, 4, 1, 5, 2))
    else:
        split = reshape(ctx, x, (batch, depth, block, block, height, width))
        moved = ctx.op("tensor.transpose", split, perm=(0, 1, 4, 2, 5, 3))
    return reshape(ctx, moved, (batch, depth, height * block, width * block), final=True)


@converter("SpaceToDepth")
def convert_space_to_depth(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    batch, channels, height, width = shape_of(ctx, x)
    block = int(node.attr("blocksize"))
    if height % block or width % block:
        ctx.refuse(f"spatial size {height}x{width} does not divide by blocksize {block}")
    split = reshape(ctx, x, (batch, channels, height // block, block, width // block, block))
    perm = (0, 1, 3, 5, 2, 4) if node.attr("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    moved = ctx.op("tensor.transpose", split, perm=perm)
    return reshape(ctx, moved, (batch, channels * block * block, height // block, width // block), final=True)


# ---- concat / split / slice ----------------------------------------------------------------------------

@converter("Concat")
def convert_concat(ctx: ImportContext, node: OnnxNode) -> Value:
    values = [ctx.value(name) for name in node.inputs if name]
    axis = int(node.attr("axis", 1 if ctx.opset < 4 else 0))
    # zero-size pieces contribute nothing; drop them so backends never see empty tensors
    values = [value for value in values if product(shape_of(ctx, value)) > 0] or values[:1]
    if len(values) == 1:
        return values[0]
    return ctx.emit("tensor.concat", *values, axis=axis)


@converter("Split")
def convert_split(ctx: ImportContext, node: OnnxNode) -> list[Value]:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    axis = normalize_axes(ctx, [int(node.attr("axis", 0))], len(shape))[0]
    if ctx.opset >= 13:
        sizes = int_list(ctx.constant_input(node, 1, "split"))
    else:
        sizes = [int(size) for size in node.attr("split", [])] or None
    dim = shape[axis]
    if sizes is None:
        count = int(node.attr("num_outputs", len(node.outputs)))
        chunk = math.ceil(dim / count) if count else 0
        sizes = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
        if sizes[-1] < 0:
            ctx.refuse(f"cannot split dim {dim} into {count} outputs")
    if sum(sizes) != dim or len(sizes) != len(node.outputs):
        ctx.refuse(f"split sizes {sizes} do not fit dim {dim} and {len(node.outputs)} outputs")
    if len(sizes) == 1:
        return [x]
    return ctx.emit_many("tensor.split", [x], axis=axis, sizes=sizes)


def _onnx_slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    """ONNX Slice clamping, expressed as Python slice bounds with the same meaning."""
    if step > 0:
        start = min(max(start + dim if start < 0 else start, 0), dim)
        end = min(max(end + dim if end < 0 else end, 0), dim)
        return start, end
    start = min(max(start + dim if start < 0 else start, 0), dim - 1)
    end = min(max(end + dim if end < 0 else end, -1), dim - 1)
    return start, (-dim - 1 if end == -1 else end)  # -1 means "before index 0" in ONNX, not the last


@converter("Slice")
def convert_slice(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    if ctx.opset < 10:
        starts = [int(v) for v in node.attr("starts", [])]
        ends = [int(v) for v in node.attr("ends", [])]
        axes = [int(v) for v in node.attr("axes", [])] or None
        steps = None
    else:
        starts = int_list(ctx.constant_input(node, 1, "starts"))  # type: ignore[assignment]
        ends = int_list(ctx.constant_input(node, 2, "ends"))  # type: ignore[assignment]
        axes = int_list(ctx.constant_input(node, 3, "axes"))
        steps = int_list(ctx.constant_input(node, 4, "steps"))
    axes = normalize_axes(ctx, axes if axes is not None else list(range(len(starts))), len(shape))
    steps = steps if steps is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        ctx.refuse("starts, ends, axes and steps differ in length or a step is 0")
    kept_starts, kept_ends, kept_axes, kept_steps = [], [], [], []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        begin, stop = _onnx_slice_bounds(start, end, step, shape[axis])
        if step == 1 and begin == 0 and stop == shape[axis]:
            continue
        kept_starts.append(begin)
        kept_ends.append(stop)
        kept_axes.append(axis)
        kept_steps.append(step)
    if not kept_axes:
        return x
    steps_attr = None if all(step == 1 for step in kept_steps) else kept_steps
    return ctx.emit("tensor.slice", x, starts=kept_starts, ends=kept_ends, axes=kept_axes, steps=steps_attr)


# ---- gather / expand / tile / pad ----------------------------------------------------------------------------

@converter("Gather")
def convert_gather(ctx: ImportContext, node: OnnxNode) -> Value:
    data, indices = ctx.input(node, 0), ctx.input(node, 1)
    axis = normalize_axes(ctx, [int(node.attr("axis", 0))], data.type.rank)[0]
    if indices.dtype not in ("int32", "int64"):
        indices = ctx.op("math.cast", indices, dtype="int64")
    return ctx.emit("tensor.gather", data, indices, axis=axis)


@converter("Expand")
def convert_expand(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    target = int_list(ctx.constant_input(node, 1, "shape"))
    if target is None:
        ctx.refuse("shape input is missing")
    if tuple(broadcast_shapes(x.shape, target)) == tuple(x.shape):
        return x
    return ctx.emit("tensor.expand", x, shape=target)


@converter("Tile")
def convert_tile(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    repeats = int_list(ctx.constant_input(node, 1, "repeats"))
    if repeats is None:
        ctx.refuse("repeats input is missing")
    if all(repeat == 1 for repeat in repeats):  # type: ignore[union-attr]
        return x
    return ctx.emit("tensor.tile", x, repeats=repeats)


@converter("Pad")
def convert_pad(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    rank = x.type.rank
    mode = node.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        ctx.refuse(f"mode='{mode}'")
    runtime_fill: Value | None = None
    if ctx.opset < 11:
        pads = [int(pad) for pad in node.attr("pads", node.attr("paddings", []))]
        value = float(node.attr("value", 0.0))
    else:
        pads = int_list(ctx.constant_input(node, 1, "pads"))  # type: ignore[assignment]
        fill = ctx.optional_input(node, 2)
        constant = ctx.constant(fill)
        if fill is not None and constant is None:
            runtime_fill = fill
            value = 0.0
        else:
            runtime_fill = None
            value = float(np.asarray(constant).reshape(-1)[0]) if constant is not None and np.asarray(constant).size else 0.0
        axes = int_list(ctx.constant_input(node, 3, "axes"))
        if axes is not None:
            axes = normalize_axes(ctx, axes, rank)
            full = [0] * (2 * rank)
            for index, axis in enumerate(axes):
                full[axis] = pads[index]
                full[axis + rank] = pads[index + len(axes)]
            pads = full
    if len(pads) != 2 * rank:
        ctx.refuse(f"pads {pads} do not have 2*rank = {2 * rank} entries")
    if not any(pads):
        return x
    if ctx.opset >= 11 and mode == "constant" and runtime_fill is not None:
        # the fill value is computed at run time: pad with zeros, then select it where the mask says
        padded = ctx.op("tensor.pad", x, pads=pads, mode=mode, value=0.0)
        inside = ctx.op("tensor.pad", ctx.const(np.ones(shape_of(ctx, x), dtype=bool)), pads=pads, mode=mode, value=0.0)
        fill_scalar = reshape(ctx, fill if fill.dtype == x.dtype else ctx.op("math.cast", fill, dtype=x.dtype), ())
        return ctx.emit("math.where", inside, padded, fill_scalar)
    return ctx.emit("tensor.pad", x, pads=pads, mode=mode, value=value)


# ---- constants at import ---------------------------------------------------------------------------------------

@converter("Shape")
def convert_shape(ctx: ImportContext, node: OnnxNode) -> Value:
    shape = shape_of(ctx, ctx.input(node, 0))
    rank = len(shape)
    start, end = int(node.attr("start", 0)), node.attr("end")
    end = rank if end is None else int(end)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return ctx.const(np.asarray(shape[start:end], dtype=np.int64), output=0)


@converter("Size")
def convert_size(ctx: ImportContext, node: OnnxNode) -> Value:
    return ctx.const(np.asarray(product(shape_of(ctx, ctx.input(node, 0))), dtype=np.int64), output=0)


def _check_materialized(ctx: ImportContext, shape: list[int]) -> None:
    count = product(shape) if shape else 1
    if any(dim < 0 for dim in shape) or count > ctx.limits.max_elements:
        raise ModelLoadError(
            f"{ctx.source}: node {ctx.node.label if ctx.node else '?'} asks for a constant of shape {shape}, "
            f"over the limit of {ctx.limits.max_elements} elements (or negative); raise LoadLimits.max_elements "
            "if the model is trusted"
        )


@converter("ConstantOfShape")
def convert_constant_of_shape(ctx: ImportContext, node: OnnxNode) -> Value:
    shape = int_list(ctx.constant_input(node, 0, "shape"))
    if shape is None:
        ctx.refuse("shape input is missing")
    _check_materialized(ctx, shape)  # type: ignore[arg-type]
    fill = node.attr("value")
    fill_array = tensor_to_array(fill, ctx.source) if fill is not None else np.zeros(1, dtype=np.float32)
    if fill_array.size != 1:
        ctx.refuse("value must hold exactly one element")
    return ctx.const(np.full(shape, fill_array.reshape(-1)[0], dtype=fill_array.dtype), output=0)  # type: ignore[arg-type]


@converter("Constant")
def convert_constant(ctx: ImportContext, node: OnnxNode) -> Value:
    if "value" in node.attrs:
        array = tensor_to_array(node.attrs["value"], ctx.source)
    elif "value_float" in node.attrs:
        array = np.asarray(node.attrs["value_float"], dtype=np.float32)
    elif "value_floats" in node.attrs:
        array = np.asarray(node.attrs["value_floats"], dtype=np.float32)
    elif "value_int" in node.attrs:
        array = np.asarray(node.attrs["value_int"], dtype=np.int64)
    elif "value_ints" in node.attrs:
        array = np.asarray(node.attrs["value_ints"], dtype=np.int64)
    else:
        ctx.refuse(f"attribute {sorted(node.attrs)} (only dense numeric constants are supported)")
    return ctx.const(array, output=0)


@converter("Range")
def convert_range(ctx: ImportContext, node: OnnxNode) -> Value:
    start, limit, delta = (ctx.constant_input(node, index, name) for index, name in enumerate(("start", "limit", "delta")))
    if start is None or limit is None or delta is None:
        ctx.refuse("start, limit and delta are required")
    dtype = np.asarray(start).dtype
    first, stop, step = (np.asarray(item).reshape(-1)[0].item() for item in (start, limit, delta))
    if step == 0:
        ctx.refuse("delta is 0")
    count = max(int(math.ceil((stop - first) / step)), 0)
    _check_materialized(ctx, [count])
    values = (first + np.arange(count, dtype=np.float64 if dtype.kind == "f" else np.int64) * step).astype(dtype)
    return ctx.const(values, output=0)


@converter("Trilu")
def convert_trilu(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    k_array = ctx.constant_input(node, 1, "k")
    k = int(np.asarray(k_array).reshape(-1)[0]) if k_array is not None else 0
    upper = bool(node.attr("upper", 1))
    shape = shape_of(ctx, x)
    if len(shape) < 2:
        ctx.refuse(f"input rank {len(shape)} < 2")
    constant = ctx.constant(x)
    if constant is not None:
        return ctx.const(np.triu(constant, k) if upper else np.tril(constant, k), output=0)
    ones = np.ones(shape[-2:], dtype=bool)
    mask = ctx.const(np.triu(ones, k) if upper else np.tril(ones, k))
    return ctx.emit("math.where", mask, x, ctx.scalar_like(x, 0))


# ---- GatherElements / GatherND as a gather on the flattened data -----------------------------------------------------

def _c_strides(shape: tuple[int, ...]) -> list[int]:
    strides, running = [], 1
    for dim in reversed(shape):
        strides.append(running)
        running *= dim
    return strides[::-1]


def _nonnegative(ctx: ImportContext, indices: Value, dims: np.ndarray) -> Value:
    """Indices with negative entries wrapped by ``dims`` (which broadcasts against them)."""
    indices = ctx.op("math.cast", indices, dtype="int64") if indices.dtype != "int64" else indices
    negative = ctx.op("math.less", indices, ctx.const(np.asarray(0, dtype=np.int64)))
    wrapped = ctx.op("math.add", indices, ctx.const(dims.astype(np.int64)))
    return ctx.op("math.where", negative, wrapped, indices)


@converter("GatherElements")
def convert_gather_elements(ctx: ImportContext, node: OnnxNode) -> Value:
    """out[i..] = data[i.. with axis replaced by indices[i..]]: flat = index * stride + base."""
    data, indices = ctx.input(node, 0), ctx.input(node, 1)
    shape, index_shape = shape_of(ctx, data), shape_of(ctx, indices)
    axis = normalize_axes(ctx, [int(node.attr("axis", 0))], len(shape))[0]
    if len(index_shape) != len(shape):
        ctx.refuse(f"indices rank {len(index_shape)} differs from data rank {len(shape)}")
    strides = _c_strides(shape)
    grid = np.indices(index_shape, dtype=np.int64)
    base = sum(grid[k] * strides[k] for k in range(len(shape)) if k != axis) if len(shape) > 1 else np.zeros(index_shape, np.int64)
    index = _nonnegative(ctx, indices, np.asarray(shape[axis]))
    flat_index = ctx.op("math.add", ctx.op("math.mul", index, ctx.const(np.asarray(strides[axis], dtype=np.int64))),
                        ctx.const(np.asarray(base, dtype=np.int64)))
    flat_data = reshape(ctx, data, (product(shape),))
    return ctx.emit("tensor.gather", flat_data, flat_index, axis=0)


@converter("GatherND")
def convert_gather_nd(ctx: ImportContext, node: OnnxNode) -> Value:
    """Linearize the leading (batch + indexed) dims of data, then one gather on axis 0."""
    data, indices = ctx.input(node, 0), ctx.input(node, 1)
    shape, index_shape = shape_of(ctx, data), shape_of(ctx, indices)
    batch = int(node.attr("batch_dims", 0))
    depth = index_shape[-1] if index_shape else 0
    if not index_shape or batch + depth > len(shape) or tuple(index_shape[:batch]) != tuple(shape[:batch]):
        ctx.refuse(f"indices {index_shape} with batch_dims={batch} do not fit data {shape}")
    indexed = shape[batch : batch + depth]
    weights = np.asarray(_c_strides(tuple(indexed)) or [0], dtype=np.int64)[:depth]
    index = _nonnegative(ctx, indices, np.asarray(indexed, dtype=np.int64))
    linear = ctx.op("reduce.sum", ctx.op("math.mul", index, ctx.const(weights)), axes=[-1], keepdims=False)
    if batch:
        block = product(indexed)
        batch_shape = tuple(shape[:batch])
        offsets = (np.arange(product(batch_shape), dtype=np.int64) * block).reshape(
            batch_shape + (1,) * (len(index_shape) - 1 - batch)
        )
        linear = ctx.op("math.add", linear, ctx.const(offsets))
    flat_data = reshape(ctx, data, (product(shape[: batch + depth]),) + tuple(shape[batch + depth :]))
    return ctx.emit("tensor.gather", flat_data, linear, axis=0)


# ---- CumSum / OneHot / EyeLike ---------------------------------------------------------------------------------------------

@converter("CumSum")
def convert_cumsum(ctx: ImportContext, node: OnnxNode) -> Value:
    """A running sum is a product with a triangular matrix of ones along the axis."""
    x = ctx.input(node, 0)
    shape = shape_of(ctx, x)
    axis_array = ctx.constant_input(node, 1, "axis")
    if axis_array is None:
        ctx.refuse("axis is required")
    axis = normalize_axes(ctx, [int(np.asarray(axis_array).reshape(-1)[0])], len(shape))[0]
    size = shape[axis]
    rows, columns = np.indices((size, size))
    exclusive, reverse = bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0))
    # out[j] = sum_i x[i] * mask[i, j]
    if reverse:
        mask = rows > columns if exclusive else rows >= columns
    else:
        mask = rows < columns if exclusive else rows <= columns
    last = len(shape) - 1
    perm = list(range(len(shape)))
    perm[axis], perm[last] = perm[last], perm[axis]
    moved = x if axis == last else ctx.op("tensor.transpose", x, perm=perm)
    summed = (ctx.emit if axis == last else ctx.op)("linalg.matmul", moved, ctx.const(mask.astype(x.dtype)))
    return summed if axis == last else ctx.emit("tensor.transpose", summed, perm=perm)


@converter("OneHot")
def convert_one_hot(ctx: ImportContext, node: OnnxNode) -> Value:
    indices = ctx.input(node, 0)
    depth_array = ctx.constant_input(node, 1, "depth")
    values = ctx.input(node, 2)
    if depth_array is None:
        ctx.refuse("depth is required")
    depth = int(np.asarray(depth_array).reshape(-1)[0])
    shape = shape_of(ctx, indices)
    rank = len(shape) + 1
    axis = normalize_axes(ctx, [int(node.attr("axis", -1))], rank)[0]
    as_int = indices if indices.dtype == "int64" else ctx.op("math.cast", indices, dtype="int64")
    wrapped = _nonnegative(ctx, as_int, np.asarray(depth))
    expanded = reshape(ctx, wrapped, [*shape[:axis], 1, *shape[axis:]])
    positions = np.arange(depth, dtype=np.int64).reshape([-1 if i == axis else 1 for i in range(rank)])
    hot = ctx.op("math.equal", expanded, ctx.const(positions))
    off = reshape(ctx, ctx.op("tensor.slice", values, starts=[0], ends=[1]), ())
    on = reshape(ctx, ctx.op("tensor.slice", values, starts=[1], ends=[2]), ())
    return ctx.emit("math.where", hot, on, off)


@converter("EyeLike")
def convert_eye_like(ctx: ImportContext, node: OnnxNode) -> Value:
    x = ctx.input(node, 0)
    rows, columns = shape_of(ctx, x)
    dtype = onnx_dtype(int(node.attr("dtype"))) if node.attr("dtype") is not None else x.dtype
    if dtype is None:
        ctx.refuse(f"dtype {node.attr('dtype')}")
    return ctx.const(np.eye(rows, columns, k=int(node.attr("k", 0)), dtype=dtype), output=0)
