"""Every registry op, lowered to Relax, compiled for the CPU and compared with the NumPy reference.

Compiling is the expensive part on a shared 2-core machine, so the op cases of one family are
built into one graph with many independent outputs and compiled once per module; each case is
still its own test (``test_op_matches_reference[math.div/int-negative]``) comparing its outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pytest
from tvm import relax
from tvm.ir.type import TupleType

from optc.backends.lower import LOWERINGS, lower_graph, missing_lowerings
from optc.errors import LoweringError, OptcError
from optc.ir import Graph, TensorType, interpret
from optc.ir.graph import Value
from optc.ir.ops import all_ops

# ---- building many small cases into one graph ----------------------------------------------------


class Scope:
    """Adds one case's inputs, params and nodes to a shared graph, with names prefixed by the case."""

    def __init__(self, suite: "Suite", prefix: str) -> None:
        self.suite = suite
        self.graph = suite.graph
        self.prefix = prefix
        self.inputs: list[Value] = []

    def input(
        self,
        shape: Sequence[int],
        dtype: str = "float32",
        *,
        values: Sequence | np.ndarray | None = None,
        low: float | None = None,
        high: float | None = None,
    ) -> Value:
        """A graph input with seeded data: N(0,1) floats, ints in [low, high), random bools."""
        rng = self.suite.rng
        shape = tuple(shape)
        if values is not None:
            array = np.asarray(values, dtype=dtype).reshape(shape)
        elif dtype == "bool":
            array = rng.integers(0, 2, shape).astype(bool)
        elif dtype.startswith("float"):
            array = (rng.uniform(low, high, shape) if low is not None else rng.standard_normal(shape)).astype(dtype)
        else:
            default_low = 0 if dtype.startswith("uint") else -10
            array = rng.integers(default_low if low is None else low, 10 if high is None else high, shape).astype(dtype)
        value = self.graph.add_input(f"{self.prefix}_in", TensorType(shape, dtype))
        self.suite.feeds[value.name] = array
        self.inputs.append(value)
        return value

    def param(self, array: np.ndarray) -> Value:
        return self.graph.add_param(f"{self.prefix}_p", np.asarray(array))

    def weight(self, shape: Sequence[int], scale: float = 0.5) -> Value:
        return self.param((self.suite.rng.standard_normal(tuple(shape)) * scale).astype("float32"))

    def op(self, op: str, *inputs: Value, **attrs: object) -> Value:
        return self.graph.add_node(op, inputs, attrs, name=self.prefix).output

    def ops(self, op: str, *inputs: Value, **attrs: object) -> list[Value]:
        return self.graph.add_node(op, inputs, attrs, name=self.prefix).outputs


Case = Callable[[Scope], "Value | list[Value]"]


@dataclass
class Suite:
    graph: Graph
    rng: np.random.Generator
    feeds: dict[str, np.ndarray] = field(default_factory=dict)
    case_inputs: dict[str, list[str]] = field(default_factory=dict)
    case_outputs: dict[str, list[str]] = field(default_factory=dict)

    @staticmethod
    def build(name: str, cases: dict[str, Case], seed: int = 0) -> "Suite":
        suite = Suite(Graph(name), np.random.default_rng(seed))
        for case_id, case in cases.items():
            scope = Scope(suite, case_id.replace(".", "_").replace("/", "__"))
            result = case(scope)
            values = result if isinstance(result, list) else [result]
            suite.graph.outputs.extend(values)
            suite.case_inputs[case_id] = [value.name for value in scope.inputs]
            suite.case_outputs[case_id] = [value.name for value in values]
        return suite


def tolerance(dtype: np.dtype) -> dict[str, float]:
    return {"float32": {"rtol": 1e-3, "atol": 1e-4}, "float64": {"rtol": 1e-7, "atol": 1e-9},
            "float16": {"rtol": 1e-2, "atol": 1e-3}}.get(np.dtype(dtype).name, {"rtol": 0.0, "atol": 0.0})


def assert_matches_reference(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, reference {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, reference {expected.shape}"
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(actual, expected, equal_nan=True, err_msg=what, **tolerance(expected.dtype))
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)


# ---- the cases, one dict per op family ----------------------------------------------------------------

def _unary(op: str, dtype: str = "float32", shape: Sequence[int] = (2, 3, 4), **input_kwargs: object) -> Case:
    return lambda s: s.op(op, s.input(shape, dtype, **input_kwargs))


def _binary(op: str, dtype: str = "float32", left_shape=(2, 3, 4), right_shape=(3, 1), right: dict | None = None, **attrs) -> Case:
    return lambda s: s.op(op, s.input(left_shape, dtype), s.input(right_shape, dtype, **(right or {})), **attrs)


HALVES = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.49, 3.7]
WIDE = np.linspace(-40.0, 40.0, 24)  # exercises overflow-prone formulas (softplus, sigmoid, elu)

ELEMENTWISE: dict[str, Case] = {
    "math.exp": _unary("math.exp"),
    "math.log": _unary("math.log", low=0.1, high=5.0),
    "math.sqrt": _unary("math.sqrt", low=0.0, high=5.0),
    "math.rsqrt": _unary("math.rsqrt", low=0.1, high=5.0),
    "math.reciprocal": _unary("math.reciprocal", low=0.5, high=5.0),
    "math.sin": _unary("math.sin"),
    "math.cos": _unary("math.cos"),
    "math.tanh": _unary("math.tanh", shape=(24,), values=WIDE),
    "math.erf": _unary("math.erf"),
    "math.sigmoid": _unary("math.sigmoid", shape=(24,), values=WIDE),
    "math.floor": _unary("math.floor", shape=(8,), values=HALVES),
    "math.ceil": _unary("math.ceil", shape=(8,), values=HALVES),
    "math.round/half-to-even": _unary("math.round", shape=(8,), values=HALVES),
    "math.softplus": _unary("math.softplus", shape=(24,), values=WIDE),
    "math.softsign": _unary("math.softsign"),
    "math.silu": _unary("math.silu"),
    "math.gelu": _unary("math.gelu"),
    "math.gelu/tanh": lambda s: s.op("math.gelu", s.input((2, 3, 4)), approximate="tanh"),
    "math.hard_sigmoid": lambda s: s.op("math.hard_sigmoid", s.input((2, 3, 4), low=-6, high=6), alpha=0.3, beta=0.4),
    "math.hard_swish": _unary("math.hard_swish", low=-6, high=6),
    "math.leaky_relu": lambda s: s.op("math.leaky_relu", s.input((2, 3, 4)), alpha=0.2),
    "math.elu": lambda s: s.op("math.elu", s.input((24,), values=WIDE), alpha=0.7),
    "math.selu": _unary("math.selu", shape=(24,), values=WIDE),
    "math.shrink": lambda s: s.op("math.shrink", s.input((2, 3, 4)), lambd=0.6, bias=0.2),
    "math.exp/float64": _unary("math.exp", "float64"),
    "math.tanh/float16": _unary("math.tanh", "float16"),
    "math.exp/0-d": _unary("math.exp", shape=()),
    # unary ops on any dtype
    "math.neg": _unary("math.neg"),
    "math.neg/int32": _unary("math.neg", "int32"),
    "math.abs": _unary("math.abs"),
    "math.abs/int32": _unary("math.abs", "int32"),
    "math.abs/uint8": _unary("math.abs", "uint8", high=255),
    "math.sign": _unary("math.sign", shape=(6,), values=[-2.0, -0.0, 0.0, 0.5, 3.0, -1e-3]),
    "math.sign/int32": _unary("math.sign", "int32"),
    "math.sign/uint8": _unary("math.sign", "uint8"),
    "math.relu": _unary("math.relu"),
    "math.relu/int32": _unary("math.relu", "int32"),
    "math.clip": lambda s: s.op("math.clip", s.input((2, 3, 4)), min=-0.5, max=0.7),
    "math.clip/min-only": lambda s: s.op("math.clip", s.input((2, 3, 4)), min=0.1),
    "math.clip/int32-whole": lambda s: s.op("math.clip", s.input((2, 3, 4), "int32"), min=-3, max=4),
    "math.clip/int32-fractional": lambda s: s.op("math.clip", s.input((2, 3, 4), "int32"), min=-2.5, max=3.5),
    "math.clip/uint8-below-range": lambda s: s.op("math.clip", s.input((2, 3, 4), "uint8"), min=-1, max=6),
    "math.not": _unary("math.not", "bool"),
    "math.not/int32": _unary("math.not", "int32", low=-1, high=2),
    "math.isnan": _unary("math.isnan", shape=(4,), values=[np.nan, 1.0, -np.inf, 0.0]),
    "math.isnan/int32": _unary("math.isnan", "int32"),
    "math.cast/float-to-int32": lambda s: s.op("math.cast", s.input((2, 3, 4), low=-9, high=9), dtype="int32"),
    "math.cast/float-to-bool": lambda s: s.op("math.cast", s.input((6,), values=[0.0, 0.5, -0.25, 2.0, -0.0, 1.0]), dtype="bool"),
    "math.cast/int-to-bool": lambda s: s.op("math.cast", s.input((2, 3, 4), "int32", low=-2, high=3), dtype="bool"),
    "math.cast/bool-to-float": lambda s: s.op("math.cast", s.input((2, 3), "bool"), dtype="float32"),
    "math.cast/int32-to-int8-wraps": lambda s: s.op("math.cast", s.input((2, 3, 4), "int32", low=-300, high=300), dtype="int8"),
    "math.cast/float32-to-float16": lambda s: s.op("math.cast", s.input((2, 3, 4)), dtype="float16"),
    "math.cast/int64-to-float64": lambda s: s.op("math.cast", s.input((2, 3), "int64"), dtype="float64"),
    # binary ops, broadcasting (2,3,4) with (3,1)
    "math.add": _binary("math.add"),
    "math.sub": _binary("math.sub"),
    "math.mul": _binary("math.mul"),
    "math.div": _binary("math.div", right={"low": 0.5, "high": 3.0}),
    "math.div/int32-truncates": _binary("math.div", "int32", right={"low": 1, "high": 4}),
    "math.div/int64-negative-divisor": _binary("math.div", "int64", right={"low": -5, "high": -1}),
    "math.pow": lambda s: s.op("math.pow", s.input((2, 3, 4), low=0.1, high=3.0), s.input((3, 1), low=-2.0, high=2.0)),
    "math.pow/int32": lambda s: s.op("math.pow", s.input((2, 3, 4), "int32", low=-5, high=6), s.input((3, 1), "int32", low=0, high=4)),
    "math.maximum": _binary("math.maximum"),
    "math.minimum/int32": _binary("math.minimum", "int32"),
    "math.mod": _binary("math.mod", right={"low": 0.5, "high": 3.0}),
    "math.mod/negative-divisor": _binary("math.mod", right={"low": -3.0, "high": -0.5}),
    "math.mod/fmod": _binary("math.mod", right={"low": -3.0, "high": -0.5}, fmod=True),
    "math.mod/int32": _binary("math.mod", "int32", right={"low": -4, "high": 5}),
    "math.mod/int32-fmod": _binary("math.mod", "int32", right={"low": -4, "high": 5}, fmod=True),
    "math.equal/int32": _binary("math.equal", "int32", right={"low": -2, "high": 2}),
    "math.less": _binary("math.less"),
    "math.less_equal/int32": _binary("math.less_equal", "int32"),
    "math.greater": _binary("math.greater"),
    "math.greater_equal": _binary("math.greater_equal"),
    "math.and": _binary("math.and", "bool"),
    "math.or": _binary("math.or", "bool"),
    "math.xor": _binary("math.xor", "bool"),
    "math.and/int32": _binary("math.and", "int32", right={"low": -1, "high": 2}),
    "math.add/0-d": _binary("math.add", left_shape=(), right_shape=()),
    "math.mul/0-d-broadcast": _binary("math.mul", left_shape=(2, 3), right_shape=()),
    "math.prelu": lambda s: s.op("math.prelu", s.input((2, 3, 4, 4)), s.weight((3, 1, 1))),
    "math.where": lambda s: s.op("math.where", s.input((3, 1), "bool"), s.input((2, 3, 4)), s.input((4,))),
    "math.where/0-d-condition": lambda s: s.op("math.where", s.input((), "bool"), s.input((2, 3), "int32"), s.input((2, 3), "int32")),
}


TENSOR: dict[str, Case] = {
    "tensor.reshape": lambda s: s.op("tensor.reshape", s.input((2, 3, 4)), shape=(4, -1)),
    "tensor.reshape/to-0-d": lambda s: s.op("tensor.reshape", s.input((1, 1)), shape=()),
    "tensor.reshape/bool": lambda s: s.op("tensor.reshape", s.input((2, 6), "bool"), shape=(3, 2, 2)),
    "tensor.transpose": lambda s: s.op("tensor.transpose", s.input((2, 3, 4)), perm=(2, 0, 1)),
    "tensor.concat": lambda s: s.op("tensor.concat", s.input((2, 3)), s.input((2, 1)), s.input((2, 2)), axis=-1),
    "tensor.concat/one-input": lambda s: s.op("tensor.concat", s.input((2, 3)), axis=0),
    "tensor.split": lambda s: s.ops("tensor.split", s.input((2, 6, 3)), axis=-2, sizes=(1, 3, 2)),
    "tensor.split/one-part": lambda s: s.ops("tensor.split", s.input((2, 4)), axis=1, sizes=(4,)),
    "tensor.slice": lambda s: s.op("tensor.slice", s.input((4, 6, 5)), starts=(1, 2), ends=(3, 5), axes=(0, 2)),
    "tensor.slice/clamped": lambda s: s.op("tensor.slice", s.input((4, 6)), starts=(-100, 2), ends=(100, 1000)),
    "tensor.slice/reverse": lambda s: s.op("tensor.slice", s.input((4, 6)), starts=(-1,), ends=(-1000,), axes=(1,), steps=(-1,)),
    "tensor.slice/negative-step": lambda s: s.op("tensor.slice", s.input((4, 7)), starts=(5, 3), ends=(0, 100), axes=(1, 0), steps=(-2, 2)),
    "tensor.slice/strided-negative-axis": lambda s: s.op("tensor.slice", s.input((3, 9)), starts=(1,), ends=(-1,), axes=(-1,), steps=(3,)),
    "tensor.slice/empty": lambda s: s.op("tensor.slice", s.input((4, 6)), starts=(3,), ends=(1,)),
    "tensor.gather/negative-indices": lambda s: s.op("tensor.gather", s.input((5, 3)), s.input((4,), "int64", values=[-1, 0, -5, 4]), axis=0),
    "tensor.gather/2-d-indices": lambda s: s.op("tensor.gather", s.input((2, 5, 3)), s.input((2, 2), "int32", low=-5, high=5), axis=1),
    "tensor.gather/0-d-index": lambda s: s.op("tensor.gather", s.input((4, 3)), s.input((), "int64", values=-2), axis=-1),
    "tensor.expand": lambda s: s.op("tensor.expand", s.input((3, 1)), shape=(2, 3, 4)),
    "tensor.expand/lower-rank-shape": lambda s: s.op("tensor.expand", s.input((2, 1, 4)), shape=(3, 1)),
    "tensor.tile": lambda s: s.op("tensor.tile", s.input((2, 3)), repeats=(2, 3)),
    "tensor.pad": lambda s: s.op("tensor.pad", s.input((1, 2, 3, 3)), pads=(0, 0, 1, 2, 0, 1, 2, 0), value=1.5),
    "tensor.pad/reflect": lambda s: s.op("tensor.pad", s.input((2, 4, 5)), pads=(0, 2, 1, 0, 1, 3), mode="reflect"),
    "tensor.pad/edge": lambda s: s.op("tensor.pad", s.input((2, 4, 5)), pads=(0, 2, 1, 0, 1, 3), mode="edge"),
    "tensor.pad/reflect-wider-than-dim": lambda s: s.op("tensor.pad", s.input((3, 4)), pads=(0, 7, 4, 9), mode="reflect"),
    "tensor.pad/negative-crops": lambda s: s.op("tensor.pad", s.input((3, 6)), pads=(-1, 2, 1, -3)),
    "tensor.pad/int32": lambda s: s.op("tensor.pad", s.input((2, 3), "int32"), pads=(1, 0, 0, 2), value=7.0),
    "cache.update/middle": lambda s: s.op("cache.update", s.input((1, 2, 6, 3)), s.input((1, 2, 2, 3)),
                                          s.input((1,), "int64", values=[3]), axis=2),
    "cache.update/last-slot-int32-position": lambda s: s.op("cache.update", s.input((5, 4)), s.input((1, 4)),
                                                            s.input((), "int32", values=[4]), axis=0),
}


def _conv(s: Scope, x_shape, w_shape, bias: bool = False, **attrs) -> Value:
    inputs = [s.input(x_shape), s.weight(w_shape)]
    if bias:
        inputs.append(s.weight((w_shape[0],)))
    return s.op("nn.conv", *inputs, **attrs)


def _conv_transpose(s: Scope, x_shape, w_shape, bias: bool = False, groups: int = 1, **attrs) -> Value:
    inputs = [s.input(x_shape), s.weight(w_shape)]
    if bias:
        inputs.append(s.weight((w_shape[1] * groups,)))
    return s.op("nn.conv_transpose", *inputs, groups=groups, **attrs)


def _norm(op: str, x_shape, param_shapes, **attrs) -> Case:
    def case(s: Scope) -> Value:
        params = [s.weight(shape) for shape in param_shapes]
        return s.op(op, s.input(x_shape), *params, **attrs)

    return case


def _batch_norm(x_shape) -> Case:
    def case(s: Scope) -> Value:
        channels = x_shape[1]
        variance = s.param(s.suite.rng.uniform(0.5, 2.0, (channels,)).astype("float32"))
        return s.op("nn.batch_norm", s.input(x_shape), s.weight((channels,)), s.weight((channels,)),
                    s.weight((channels,)), variance, epsilon=1e-3)

    return case


NN: dict[str, Case] = {
    "nn.conv/1-d": lambda s: _conv(s, (1, 3, 11), (4, 3, 3), strides=(2,), pads=(1, 2)),
    "nn.conv/2-d-bias-groups-dilation": lambda s: _conv(s, (2, 4, 9, 8), (6, 2, 3, 3), bias=True, groups=2, dilations=(2, 1), pads=(2, 1, 0, 1)),
    "nn.conv/2-d-depthwise-strided": lambda s: _conv(s, (1, 4, 8, 8), (4, 1, 3, 3), groups=4, strides=(2, 2), pads=(1, 1, 1, 1)),
    "nn.conv/3-d": lambda s: _conv(s, (1, 2, 5, 6, 5), (3, 2, 3, 2, 3), bias=True, pads=(1, 0, 1, 0, 1, 1)),
    "nn.conv_transpose/1-d": lambda s: _conv_transpose(s, (1, 3, 6), (3, 2, 3), strides=(2,), pads=(1, 0), output_padding=(1,)),
    "nn.conv_transpose/2-d-groups-dilation": lambda s: _conv_transpose(s, (1, 4, 5, 4), (4, 3, 3, 2), bias=True, groups=2, strides=(2, 1), dilations=(1, 2), pads=(1, 0, 2, 1)),
    "nn.conv_transpose/3-d": lambda s: _conv_transpose(s, (1, 2, 3, 4, 3), (2, 2, 2, 3, 2), bias=True, strides=(2, 1, 2), output_padding=(1, 0, 0)),
    "nn.max_pool/2-d": lambda s: s.op("nn.max_pool", s.input((1, 2, 8, 8)), kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    "nn.max_pool/1-d-ceil": lambda s: s.op("nn.max_pool", s.input((1, 2, 10)), kernel=(3,), strides=(2,), ceil_mode=True),
    "nn.max_pool/2-d-ceil-dilation": lambda s: s.op("nn.max_pool", s.input((1, 2, 9, 10)), kernel=(2, 3), strides=(2, 2), dilations=(2, 1), pads=(1, 0, 0, 1), ceil_mode=True),
    "nn.max_pool/ceil-drops-window-in-end-padding": lambda s: s.op("nn.max_pool", s.input((1, 1, 5)), kernel=(2,), strides=(2,), pads=(1, 1), ceil_mode=True),
    "nn.max_pool/3-d": lambda s: s.op("nn.max_pool", s.input((1, 2, 4, 5, 6)), kernel=(2, 2, 3), strides=(2, 2, 2)),
    "nn.max_pool/int32": lambda s: s.op("nn.max_pool", s.input((1, 2, 6, 6), "int32"), kernel=(2, 2), strides=(2, 2), pads=(1, 1, 0, 0)),
    "nn.avg_pool/2-d-exclude-pad": lambda s: s.op("nn.avg_pool", s.input((1, 2, 7, 7)), kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    "nn.avg_pool/2-d-include-pad": lambda s: s.op("nn.avg_pool", s.input((1, 2, 7, 7)), kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), count_include_pad=True),
    "nn.avg_pool/1-d-ceil-include-pad": lambda s: s.op("nn.avg_pool", s.input((1, 2, 10)), kernel=(3,), strides=(2,), pads=(1, 1), ceil_mode=True, count_include_pad=True),
    "nn.avg_pool/2-d-ceil-exclude-pad": lambda s: s.op("nn.avg_pool", s.input((1, 2, 8, 9)), kernel=(3, 2), strides=(2, 2), pads=(1, 0, 1, 0), ceil_mode=True),
    "nn.avg_pool/ceil-drops-window-in-end-padding": lambda s: s.op("nn.avg_pool", s.input((1, 1, 5)), kernel=(2,), strides=(2,), pads=(1, 1), ceil_mode=True),
    "nn.avg_pool/3-d-dilation": lambda s: s.op("nn.avg_pool", s.input((1, 1, 6, 5, 6)), kernel=(2, 2, 2), dilations=(2, 1, 2), pads=(1, 1, 0, 1, 0, 1)),
    "nn.batch_norm": _batch_norm((2, 3, 4, 4)),
    "nn.batch_norm/rank-2": _batch_norm((4, 5)),
    "nn.instance_norm": _norm("nn.instance_norm", (2, 3, 4, 5), [(3,), (3,)]),
    "nn.group_norm": _norm("nn.group_norm", (2, 6, 3, 4), [(6,), (6,)], num_groups=3),
    "nn.layer_norm": _norm("nn.layer_norm", (2, 5, 8), [(8,), (8,)]),
    "nn.layer_norm/no-bias-two-axes": _norm("nn.layer_norm", (2, 5, 8), [(5, 8)], axis=1, epsilon=1e-3),
    "nn.rms_norm": _norm("nn.rms_norm", (2, 5, 8), [(8,)]),
    "nn.lrn": lambda s: s.op("nn.lrn", s.input((1, 6, 3, 3)), size=3, alpha=0.01),
    "nn.lrn/even-size": lambda s: s.op("nn.lrn", s.input((2, 5, 4)), size=4, alpha=0.1, beta=0.5, bias=2.0),
    "nn.conv/2-d-bias-relu6": lambda s: _conv(s, (1, 3, 6, 6), (4, 3, 3, 3), bias=True, pads=(1, 1, 1, 1), activation="relu6"),
    "nn.conv/2-d-silu": lambda s: _conv(s, (1, 2, 5, 5), (3, 2, 3, 3), activation="silu"),
    "nn.linear": lambda s: s.op("nn.linear", s.input((2, 5, 8)), s.weight((8, 6))),
    "nn.linear/bias-gelu": lambda s: s.op("nn.linear", s.input((3, 8)), s.weight((8, 4)), s.weight((4,)), activation="gelu"),
    "nn.linear/bias-gelu-tanh": lambda s: s.op("nn.linear", s.input((3, 8)), s.weight((8, 4)), s.weight((4,)), activation="gelu_tanh"),
    "nn.linear/hard-swish": lambda s: s.op("nn.linear", s.input((3, 8)), s.weight((8, 4)), activation="hard_swish"),
    "nn.attention": lambda s: s.op("nn.attention", s.input((2, 3, 5, 4)), s.input((2, 3, 7, 4)), s.input((2, 3, 7, 6))),
    "nn.attention/bool-mask-scale": lambda s: s.op("nn.attention", s.input((1, 2, 4, 4)), s.input((1, 2, 6, 4)), s.input((1, 2, 6, 4)),
                                                   s.param(np.tril(np.ones((4, 6), bool), k=2)[None, None]), scale=0.3),
    "nn.attention/fully-masked-row-gives-zeros": lambda s: s.op("nn.attention", s.input((1, 1, 3, 4)), s.input((1, 1, 5, 4)), s.input((1, 1, 5, 2)),
                                                                 s.param(np.array([[[[1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1]]]], bool))),
    "nn.attention/causal-additive-mask": lambda s: s.op("nn.attention", s.input((2, 5, 8)), s.input((2, 5, 8)), s.input((2, 5, 8)),
                                                        s.input((1, 5, 5)), causal=True),
    "nn.softmax": lambda s: s.op("nn.softmax", s.input((2, 3, 5)), axis=1),
    "nn.log_softmax": lambda s: s.op("nn.log_softmax", s.input((2, 3, 5))),
}


def _reduce(op: str, dtype: str = "float32", shape=(2, 3, 4), **attrs) -> Case:
    return lambda s: s.op(op, s.input(shape, dtype, **({"low": 0.1, "high": 2.0} if op == "reduce.prod" else {})), **attrs)


REDUCE_LINALG: dict[str, Case] = {
    "reduce.sum": _reduce("reduce.sum"),
    "reduce.sum/axes-no-keepdims": _reduce("reduce.sum", axes=(0, -1), keepdims=False),
    "reduce.sum/int32": _reduce("reduce.sum", "int32", axes=(1,)),
    "reduce.sum/0-d": _reduce("reduce.sum", shape=()),
    "reduce.mean": _reduce("reduce.mean", axes=(-1,)),
    "reduce.mean/int32-truncates": _reduce("reduce.mean", "int32", axes=(2,), keepdims=False),
    "reduce.max": _reduce("reduce.max", axes=(1,), keepdims=False),
    "reduce.min/int32": _reduce("reduce.min", "int32"),
    "reduce.prod": _reduce("reduce.prod", axes=(2,)),
    "reduce.sum_square": _reduce("reduce.sum_square", axes=(0, 2)),
    "reduce.l1": _reduce("reduce.l1", axes=(1,), keepdims=False),
    "reduce.l2": _reduce("reduce.l2", axes=(-1,)),
    "reduce.log_sum_exp": lambda s: s.op("reduce.log_sum_exp", s.input((2, 3, 4), low=-20, high=20), axes=(1,)),
    "reduce.argmax/ties-take-first": _reduce("reduce.argmax", "int32", axis=1, keepdims=False),
    "reduce.argmax": _reduce("reduce.argmax", axis=-1),
    "reduce.argmin/ties-take-first": _reduce("reduce.argmin", "int32", axis=2),
    "linalg.matmul": lambda s: s.op("linalg.matmul", s.input((3, 4)), s.input((4, 5))),
    "linalg.matmul/batch-broadcast": lambda s: s.op("linalg.matmul", s.input((2, 1, 3, 4)), s.input((5, 4, 2))),
    "linalg.matmul/vector-matrix": lambda s: s.op("linalg.matmul", s.input((4,)), s.input((2, 4, 3))),
    "linalg.matmul/matrix-vector": lambda s: s.op("linalg.matmul", s.input((3, 4)), s.input((4,))),
    "linalg.matmul/vector-vector": lambda s: s.op("linalg.matmul", s.input((4,)), s.input((4,))),
    "linalg.matmul/int32": lambda s: s.op("linalg.matmul", s.input((3, 4), "int32"), s.input((4, 2), "int32")),
    # quant.* (bit-exact integer semantics; tests/quant covers them in depth)
    "quant.quantize/uint8-zero-point": lambda s: s.op("quant.quantize", s.input((2, 5)), s.param(np.float32(0.02)),
                                                      s.param(np.uint8(128)), dtype="uint8"),
    "quant.dequantize/per-channel": lambda s: s.op("quant.dequantize", s.input((2, 3, 4), "int8", low=-128, high=128),
                                                   s.param(np.array([0.1, 0.2, 0.3], np.float32)), axis=1),
    "quant.requantize": lambda s: s.op("quant.requantize", s.input((2, 3), "int32", low=-40000, high=40000),
                                       s.param(np.int32(1 << 30)), s.param(np.int32(38)), zero_point=5),
    "quant.conv/zero-point-padding": lambda s: s.op("quant.conv", s.input((1, 2, 5, 5), "uint8", low=0, high=256),
                                                    s.param(np.arange(-36, 36).reshape(4, 2, 3, 3).astype(np.int8)),
                                                    x_zero_point=100, pads=(1, 1, 1, 1)),
    "quant.linear": lambda s: s.op("quant.linear", s.input((3, 8), "int8", low=-128, high=128),
                                   s.param(np.arange(-16, 16).reshape(8, 4).astype(np.int8)),
                                   s.param(np.arange(4, dtype=np.int32)), x_zero_point=-3),
    "quant.matmul/zero-points": lambda s: s.op("quant.matmul", s.input((2, 3, 8), "uint8", low=0, high=256),
                                               s.input((2, 8, 4), "int8", low=-128, high=128), a_zero_point=128, b_zero_point=-2),
    "quant.dynamic_quantize": lambda s: s.ops("quant.dynamic_quantize", s.input((3, 7))),
    "quant.weight_matmul/int4": lambda s: s.op("quant.weight_matmul", s.input((2, 8)),
                                               s.param(np.arange(32).reshape(4, 8).astype(np.uint8) * 7),
                                               s.param(np.full((2, 8), 0.1, np.float32)), bits=4, group_size=4),
}


def _direct_outputs(s: Scope) -> list[Value]:
    """Graph outputs that are an input, a param and the same value twice: no node in between."""
    x = s.input((2, 3))
    return [x, s.param(np.arange(4, dtype=np.int64)), x, s.op("math.neg", x)]


PLUMBING: dict[str, Case] = {"graph/outputs-that-are-inputs-or-params": _direct_outputs}

SUITES: dict[str, dict[str, Case]] = {
    "elementwise": ELEMENTWISE,
    "tensor": TENSOR,
    "nn": NN,
    "reduce_linalg": {**REDUCE_LINALG, **PLUMBING},
}
ALL_CASES = [(suite, case_id) for suite, cases in SUITES.items() for case_id in cases]


@lru_cache(maxsize=None)
def suite(name: str) -> Suite:
    return Suite.build(name, SUITES[name], seed=sorted(SUITES).index(name))


# ---- tests ------------------------------------------------------------------------------------------------

def test_lowering_table_covers_the_registry() -> None:
    assert missing_lowerings() == []
    assert set(LOWERINGS) == set(all_ops()), sorted(set(LOWERINGS) ^ set(all_ops()))


def test_cases_exercise_every_registry_op() -> None:
    exercised = {node.op for name in SUITES for node in suite(name).graph.nodes}
    assert sorted(set(all_ops()) - exercised) == []


@pytest.fixture(scope="module")
def results(compile_once) -> Callable[[str], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(compiled outputs, reference outputs) of a suite, compiling each suite once."""
    computed: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}

    def get(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if name not in computed:
            built = suite(name)
            model = compile_once(f"ops-{name}", lambda: built.graph)
            with np.errstate(all="ignore"):  # the references divide by zero on purpose (mod by 0)
                reference = interpret(built.graph, built.feeds)
            computed[name] = (model.run(built.feeds), reference)
        return computed[name]

    return get


@pytest.mark.parametrize(("suite_name", "case_id"), ALL_CASES, ids=[case_id for _, case_id in ALL_CASES])
def test_op_matches_reference(results, suite_name: str, case_id: str) -> None:
    actual, expected = results(suite_name)
    for name in suite(suite_name).case_outputs[case_id]:
        assert_matches_reference(actual[name], expected[name], f"{case_id} output {name}")


def test_int_mod_by_zero_gives_zero_like_numpy(results) -> None:
    """A zero integer divisor must not trap the process; NumPy's answer there is 0."""
    actual, _ = results("elementwise")
    built = suite("elementwise")
    divisor = built.feeds[built.case_inputs["math.mod/int32"][1]]
    assert (divisor == 0).any(), "the case should divide by zero somewhere"
    out = actual[built.case_outputs["math.mod/int32"][0]]
    assert (out[np.broadcast_to(divisor == 0, out.shape)] == 0).all()


def test_avg_pool_including_pad_when_ceil_drops_a_window(compile_once) -> None:
    graph = Graph("avg_pool_ceil_include_pad")
    x = graph.add_input("x", TensorType((1, 1, 5), "float32"))
    graph.outputs = [graph.op("nn.avg_pool", x, kernel=(2,), strides=(2,), pads=(1, 1), ceil_mode=True, count_include_pad=True)]
    feeds = {"x": np.arange(5, dtype=np.float32).reshape(1, 1, 5)}
    actual = compile_once("avg_pool_ceil_include_pad", lambda: graph).run(feeds)
    # PyTorch: windows [pad, 0], [1, 2], [3, 4] each divided by 2
    np.testing.assert_allclose(actual[graph.outputs[0].name], [[[0.0, 1.5, 3.5]]])
    expected = interpret(graph, feeds)
    assert_matches_reference(actual[graph.outputs[0].name], expected[graph.outputs[0].name], "avg_pool")


# ---- the Relax module itself --------------------------------------------------------------------------


def _small_graph() -> Graph:
    graph = Graph("small")
    x = graph.add_input("x", TensorType((2, 3), "float32"))
    w = graph.add_param("w", np.ones((3, 4), np.float32))
    y = graph.op("linalg.matmul", x, w, name="mm")
    graph.outputs = [graph.op("math.relu", y, name="act"), w]
    return graph


def test_main_takes_inputs_then_params_and_returns_a_tuple() -> None:
    module = lower_graph(_small_graph())
    main = module["main"]
    assert [param.name for param in main.params] == ["x", "w"]
    assert int(main.attrs["num_input"]) == 1
    assert isinstance(main.ret_ty, TupleType) and len(main.ret_ty.fields) == 2
    assert len(module.functions) == 1, "lowering emits Relax only; TIR appears when the target legalizes"


def test_symbolic_dims_become_shape_variables() -> None:
    graph = Graph("dynamic")
    x = graph.add_input("x", TensorType(("batch", 3), "float32"))
    w = graph.add_param("w", np.ones((3, 2), np.float32))
    y = graph.op("tensor.reshape", graph.op("linalg.matmul", x, w), shape=("batch", 2, 1))
    graph.outputs = [y]
    text = lower_graph(graph).script()
    assert "batch" in text and "R.reshape" in text


def test_missing_lowering_names_op_and_node(monkeypatch) -> None:
    monkeypatch.delitem(LOWERINGS, "math.relu")
    with pytest.raises(LoweringError, match=r"math\.relu.*act"):
        lower_graph(_small_graph())


def test_wrong_lowering_is_caught_by_the_type_check(monkeypatch) -> None:
    monkeypatch.setitem(LOWERINGS, "math.relu", lambda ctx, node, args: relax.op.astype(args[0], "float16"))
    with pytest.raises(LoweringError, match=r"node act .*float16.*bug in the lowering table"):
        lower_graph(_small_graph())


def test_tvm_errors_become_lowering_errors_naming_the_node(monkeypatch) -> None:
    monkeypatch.setitem(LOWERINGS, "math.relu", lambda ctx, node, args: relax.op.permute_dims(args[0], [0, 1, 2]))
    with pytest.raises(LoweringError, match=r"node act \(math\.relu\) could not be lowered"):
        lower_graph(_small_graph())
