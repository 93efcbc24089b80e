"""Reductions (``reduce.*``) over a set of axes, and arg-reductions."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..types import TensorType
from .registry import Attr, ShapeError, define, normalize_axis


def reduced_axes(rank: int, axes: tuple[int, ...] | None) -> tuple[int, ...]:
    """Normalized, sorted axes; None means every axis."""
    if axes is None:
        return tuple(range(rank))
    normalized = sorted({normalize_axis(axis, rank) for axis in axes})
    if len(normalized) != len(axes):
        raise ShapeError(f"repeated axes {axes}")
    return tuple(normalized)


def _reduce_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    axes = reduced_axes(x.rank, attrs["axes"])
    if attrs["keepdims"]:
        shape = tuple(1 if axis in axes else dim for axis, dim in enumerate(x.shape))
    else:
        shape = tuple(dim for axis, dim in enumerate(x.shape) if axis not in axes)
    return TensorType(shape, x.dtype)


def _reference(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def run(x: np.ndarray, axes: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
        normalized = reduced_axes(x.ndim, axes)
        return np.asarray(fn(x, axis=normalized, keepdims=keepdims)).astype(x.dtype, copy=False)

    return run


def _input_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    return inputs[0].numel


_REDUCE_ATTRS = {"axes": Attr("optional_ints", None), "keepdims": Attr("bool", True)}
for _name, _fn in {
    "sum": np.sum,
    "mean": np.mean,
    "max": np.max,
    "min": np.min,
    "prod": np.prod,
    "sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "l1": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "l2": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "log_sum_exp": lambda x, axis, keepdims: np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims)),
}.items():
    define(f"reduce.{_name}", _reduce_infer, _reference(_fn), attrs=_REDUCE_ATTRS, flops=_input_flops)


def _arg_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x = inputs[0]
    axis = normalize_axis(attrs["axis"], x.rank)
    if attrs["keepdims"]:
        shape = tuple(1 if index == axis else dim for index, dim in enumerate(x.shape))
    else:
        shape = tuple(dim for index, dim in enumerate(x.shape) if index != axis)
    return TensorType(shape, "int64")


def _arg_reference(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def run(x: np.ndarray, axis: int, keepdims: bool) -> np.ndarray:
        return fn(x, axis=axis, keepdims=keepdims).astype(np.int64)

    return run


_ARG_ATTRS = {"axis": Attr("int", 0), "keepdims": Attr("bool", True)}
define("reduce.argmax", _arg_infer, _arg_reference(np.argmax), attrs=_ARG_ATTRS, flops=_input_flops)
define("reduce.argmin", _arg_infer, _arg_reference(np.argmin), attrs=_ARG_ATTRS, flops=_input_flops)
