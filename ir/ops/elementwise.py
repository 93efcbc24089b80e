"""Elementwise ops (``math.*``): unary, binary with NumPy broadcasting, where, cast."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..types import FLOAT_DTYPES, TensorType
from .registry import Attr, ShapeError, broadcast_shapes, define, flops_per_output

try:  # scipy ships with scikit-learn; erf has no NumPy ufunc
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - exercised only without scipy
    import math

    _erf = np.vectorize(math.erf, otypes=[np.float64])


def _same_type(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return inputs[0]


def _float_only(name: str) -> Callable[[list[TensorType], dict[str, Any]], TensorType]:
    def infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        if inputs[0].dtype not in FLOAT_DTYPES:
            raise ShapeError(f"{name} needs a float input, got {inputs[0].dtype}")
        return inputs[0]

    return infer


def _keep_dtype(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def run(x: np.ndarray, **attrs: Any) -> np.ndarray:
        return np.asarray(fn(x, **attrs)).astype(x.dtype, copy=False)

    return run


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # split by sign so large |x| neither overflows nor loses precision
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp_x = np.exp(x[~positive])
    out[~positive] = exp_x / (1.0 + exp_x)
    return out


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _round_half_even(x: np.ndarray) -> np.ndarray:
    return np.round(x)


def _clip(x: np.ndarray, min: float | None, max: float | None) -> np.ndarray:
    return np.clip(x, min, max)


def _shrink(x: np.ndarray, lambd: float, bias: float) -> np.ndarray:
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0.0))


UNARY_FLOAT: dict[str, tuple[Callable[..., np.ndarray], int, dict[str, Attr]]] = {
    # name: (reference, flops per element, attrs)
    "exp": (np.exp, 1, {}),
    "log": (np.log, 1, {}),
    "sqrt": (np.sqrt, 1, {}),
    "rsqrt": (lambda x: 1.0 / np.sqrt(x), 2, {}),
    "reciprocal": (lambda x: 1.0 / x, 1, {}),
    "sin": (np.sin, 1, {}),
    "cos": (np.cos, 1, {}),
    "tanh": (np.tanh, 1, {}),
    "erf": (_erf, 1, {}),
    "sigmoid": (_sigmoid, 4, {}),
    "floor": (np.floor, 1, {}),
    "ceil": (np.ceil, 1, {}),
    "round": (_round_half_even, 1, {}),
    "softplus": (_softplus, 3, {}),
    "softsign": (lambda x: x / (1.0 + np.abs(x)), 3, {}),
    "silu": (lambda x: x * _sigmoid(x), 5, {}),
    "gelu": (_gelu, 8, {"approximate": Attr("str", "none")}),
    "hard_sigmoid": (
        lambda x, alpha, beta: np.clip(alpha * x + beta, 0.0, 1.0),
        3,
        {"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)},
    ),
    "hard_swish": (lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0), 4, {}),
    "leaky_relu": (lambda x, alpha: np.where(x >= 0, x, alpha * x), 2, {"alpha": Attr("float", 0.01)}),
    "elu": (lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))), 3, {"alpha": Attr("float", 1.0)}),
    "selu": (
        lambda x, alpha, gamma: gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
        4,
        {"alpha": Attr("float", 1.6732632423543772), "gamma": Attr("float", 1.0507009873554805)},
    ),
    "shrink": (_shrink, 2, {"lambd": Attr("float", 0.5), "bias": Attr("float", 0.0)}),
}

UNARY_ANY: dict[str, tuple[Callable[..., np.ndarray], int, dict[str, Attr]]] = {
    "neg": (np.negative, 1, {}),
    "abs": (np.abs, 1, {}),
    "sign": (np.sign, 1, {}),
    "relu": (lambda x: np.maximum(x, 0), 1, {}),
    "clip": (_clip, 2, {"min": Attr("optional_float", None), "max": Attr("optional_float", None)}),
}

for _name, (_fn, _cost, _attrs) in UNARY_FLOAT.items():
    define(f"math.{_name}", _float_only(f"math.{_name}"), _keep_dtype(_fn), attrs=_attrs, flops=flops_per_output(_cost))
for _name, (_fn, _cost, _attrs) in UNARY_ANY.items():
    define(f"math.{_name}", _same_type, _keep_dtype(_fn), attrs=_attrs, flops=flops_per_output(_cost))

define("math.not", lambda i, a: i[0].with_dtype("bool"), np.logical_not)
define("math.isnan", lambda i, a: i[0].with_dtype("bool"), np.isnan)


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(dtype)


define("math.cast", lambda i, a: i[0].with_dtype(a["dtype"]), _cast, attrs={"dtype": Attr("dtype")})


# ---- binary ops with broadcasting ----------------------------------------------------------------

def _binary_infer(result_dtype: str | None) -> Callable[[list[TensorType], dict[str, Any]], TensorType]:
    def infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        left, right = inputs
        if left.dtype != right.dtype:
            raise ShapeError(f"dtypes differ: {left.dtype} and {right.dtype} (insert math.cast)")
        return TensorType(broadcast_shapes(left.shape, right.shape), result_dtype or left.dtype)

    return infer


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer):
        # integer division truncates toward zero (ONNX, C, TVM), unlike NumPy's floor division
        with np.errstate(divide="ignore"):
            return (np.trunc(a.astype(np.float64) / b)).astype(a.dtype)
    return np.divide(a, b)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.power(a, b).astype(a.dtype, copy=False)


def _mod(a: np.ndarray, b: np.ndarray, fmod: bool) -> np.ndarray:
    return np.fmod(a, b) if fmod else np.mod(a, b)


BINARY: dict[str, tuple[Callable[..., np.ndarray], str | None, dict[str, Attr]]] = {
    "add": (np.add, None, {}),
    "sub": (np.subtract, None, {}),
    "mul": (np.multiply, None, {}),
    "div": (_div, None, {}),
    "pow": (_pow, None, {}),
    "maximum": (np.maximum, None, {}),
    "minimum": (np.minimum, None, {}),
    "mod": (_mod, None, {"fmod": Attr("bool", False)}),
    "equal": (np.equal, "bool", {}),
    "less": (np.less, "bool", {}),
    "less_equal": (np.less_equal, "bool", {}),
    "greater": (np.greater, "bool", {}),
    "greater_equal": (np.greater_equal, "bool", {}),
    "and": (np.logical_and, "bool", {}),
    "or": (np.logical_or, "bool", {}),
    "xor": (np.logical_xor, "bool", {}),
}

for _name, (_fn, _dtype, _attrs) in BINARY.items():
    define(f"math.{_name}", _binary_infer(_dtype), _fn, inputs=2, attrs=_attrs, flops=flops_per_output(1))


def _prelu_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, slope = inputs
    shape = broadcast_shapes(x.shape, slope.shape)
    if tuple(shape) != tuple(x.shape):
        raise ShapeError(f"slope {slope.shape} would change the shape of x {x.shape}")
    return x


define(
    "math.prelu",
    _prelu_infer,
    lambda x, slope: np.where(x >= 0, x, x * slope).astype(x.dtype),
    inputs=2,
    flops=flops_per_output(2),
)


def _where_infer(inputs: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    condition, left, right = inputs
    if condition.dtype != "bool":
        raise ShapeError(f"condition must be bool, got {condition.dtype}")
    if left.dtype != right.dtype:
        raise ShapeError(f"branches differ in dtype: {left.dtype} and {right.dtype}")
    return TensorType(broadcast_shapes(condition.shape, left.shape, right.shape), left.dtype)


define("math.where", _where_infer, np.where, inputs=3, flops=flops_per_output(1))
