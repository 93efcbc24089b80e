"""Recognize decomposed forms exporters produce and replace them with single registry ops.

Exporters write layer norm, RMS norm, GELU, SiLU, hard-swish, softmax and attention out of
elementwise ops, reductions and matmuls; the backend lowers the single ops better. The pass
``recognize`` runs ``RECOGNITION_RULES`` to a fixed point. GELU as ONNX exports it, before::

    %d: float32[2,8] = math.div(%x, %sqrt2) @div
    %e: float32[2,8] = math.erf(%d) @erf
    %a: float32[2,8] = math.add(%e, %one) @add
    %m: float32[2,8] = math.mul(%x, %a) @mul
    %y: float32[2,8] = math.mul(%m, %half) @mul_1

after::

    %y: float32[2,8] = math.gelu(%x) @mul_1_0

Attention (``softmax(q @ k^T * scale + mask) @ v``, with the reshapes torch puts around batched
matmuls and the head transposes exporters write) becomes ``nn.attention(q, k, v, mask)``; a
constant lower-triangular mask becomes ``causal=True`` (the attention matcher lives in
``passes/attention.py``). Where an exporter zeroes the queries whose keys are all masked, that
guard stays, computed from the mask instead of the scores. Norms are recognized in two steps: the
normalization itself becomes ``nn.layer_norm(x, ones)`` (or ``nn.rms_norm``), then a constant
per-feature multiply and add after a norm fold into its scale and bias. Every rule checks that
the replacement computes the same thing (axes, keepdims, scalar constants, shapes) and otherwise
returns a ``Mismatch`` whose reason ``--explain`` shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..ir.graph import Value
from ..ir.ops.reduce import reduced_axes
from ..ir.types import FLOAT_DTYPES
from .pipeline import register_pass
from .attention import ATTENTION_RULES
from .rewrite import Any, Const, Match, Mismatch, OneOf, Op, Param, Pattern, RewriteContext, RewritePass, Rule, RuleSet

Replacement = Value | Mismatch


# ---- pattern helpers ------------------------------------------------------------------------------------

def near(number: float) -> Param:
    """A float constant whose every element is ``number`` up to the rounding of its dtype."""

    def close(array: np.ndarray) -> bool:
        if array.size == 0 or array.dtype.name not in FLOAT_DTYPES:
            return False
        tolerance = max(8 * float(np.finfo(array.dtype).eps), 1e-6) * abs(number)
        return bool(np.all(np.abs(array.astype(np.float64) - number) <= tolerance))

    return Param(None, close, why=f"not a constant {number:.7g}")


def _is_epsilon(array: np.ndarray) -> bool:
    return array.size == 1 and array.dtype.name in FLOAT_DTYPES and 0.0 <= float(array.reshape(())) < 1.0


def _close_to(number: float):
    return lambda value: value is not None and abs(float(value) - number) <= 1e-6 * abs(number)


X = Any("x")
HALF, ONE = near(0.5), near(1.0)
EPSILON = Param("epsilon", _is_epsilon, why="epsilon is not a scalar in [0, 1)")
SQRT_2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
KEEPDIMS = {"keepdims": True}


def _same_shape(m: Match, x: Value) -> Mismatch | None:
    """A replacement computed from ``x`` has the root's type only if nothing broadcast ``x``."""
    if x.dtype not in FLOAT_DTYPES:
        return Mismatch(f"x is {x.dtype}, not a float")
    if m.root.outputs[0].type != x.type:
        return Mismatch("a constant broadcasts x to a bigger shape")
    return None


def _trailing_axis(x: Value, axes: tuple[int, ...] | None) -> int | Mismatch:
    """The first axis of a reduction over trailing axes [axis, rank), as a negative number."""
    normalized = reduced_axes(x.type.rank, axes)
    if not normalized or list(normalized) != list(range(normalized[0], x.type.rank)):
        return Mismatch(f"the mean is over axes {normalized}, not the trailing axes of a rank-{x.type.rank} tensor")
    return normalized[0] - x.type.rank


def _per_feature(array: np.ndarray, x: Value, axis: int) -> np.ndarray | Mismatch:
    """``array`` as a (normalized shape) constant, if it varies only along the normalized axes."""
    normalized = tuple(x.shape[axis:])
    count = len(normalized)
    if array.ndim > x.type.rank or any(dim != 1 for dim in array.shape[: max(array.ndim - count, 0)]):
        return Mismatch(f"a {array.shape} constant varies along axes the norm does not normalize")
    trailing = array.reshape(array.shape[max(array.ndim - count, 0):])
    try:
        return np.broadcast_to(trailing, normalized).astype(np.float64)
    except ValueError:
        return Mismatch(f"a {array.shape} constant does not broadcast to the normalized shape {normalized}")


# ---- layer norm and RMS norm --------------------------------------------------------------------------------

def _centered(name: str) -> Op:
    """x - mean(x)"""
    return Op("math.sub", X, Op("reduce.mean", X, attrs=KEEPDIMS, name="mean"), name=name)


def _square(make_base) -> OneOf:
    """base ** 2 or base * base"""
    return OneOf(Op("math.pow", make_base(), near(2.0), name="square"),
                 Op("math.mul", make_base(), make_base(), name="square"))


def _over_root(numerator: Pattern, radicand: Op) -> dict[str, OneOf]:
    """numerator / sqrt(radicand) in the forms exporters write, keyed by the op at the root."""
    root = Op("math.sqrt", radicand, name="root")
    return {
        "math.div": OneOf(Op("math.div", numerator, root)),
        "math.mul": OneOf(Op("math.mul", numerator, Op("math.rsqrt", radicand, name="inverse_root")),
                          Op("math.mul", numerator, Op("math.reciprocal", root, name="inverse_root")),
                          Op("math.mul", numerator, Op("math.div", ONE, root, name="inverse_root"))),
    }


def _variance_plus_epsilon(make_base) -> Op:
    return Op("math.add", Op("reduce.mean", _square(make_base), attrs=KEEPDIMS, name="variance"), EPSILON,
              name="variance_plus_epsilon")


# (x - mean) / sqrt(var + eps), the numerator optionally times gamma first (torch's manual form)
LAYER_NORM_FORMS = _over_root(
    OneOf(_centered("centered"), Op("math.mul", _centered("centered"), Param("gamma"), name="scaled")),
    _variance_plus_epsilon(lambda: _centered("centered_for_variance")),
)
# x / sqrt(mean(x^2) + eps)
RMS_NORM_FORMS = _over_root(X, _variance_plus_epsilon(lambda: X))


def _norm_epsilon_axis(m: Match, x: Value, mean_nodes: Sequence[str]) -> tuple[float, int] | Mismatch:
    axes = {reduced_axes(x.type.rank, m.attr(name, "axes")) for name in mean_nodes}
    if len(axes) != 1:
        return Mismatch(f"the means reduce different axes: {sorted(axes)}")
    axis = _trailing_axis(x, axes.pop())
    if isinstance(axis, Mismatch):
        return axis
    if m["variance_plus_epsilon"].type != m["variance"].type:
        return Mismatch("epsilon broadcasts the variance to another shape")
    return float(m.array("epsilon").reshape(())), axis


def layer_norm(ctx: RewriteContext, m: Match) -> Replacement:
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [with gamma] -> nn.layer_norm(x, gamma or ones)."""
    x = m["x"]
    refused = _same_shape(m, x)
    if refused is not None:
        return refused
    found = _norm_epsilon_axis(m, x, ("mean", "variance"))
    if isinstance(found, Mismatch):
        return found
    epsilon, axis = found
    scale, name = np.ones(x.shape[axis:], np.float64), "layer_norm.scale"
    if "gamma" in m:
        gamma = _per_feature(m.array("gamma"), x, axis)
        if isinstance(gamma, Mismatch):
            return gamma
        scale, name = gamma, m["gamma"].name
    scale_value = ctx.const(scale.astype(x.dtype), name=name)
    return ctx.op("nn.layer_norm", x, scale_value, axis=axis, epsilon=epsilon)


def rms_norm(ctx: RewriteContext, m: Match) -> Replacement:
    """x / sqrt(mean(x^2) + eps) -> nn.rms_norm(x, ones)."""
    x = m["x"]
    refused = _same_shape(m, x)
    if refused is not None:
        return refused
    found = _norm_epsilon_axis(m, x, ("variance",))
    if isinstance(found, Mismatch):
        return found
    epsilon, axis = found
    scale_value = ctx.const(np.ones(x.shape[axis:], x.dtype), name="rms_norm.scale")
    return ctx.op("nn.rms_norm", x, scale_value, axis=axis, epsilon=epsilon)


NORM = OneOf(Op("nn.layer_norm", any_inputs=True, name="norm"), Op("nn.rms_norm", any_inputs=True, name="norm"))


def fold_norm_scale(ctx: RewriteContext, m: Match) -> Replacement:
    """norm(x, scale[, bias]) * gamma -> norm(x, scale * gamma[, bias * gamma]) for a per-feature gamma."""
    norm = m.node("norm")
    x = norm.inputs[0]
    if m.root.outputs[0].type != norm.outputs[0].type:
        return Mismatch("the multiplier broadcasts the norm to another shape")
    axis = norm.attrs["axis"] % x.type.rank - x.type.rank
    gamma = _per_feature(m.array("gamma"), x, axis)
    if isinstance(gamma, Mismatch):
        return gamma
    arrays = [ctx.graph.params.get(value) for value in norm.inputs[1:]]
    if any(array is None for array in arrays):
        return Mismatch("the scale or bias of the norm is computed, not a constant")
    names = [m["gamma"].name, norm.inputs[2].name if len(norm.inputs) == 3 else ""]
    folded = [ctx.const((array.astype(np.float64) * gamma).astype(x.dtype), name=name) for array, name in zip(arrays, names)]
    return ctx.op(norm.op, x, *folded, **norm.attrs)


def fold_norm_bias(ctx: RewriteContext, m: Match) -> Replacement:
    """layer_norm(x, scale[, bias]) + beta -> layer_norm(x, scale, bias + beta) for a per-feature beta."""
    norm = m.node("norm")
    x = norm.inputs[0]
    if m.root.outputs[0].type != norm.outputs[0].type:
        return Mismatch("the addend broadcasts the norm to another shape")
    axis = norm.attrs["axis"] % x.type.rank - x.type.rank
    beta = _per_feature(m.array("beta"), x, axis)
    if isinstance(beta, Mismatch):
        return beta
    bias = ctx.graph.params.get(norm.inputs[2]) if len(norm.inputs) == 3 else np.zeros(x.shape[axis:])
    if bias is None:
        return Mismatch("the bias of the norm is computed, not a constant")
    folded = ctx.const((bias.astype(np.float64) + beta).astype(x.dtype), name=m["beta"].name)
    return ctx.op("nn.layer_norm", x, norm.inputs[1], folded, **norm.attrs)


NORM_RULES = RuleSet([
    Rule("layer_norm", LAYER_NORM_FORMS["math.div"], layer_norm),
    Rule("layer_norm_rsqrt", LAYER_NORM_FORMS["math.mul"], layer_norm),
    Rule("rms_norm", RMS_NORM_FORMS["math.div"], rms_norm),
    Rule("rms_norm_rsqrt", RMS_NORM_FORMS["math.mul"], rms_norm),
    Rule("fold_norm_scale", Op("math.mul", NORM, Param("gamma")), fold_norm_scale),
    Rule("fold_norm_bias", Op("math.add", Op("nn.layer_norm", any_inputs=True, name="norm"), Param("beta")),
          fold_norm_bias),
])


# ---- activations --------------------------------------------------------------------------------------------

def _half_x_times(core: Op) -> OneOf:
    """0.5 * x * (1 + core) in the groupings exporters write, including x * (0.5 + 0.5 * core)."""
    one_plus = Op("math.add", core, ONE, name="one_plus")
    return OneOf(
        Op("math.mul", Op("math.mul", X, one_plus, name="x_times"), HALF),
        Op("math.mul", Op("math.mul", X, HALF, name="half_x"), one_plus),
        Op("math.mul", X, Op("math.mul", one_plus, HALF, name="half_sum")),
        Op("math.mul", X, Op("math.add", Op("math.mul", core, HALF, name="half_core"), HALF, name="half_sum")),
    )


# erf(x / sqrt(2)), also written erf(x * 0.7071)
ERF = Op("math.erf", OneOf(Op("math.div", X, near(SQRT_2), name="erf_argument"),
                           Op("math.mul", X, near(1.0 / SQRT_2), name="erf_argument")), name="erf")
# x^3 as pow(x, 3) or x * x * x
CUBE = OneOf(Op("math.pow", X, near(3.0), name="cube"),
             Op("math.mul", X, Op("math.mul", X, X, name="square"), name="cube"))
# tanh(sqrt(2/pi) * (x + 0.044715 x^3)), the cubic also written x * (1 + 0.044715 x^2)
TANH = Op("math.tanh", Op("math.mul", OneOf(
    Op("math.add", X, Op("math.mul", CUBE, near(0.044715), name="cubic"), name="polynomial"),
    Op("math.mul", X, Op("math.add", Op("math.mul", Op("math.mul", X, X, name="square"), near(0.044715), name="cubic"),
                         ONE, name="quadratic"), name="polynomial"),
), near(SQRT_2_OVER_PI), name="tanh_argument"), name="tanh")


def _unary(op: str, **attrs: object):
    def rewrite(ctx: RewriteContext, m: Match) -> Replacement:
        refused = _same_shape(m, m["x"])
        return refused if refused is not None else ctx.op(op, m["x"], **attrs)

    rewrite.__doc__ = f"-> {op}(x{''.join(f', {key}={value!r}' for key, value in attrs.items())})"
    return rewrite


# relu6(x + 3): clip(x + 3, 0, 6), as one clip, two clips in either order, or maximum then minimum
SHIFTED = Op("math.add", X, near(3.0), name="shifted")
RELU6 = OneOf(
    Op("math.clip", SHIFTED, attrs={"min": 0.0, "max": 6.0}, name="relu6"),
    Op("math.clip", Op("math.clip", SHIFTED, attrs={"min": 0.0, "max": None}, name="relu"),
       attrs={"min": None, "max": 6.0}, name="relu6"),
    Op("math.clip", Op("math.clip", SHIFTED, attrs={"min": None, "max": 6.0}, name="relu"),
       attrs={"min": 0.0, "max": None}, name="relu6"),
    Op("math.minimum", Op("math.maximum", SHIFTED, Const(None, 0.0), name="relu"), near(6.0), name="relu6"),
)
HARD_SIGMOID_ATTRS = {"alpha": _close_to(1.0 / 6.0), "beta": _close_to(0.5)}

ACTIVATION_RULES = RuleSet([
    Rule("gelu_erf", _half_x_times(ERF), _unary("math.gelu", approximate="none")),
    Rule("gelu_tanh", _half_x_times(TANH), _unary("math.gelu", approximate="tanh")),
    Rule("silu", Op("math.mul", X, Op("math.sigmoid", X, name="sigmoid")), _unary("math.silu")),
    Rule("silu_exp", Op("math.div", X, Op("math.add", Op("math.exp", Op("math.neg", X, name="negated"), name="exp"),
                                          ONE, name="denominator")), _unary("math.silu")),
    Rule("hard_sigmoid", Op("math.div", RELU6, near(6.0)), _unary("math.hard_sigmoid", alpha=1.0 / 6.0, beta=0.5)),
    Rule("hard_sigmoid_mul", Op("math.mul", RELU6, near(1.0 / 6.0)),
          _unary("math.hard_sigmoid", alpha=1.0 / 6.0, beta=0.5)),
    Rule("hard_swish", Op("math.div", Op("math.mul", X, RELU6, name="x_times"), near(6.0)), _unary("math.hard_swish")),
    Rule("hard_swish_mul", OneOf(
        Op("math.mul", Op("math.mul", X, RELU6, name="x_times"), near(1.0 / 6.0)),
        Op("math.mul", X, Op("math.div", RELU6, near(6.0), name="hard_sigmoid")),
        Op("math.mul", X, Op("math.mul", RELU6, near(1.0 / 6.0), name="hard_sigmoid")),
        Op("math.mul", X, Op("math.hard_sigmoid", X, attrs=HARD_SIGMOID_ATTRS, name="hard_sigmoid")),
    ), _unary("math.hard_swish")),
])


# ---- softmax ----------------------------------------------------------------------------------------------

# exp(x - max(x)) or exp(x); both occurrences must be the same node
EXP = OneOf(Op("math.exp", Op("math.sub", X, Op("reduce.max", X, attrs=KEEPDIMS, name="max"), name="shifted"), name="exp"),
            Op("math.exp", X, name="exp"))


def softmax(ctx: RewriteContext, m: Match) -> Replacement:
    """exp(x - max(x)) / sum(exp(x - max(x))) over one axis -> nn.softmax(x, axis)."""
    x = m["x"]
    refused = _same_shape(m, x)
    if refused is not None:
        return refused
    axes = reduced_axes(x.type.rank, m.attr("sum", "axes"))
    if len(axes) != 1:
        return Mismatch(f"the sum reduces axes {m.attr('sum', 'axes')}, not one axis")
    if "max" in m.nodes and reduced_axes(x.type.rank, m.attr("max", "axes")) != axes:
        return Mismatch(f"the max reduces axes {m.attr('max', 'axes')}, the sum {m.attr('sum', 'axes')}")
    return ctx.op("nn.softmax", x, axis=axes[0] - x.type.rank)


SOFTMAX_RULES = RuleSet([
    Rule("softmax", Op("math.div", EXP, Op("reduce.sum", EXP, attrs=KEEPDIMS, name="sum")), softmax),
])


# ---- the pass -----------------------------------------------------------------------------------------------

# the norms first: the RMS norm pattern also matches a layer norm, with x - mean(x) as its x
RECOGNITION_RULES = NORM_RULES + ACTIVATION_RULES + SOFTMAX_RULES + ATTENTION_RULES


@register_pass("recognize")
def recognize(verify_each: bool = False) -> RewritePass:
    """Replace decomposed norms, activations, softmax and attention with single ops.

    Before (an ONNX export of ``nn.LayerNorm`` at opset 13)::

        %mean: float32[2,8] = reduce.mean(%x) {axes=(1,)} @mean
        %c: float32[2,8] = math.sub(%x, %mean) @sub
        %sq: float32[2,8] = math.pow(%c, %two) @pow
        %var: float32[2,1] = reduce.mean(%sq) {axes=(1,)} @var
        %ve: float32[2,1] = math.add(%var, %eps) @add
        %sd: float32[2,1] = math.sqrt(%ve) @sqrt
        %n: float32[2,8] = math.div(%c, %sd) @div
        %s: float32[2,8] = math.mul(%n, %gamma) @mul
        %y: float32[2,8] = math.add(%s, %beta) @add_1

    after::

        %y: float32[2,8] = nn.layer_norm(%x, %gamma_1, %beta_3) {epsilon=9.999999747378752e-06} @add_1_4

    and likewise RMS norm, GELU (erf and tanh forms), SiLU, hard-sigmoid, hard-swish, softmax
    and attention with scales, masks, causal masks and the reshapes and transposes around it.
    """
    return RewritePass("recognize", RECOGNITION_RULES, verify_each=verify_each)


__all__ = ["ACTIVATION_RULES", "ATTENTION_RULES", "NORM_RULES", "RECOGNITION_RULES", "SOFTMAX_RULES", "OneOf",
           "match_attention", "near", "recognize"]
