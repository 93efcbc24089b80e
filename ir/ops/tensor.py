"""Data movement (``tensor.*``): reshape, transpose, concat, split, slice, gather, expand, tile, pad."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import TensorType
from .registry import Attr, ShapeError, broadcast_shapes, define, normalize_axis


# ---- reshape ---------------------------------------------------------------------------------------

def resolve_reshape(in_shape: tuple, target: tuple) -> tuple:
    """Resolve one -1 in ``target`` against ``in_shape`` (0 is a real zero-size dim here)."""
    if sum(1 for dim in target if dim == -1) > 1:
        raise ShapeError(f"reshape target {target} has more than one -1")
    if -1 not in target:
        return tuple(target)
    if not all(isinstance(dim, int) for dim in in_shape) or not all(isinstance(d, int) for d in target):
        known_in = [d for d in in_shape]
        known_out = [d for d in target if d != -1]
        # symbolic: cancel identical symbols, the rest must be static
        remaining_in = list(known_in)
        remaining_out = []
        for dim in known_out:
            if isinstance(dim, str) and dim in remaining_in:
                remaining_in.remove(dim)
            else:
                remaining_out.append(dim)
        if not all(isinstance(d, int) for d in remaining_in + remaining_out):
            raise ShapeError(f"cannot resolve -1 in {target} for symbolic input {in_shape}")
        numerator = int(np.prod(remaining_in, dtype=np.int64))
        denominator = int(np.prod(remaining_out, dtype=np.int64))
    else:
        numerator = int(np.prod(in_shape, dtype=np.int64))
        denominator = int(np.prod([d for d in target if d != -1], dtype=np.int64))
    if denominator == 0 or numerator % denominator:
        raise ShapeError(f"cannot reshape {in_shape} to {target}")
    return tuple(numerator // denominator if dim == -1 else dim for dim in target)


def _reshape_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    shape = resolve_reshape(tuple(x.shape), tuple(attrs["shape"]))
    if x.is_static and all(isinstance(d, int) for d in shape):
        if int(np.prod(shape, dtype=np.int64)) != x.numel:
            raise ShapeError(f"cannot reshape {x.shape} ({x.numel} elements) to {shape}")
    return x.with_shape(shape)


def _reshape_reference(x: np.ndarray, shape: tuple) -> np.ndarray:
    symbolic = [dim for dim in shape if isinstance(dim, str) or dim == -1]
    if len(symbolic) > 1:
        raise ShapeError(f"reshape to {shape} has {len(symbolic)} unknown dims; bind the symbolic dims first")
    # one symbolic dim is whatever is left over, as -1 would be
    return x.reshape(tuple(-1 if isinstance(dim, str) else dim for dim in shape))


define("tensor.reshape", _reshape_infer, _reshape_reference, attrs={"shape": Attr("dims")})


# ---- transpose --------------------------------------------------------------------------------------

def _transpose_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    perm = attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"perm {perm} is not a permutation of rank {x.rank}")
    return x.with_shape(tuple(x.shape[axis] for axis in perm))


define("tensor.transpose", _transpose_infer, lambda x, perm: np.transpose(x, perm), attrs={"perm": Attr("ints")})


# ---- concat / split ---------------------------------------------------------------------------------

def _concat_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    first = inputs[0]
    axis = normalize_axis(attrs["axis"], first.rank)
    total: Any = 0
    for item in inputs:
        if item.rank != first.rank or item.dtype != first.dtype:
            raise ShapeError(f"cannot concat {first} with {item}")
        for index, (a, b) in enumerate(zip(item.shape, first.shape)):
            if index != axis and a != b:
                raise ShapeError(f"concat inputs differ off the axis: {first.shape} and {item.shape}")
        dim = item.shape[axis]
        total = total + dim if isinstance(dim, int) and isinstance(total, int) else f"{total}+{dim}"
    return first.with_shape(tuple(total if i == axis else d for i, d in enumerate(first.shape)))


define(
    "tensor.concat",
    _concat_infer,
    lambda *xs, axis: np.concatenate(xs, axis=axis),
    inputs=(1, None),
    attrs={"axis": Attr("int")},
)


def _split_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x = inputs[0]
    axis = normalize_axis(attrs["axis"], x.rank)
    sizes = attrs["sizes"]
    dim = x.shape[axis]
    if isinstance(dim, int) and sum(sizes) != dim:
        raise ShapeError(f"split sizes {sizes} do not add up to dim {dim}")
    return [x.with_shape(tuple(size if i == axis else d for i, d in enumerate(x.shape))) for size in sizes]


def _split_reference(x: np.ndarray, axis: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


define("tensor.split", _split_infer, _split_reference, attrs={"axis": Attr("int"), "sizes": Attr("ints")})


# ---- slice ----------------------------------------------------------------------------------------------

def slice_per_axis(rank: int, shape: tuple, attrs: dict[str, Any]) -> list[slice]:
    starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]
    axes = tuple(range(len(starts))) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError("starts, ends, axes and steps must have the same length")
    result = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ShapeError("slice step 0")
        result[normalize_axis(axis, rank)] = slice(start, end, step)
    return result


def _slice_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    shape = []
    for dim, item in zip(x.shape, slice_per_axis(x.rank, x.shape, attrs)):
        if item == slice(None):
            shape.append(dim)
        elif not isinstance(dim, int):
            raise ShapeError(f"cannot slice symbolic dim {dim}")
        else:
            shape.append(len(range(*item.indices(dim))))
    return x.with_shape(tuple(shape))


def _slice_reference(x: np.ndarray, **attrs: Any) -> np.ndarray:
    return x[tuple(slice_per_axis(x.ndim, x.shape, attrs))]


define(
    "tensor.slice",
    _slice_infer,
    _slice_reference,
    attrs={
        "starts": Attr("ints"),
        "ends": Attr("ints"),
        "axes": Attr("optional_ints", None),
        "steps": Attr("optional_ints", None),
    },
    doc="Python/NumPy slice semantics per axis (out-of-range bounds clamp, as in ONNX Slice).",
)


# ---- gather / expand / tile -----------------------------------------------------------------------------

def _gather_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, indices = inputs
    if indices.dtype not in ("int32", "int64"):
        raise ShapeError(f"gather indices must be int32/int64, got {indices.dtype}")
    axis = normalize_axis(attrs["axis"], x.rank)
    return x.with_shape(tuple(x.shape[:axis]) + tuple(indices.shape) + tuple(x.shape[axis + 1 :]))


def _gather_reference(x: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    dim = x.shape[axis]
    if indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise IndexError(f"gather index out of range [{-dim}, {dim})")
    return np.take(x, indices, axis=axis)


define("tensor.gather", _gather_infer, _gather_reference, inputs=2, attrs={"axis": Attr("int", 0)})


def _expand_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    return x.with_shape(broadcast_shapes(x.shape, attrs["shape"]))


def _expand_reference(x: np.ndarray, shape: tuple) -> np.ndarray:
    # a symbolic target dim equals the input's dim (inference checked it), so broadcast it as 1
    target = np.broadcast_shapes(x.shape, tuple(1 if isinstance(dim, str) else dim for dim in shape))
    return np.array(np.broadcast_to(x, target))  # a copy; keeps 0-d results 0-d


define("tensor.expand", _expand_infer, _expand_reference, attrs={"shape": Attr("dims")})


def _tile_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    repeats = attrs["repeats"]
    if len(repeats) != x.rank:
        raise ShapeError(f"tile repeats {repeats} must match rank {x.rank}")
    shape = tuple(d * r if isinstance(d, int) else (d if r == 1 else f"{d}*{r}") for d, r in zip(x.shape, repeats))
    return x.with_shape(shape)


define("tensor.tile", _tile_infer, lambda x, repeats: np.tile(x, repeats), attrs={"repeats": Attr("ints")})


# ---- pad ----------------------------------------------------------------------------------------------

def _pad_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    pads = attrs["pads"]
    if len(pads) != 2 * x.rank:
        raise ShapeError(f"pads {pads} must have 2*rank={2 * x.rank} entries (begins then ends)")
    if attrs["mode"] not in ("constant", "reflect", "edge"):
        raise ShapeError(f"pad mode {attrs['mode']} is not constant, reflect or edge")
    shape = []
    for axis, dim in enumerate(x.shape):
        extra = pads[axis] + pads[axis + x.rank]
        shape.append(dim + extra if isinstance(dim, int) else (dim if extra == 0 else f"{dim}+{extra}"))
        if isinstance(dim, int) and dim + extra < 0:
            raise ShapeError(f"pads {pads} crop more than dim {dim}")
    return x.with_shape(tuple(shape))


def _pad_reference(x: np.ndarray, pads: tuple[int, ...], mode: str, value: float) -> np.ndarray:
    rank = x.ndim
    # negative pads crop
    crop = tuple(
        slice(max(-pads[axis], 0), x.shape[axis] - max(-pads[axis + rank], 0)) for axis in range(rank)
    )
    x = x[crop]
    widths = [(max(pads[axis], 0), max(pads[axis + rank], 0)) for axis in range(rank)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.array(value, dtype=x.dtype))
    return np.pad(x, widths, mode=mode)


define(
    "tensor.pad",
    _pad_infer,
    _pad_reference,
    attrs={"pads": Attr("ints"), "mode": Attr("str", "constant"), "value": Attr("float", 0.0)},
)
