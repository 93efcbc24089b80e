"""Fusion passes: fold batch norm, pads and scale/bias chains into convs and matmuls; epilogues.

Every fusion is a rewrite rule (``passes/rewrite.py``): a pattern rooted at one op and a short
function that builds the fused node or returns ``Mismatch(reason)``, which ``--explain`` shows.
Four passes group the rules:

- ``fold_batch_norm``: inference batch norm after a conv, transposed conv, linear or matmul with a
  constant weight; and before a conv (without padding), linear or matmul.
- ``fold_scale_bias``: a per-channel (or scalar) constant multiply, divide, add or subtract after
  one of those layers.
- ``fold_pads``: an explicit ``tensor.pad`` before a conv or a pool, into the op's own pads.
- ``fuse_epilogues``: a matmul with a constant 2-d weight becomes ``nn.linear``; a per-channel bias
  add and an activation (``nn.ACTIVATIONS``) after a conv or linear become part of it.

``FUSION_RULES`` holds all the rules once each, for presets that run the fusions together.
Folding arithmetic runs in float64 and is cast back to the weight's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any as AnyType
from typing import Union

import numpy as np

from ..errors import ShapeError
from ..ir.graph import Node, Value
from ..ir.ops import registry
from ..ir.ops.nn import ACTIVATIONS
from ..ir.types import FLOAT_DTYPES, TensorType
from .pipeline import register_pass
from .rewrite import Any, Match, Mismatch, Op, Param, Pattern, RewriteContext, RewritePass, Rule, RuleSet

Folded = Union[Value, Mismatch]  # what a rule's rewrite function returns


class OptionalBias(Op):
    """An ``Op`` pattern for a layer whose last input, the bias, may be absent (conv, linear).

    The engine's ``Op`` matches a fixed input count; a layer without a bias matches the pattern
    with its last input pattern left out (the capture is then missing: test ``"b" in m``).
    """

    def __init__(self, op: str, *inputs: Pattern, attrs: dict[str, AnyType] | None = None, name: str | None = None) -> None:
        super().__init__(op, *inputs, attrs=attrs, name=name)
        self.without_bias = Op(op, *inputs[:-1], attrs=attrs, name=name)

    def match_node(self, node: Node, value: Value, m: Match) -> Match | Mismatch:
        if self.inputs is not None and len(node.inputs) == len(self.inputs) - 1:
            return self.without_bias.match_node(node, value, m)
        return super().match_node(node, value, m)


# ---- layers whose output channels take a per-channel affine map -------------------------------------------

def _scale_conv_weight(weight: np.ndarray, scale: np.ndarray, attrs: dict[str, AnyType]) -> np.ndarray:
    # (M, C/groups, *K): output channels lead
    return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))


def _scale_conv_transpose_weight(weight: np.ndarray, scale: np.ndarray, attrs: dict[str, AnyType]) -> np.ndarray:
    # (C, M/groups, *K): output channel g * M/groups + j reads weight[group g's input rows, j]
    groups = attrs["groups"]
    kernel = weight.shape[2:]
    blocks = weight.reshape((groups, weight.shape[0] // groups, weight.shape[1]) + kernel)
    per_output = scale.reshape((groups, 1, weight.shape[1]) + (1,) * len(kernel))
    return (blocks * per_output).reshape(weight.shape)


def _scale_matrix_columns(weight: np.ndarray, scale: np.ndarray, attrs: dict[str, AnyType]) -> np.ndarray:
    # (K, N): output channels are the columns
    return weight * scale


@dataclass(frozen=True)
class LayerKind:
    """A layer an affine map ``y * scale + shift`` per output channel can fold into."""

    op: str
    short: str  # in rule names
    fused_op: str  # what the folded layer is: a matmul with a constant weight becomes nn.linear
    channels_first: bool  # output channels on axis 1 (convs) or on the last axis (linear, matmul)
    scale_weight: Callable[[np.ndarray, np.ndarray, dict[str, AnyType]], np.ndarray]

    @property
    def fused_short(self) -> str:
        return self.fused_op.split(".")[-1]

    def channel_axis(self, rank: int) -> int:
        return 1 if self.channels_first else rank - 1

    def pattern(self, x: Pattern, constant_weight: bool = True, activated: bool = False) -> Op:
        """The layer reading ``x``, captured as ``layer`` with weight ``w`` and bias ``b``.

        Unless ``activated``, a layer with a fused activation does not match: what follows it
        sees the activation's output, not the layer's.
        """
        if self.op == "linalg.matmul":
            return Op(self.op, x, Param("w", lambda a: a.ndim == 2, why="the weight is not a 2-d matrix"), name="layer")
        plain = not activated and "activation" in registry.get(self.op).attrs
        return OptionalBias(self.op, x, Param("w") if constant_weight else Any("w"), Param("b"),
                            attrs={"activation": "none"} if plain else {}, name="layer")


CONV = LayerKind("nn.conv", "conv", "nn.conv", True, _scale_conv_weight)
CONV_TRANSPOSE = LayerKind("nn.conv_transpose", "conv_transpose", "nn.conv_transpose", True, _scale_conv_transpose_weight)
LINEAR = LayerKind("nn.linear", "linear", "nn.linear", False, _scale_matrix_columns)
MATMUL = LayerKind("linalg.matmul", "matmul", "nn.linear", False, _scale_matrix_columns)
LAYERS = (CONV, CONV_TRANSPOSE, LINEAR, MATMUL)


def _check_float(value: Value) -> Mismatch | None:
    # reasons name no node or value, so --explain counts each kind of refusal once
    if value.dtype not in FLOAT_DTYPES:
        return Mismatch(f"folding needs float weights, the layer computes in {value.dtype}")
    return None


def _param_name(base: str, suffix: str = "_fused") -> str:
    """A name for a folded constant that does not grow a suffix per fold in a chain."""
    return base if base.endswith(suffix) else base + suffix


def fold_affine(ctx: RewriteContext, m: Match, kind: LayerKind, scale: np.ndarray | None, shift: np.ndarray | None) -> Folded:
    """The layer captured in ``m`` with ``y * scale + shift`` (per output channel) folded in.

    ``scale`` None leaves the weight as it is (it may then be computed at run time).
    """
    layer = m.node("layer")
    dtype = m["layer"].dtype
    if refused := _check_float(m["layer"]):
        return refused
    new_weight = None
    if scale is not None:
        new_weight = kind.scale_weight(m.array("w").astype(np.float64), scale, layer.attrs).astype(dtype)
    bias = m.array("b").astype(np.float64) if "b" in m else None
    if bias is not None or (shift is not None and shift.any()):
        channels = (scale if scale is not None else shift).shape[0]  # type: ignore[union-attr]
        bias = np.zeros(channels) if bias is None else bias
        bias = bias * (scale if scale is not None else 1.0) + (shift if shift is not None else 0.0)
    # params are created only now: one made before a refusal would stay in the graph
    weight = m["w"] if new_weight is None else ctx.const(new_weight, name=_param_name(m["w"].name))
    inputs = [m["x"], weight]
    if bias is not None:
        inputs.append(ctx.const(bias.astype(dtype), name=_param_name(m["b"].name) if "b" in m else f"{layer.name}_bias"))
    attrs = dict(layer.attrs) if kind.fused_op == kind.op else {}
    return ctx.op(kind.fused_op, *inputs, name=layer.name, **attrs)


def per_channel(array: np.ndarray, out_type: TensorType, axis: int) -> np.ndarray | Mismatch:
    """``array`` as one number per channel of ``axis`` of the output it is broadcast against; or why not."""
    shape = tuple(out_type.shape)
    if array.ndim > len(shape):
        return Mismatch(f"the constant {list(array.shape)} has more dims than the output {list(shape)}")
    try:
        grows = registry.broadcast_shapes(shape, array.shape) != shape
    except ShapeError:
        grows = True
    if grows:
        return Mismatch(f"the constant {list(array.shape)} broadcasts the output {list(shape)} to another shape")
    channels = shape[axis]
    if not isinstance(channels, int):
        return Mismatch(f"the channel count {channels} is symbolic")
    full = array.reshape((1,) * (len(shape) - array.ndim) + array.shape)
    for other in range(len(shape)):
        if other == axis or full.shape[other] == 1:
            continue
        first = np.take(full, [0], axis=other)
        if not np.array_equal(full, np.broadcast_to(first, full.shape)):
            return Mismatch(f"the constant varies along axis {other}, not only along the channel axis {axis}")
        full = first
    return np.broadcast_to(full.reshape(-1).astype(np.float64), (channels,)).copy()


# ---- fold_batch_norm ----------------------------------------------------------------------------------------

def _batch_norm(x: Pattern) -> Op:
    return Op("nn.batch_norm", x, Param("gamma"), Param("beta"), Param("mean"), Param("var"), name="bn")


def batch_norm_affine(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel scale and shift that the captured inference batch norm applies.

    A shift within the dtype's rounding of ``beta - mean * scale`` is returned as exactly zero.
    """
    epsilon = m.node("bn").attrs["epsilon"]
    scale = m.array("gamma").astype(np.float64) / np.sqrt(m.array("var").astype(np.float64) + epsilon)
    beta, centre = m.array("beta").astype(np.float64), m.array("mean").astype(np.float64) * scale
    shift = beta - centre
    rounding = np.finfo(m["bn"].dtype).eps * (np.abs(beta) + np.abs(centre))
    return scale, np.where(np.abs(shift) <= rounding, 0.0, shift)


def _fold_following_batch_norm(kind: LayerKind) -> Callable[[RewriteContext, Match], Folded]:
    def rewrite(ctx: RewriteContext, m: Match) -> Folded:
        rank = m["layer"].type.rank
        if kind.channel_axis(rank) != 1:
            return Mismatch(f"batch norm normalizes axis 1, the layer writes its channels on axis {rank - 1} "
                            f"of a rank-{rank} output")
        scale, shift = batch_norm_affine(m)
        return fold_affine(ctx, m, kind, scale, shift)

    return rewrite


def fold_batch_norm_into_conv(ctx: RewriteContext, m: Match) -> Folded:
    """conv(batch_norm(x)): scale the weight per input channel, push the shift into the bias."""
    conv = m.node("layer")
    if refused := _check_float(m["layer"]):
        return refused
    scale, shift = batch_norm_affine(m)
    if any(conv.attrs["pads"] or ()) and shift.any():
        return Mismatch("the conv pads the normalized input with zeros; folded, the padding would see x = 0 "
                        "instead of the batch norm's output 0 (legal only without padding or with a zero shift)")
    weight = m.array("w").astype(np.float64)
    out_channels, in_per_group = weight.shape[:2]
    per_group = out_channels // conv.attrs["groups"]
    # input channel read by weight[m, c]: group of m times C/groups, plus c
    channel = (np.arange(out_channels) // per_group)[:, None] * in_per_group + np.arange(in_per_group)
    spread = channel.shape + (1,) * (weight.ndim - 2)
    bias = (weight * shift[channel].reshape(spread)).sum(axis=tuple(range(1, weight.ndim)))
    if "b" in m:
        bias = bias + m.array("b")
    dtype = m["layer"].dtype
    new_weight = ctx.const((weight * scale[channel].reshape(spread)).astype(dtype), name=_param_name(m["w"].name))
    new_bias = ctx.const(bias.astype(dtype), name=_param_name(m["b"].name) if "b" in m else f"{conv.name}_bias")
    return ctx.op("nn.conv", m["x"], new_weight, new_bias, name=conv.name, **conv.attrs)


def _fold_batch_norm_into_matrix(kind: LayerKind) -> Callable[[RewriteContext, Match], Folded]:
    def rewrite(ctx: RewriteContext, m: Match) -> Folded:
        """linear(batch_norm(x)) for x (B, K): scale the weight rows, push the shift into the bias."""
        layer = m.node("layer")
        rank = m["x"].type.rank
        if rank != 2:
            return Mismatch(f"batch norm normalizes axis 1, the layer contracts the last axis of a rank-{rank} input")
        if refused := _check_float(m["layer"]):
            return refused
        scale, shift = batch_norm_affine(m)
        weight = m.array("w").astype(np.float64)
        bias = shift @ weight + (m.array("b") if "b" in m else 0.0)
        dtype = m["layer"].dtype
        new_weight = ctx.const((scale[:, None] * weight).astype(dtype), name=_param_name(m["w"].name))
        new_bias = ctx.const(bias.astype(dtype), name=_param_name(m["b"].name) if "b" in m else f"{layer.name}_bias")
        attrs = dict(layer.attrs) if kind.fused_op == kind.op else {}
        return ctx.op(kind.fused_op, m["x"], new_weight, new_bias, name=layer.name, **attrs)

    return rewrite


FOLD_BATCH_NORM = RuleSet(
    [Rule(f"{kind.short}_bn_to_{kind.fused_short}", _batch_norm(kind.pattern(Any("x"))), _fold_following_batch_norm(kind))
     for kind in LAYERS]
    + [Rule("bn_conv_to_conv", CONV.pattern(_batch_norm(Any("x")), activated=True), fold_batch_norm_into_conv)]
    + [Rule(f"bn_{kind.short}_to_linear", kind.pattern(_batch_norm(Any("x")), activated=True),
            _fold_batch_norm_into_matrix(kind))
       for kind in (LINEAR, MATMUL)]
)


# ---- fold_scale_bias ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AffineOp:
    """An elementwise op with a constant right operand, as a per-channel scale and shift."""

    op: str
    short: str
    touches_weight: bool  # mul and div scale the weight, which must then be a constant
    affine: Callable[[np.ndarray], tuple[np.ndarray | None, np.ndarray | None] | Mismatch]


def _reciprocal(vector: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None] | Mismatch:
    if not vector.all():
        return Mismatch("the divisor has zeros")
    return 1.0 / vector, None


AFFINE_OPS = (
    AffineOp("math.mul", "mul", True, lambda vector: (vector, None)),
    AffineOp("math.div", "div", True, _reciprocal),
    AffineOp("math.add", "add", False, lambda vector: (None, vector)),
    AffineOp("math.sub", "sub", False, lambda vector: (None, -vector)),
)


def _fold_constant_operand(kind: LayerKind, affine_op: AffineOp) -> Callable[[RewriteContext, Match], Folded]:
    def rewrite(ctx: RewriteContext, m: Match) -> Folded:
        out = m["layer"].type
        vector = per_channel(m.array("c"), out, kind.channel_axis(out.rank))
        if isinstance(vector, Mismatch):
            return vector
        affine = affine_op.affine(vector)
        if isinstance(affine, Mismatch):
            return affine
        return fold_affine(ctx, m, kind, *affine)

    return rewrite


def _affine_rule(kind: LayerKind, affine_op: AffineOp) -> Rule:
    pattern = Op(affine_op.op, kind.pattern(Any("x"), constant_weight=affine_op.touches_weight), Param("c"))
    return Rule(f"{kind.short}_{affine_op.short}_to_{kind.fused_short}", pattern, _fold_constant_operand(kind, affine_op))


FOLD_SCALE_BIAS = RuleSet([_affine_rule(kind, affine_op) for kind in LAYERS for affine_op in AFFINE_OPS])


# ---- fold_pads ------------------------------------------------------------------------------------------------

def _spatial_pads(m: Match) -> tuple[list[int], list[int]] | Mismatch:
    """The explicit pad's begins and ends on the spatial axes; refuses what an op's pads cannot say."""
    pad = m.node("pad")
    if pad.attrs["mode"] != "constant":
        return Mismatch(f"{pad.attrs['mode']} padding is not constant padding")
    pads = pad.attrs["pads"]
    rank = len(pads) // 2
    if any(width < 0 for width in pads):
        return Mismatch("the pad crops (negative widths)")
    if any(pads[axis] or pads[axis + rank] for axis in (0, 1)):
        return Mismatch("the pad also pads the batch or channel axis")
    return list(pads[2:rank]), list(pads[rank + 2:])


def _merged_pads(node: Node, begins: list[int], ends: list[int]) -> tuple[int, ...]:
    own = node.attrs["pads"] or (0,) * (2 * len(begins))
    spatial = len(begins)
    return tuple([own[a] + begins[a] for a in range(spatial)] + [own[a + spatial] + ends[a] for a in range(spatial)])


def fold_pad_into_conv(ctx: RewriteContext, m: Match) -> Folded:
    pads = _spatial_pads(m)
    if isinstance(pads, Mismatch):
        return pads
    value = m.node("pad").attrs["value"]
    if value != 0.0:
        return Mismatch(f"the pad fills with {value:g}; a conv pads with zeros")
    conv = m.node("layer")
    inputs = [m["x"], m["w"]] + ([m["b"]] if "b" in m else [])
    return ctx.op("nn.conv", *inputs, name=conv.name, **dict(conv.attrs, pads=_merged_pads(conv, *pads)))


def fold_pad_into_avg_pool(ctx: RewriteContext, m: Match) -> Folded:
    pads = _spatial_pads(m)
    if isinstance(pads, Mismatch):
        return pads
    value = m.node("pad").attrs["value"]
    if value != 0.0:
        return Mismatch(f"the pad fills with {value:g}; an average pool counts its pads as zeros")
    pool = m.node("pool")
    if pool.attrs["ceil_mode"]:
        return Mismatch("ceil mode keeps a window that starts in an explicit pad but drops one that starts in the pool's own end pad")
    include = pool.attrs["count_include_pad"]
    if any(pads[0] + pads[1]):
        if any(pool.attrs["pads"] or ()) and not include:
            return Mismatch("the pool leaves its own pads out of the average but counts the explicit pad's zeros; "
                            "one pads attribute cannot say both")
        include = True  # the explicit zeros were averaged in as input
    return ctx.op("nn.avg_pool", m["x"], name=pool.name, **dict(pool.attrs, pads=_merged_pads(pool, *pads), count_include_pad=include))


def _lowest(dtype: str) -> float:
    return float(np.finfo(dtype).min) if dtype in FLOAT_DTYPES else float(np.iinfo(dtype).min)


def fold_pad_into_max_pool(ctx: RewriteContext, m: Match) -> Folded:
    pads = _spatial_pads(m)
    if isinstance(pads, Mismatch):
        return pads
    value = m.node("pad").attrs["value"]
    if value != -np.inf and value != _lowest(m["x"].dtype):
        return Mismatch(f"the pad fills with {value:g}; a max pool pads with -inf (or the dtype's lowest value)")
    pool = m.node("pool")
    if pool.attrs["ceil_mode"]:
        return Mismatch("ceil mode keeps a window that starts in an explicit pad but drops one that starts in the pool's own end pad")
    return ctx.op("nn.max_pool", m["x"], name=pool.name, **dict(pool.attrs, pads=_merged_pads(pool, *pads)))


def _pad(x: Pattern) -> Op:
    return Op("tensor.pad", x, name="pad")


FOLD_PADS = RuleSet([
    Rule("pad_conv_to_conv", OptionalBias("nn.conv", _pad(Any("x")), Any("w"), Any("b"), name="layer"), fold_pad_into_conv),
    Rule("pad_avg_pool_to_avg_pool", Op("nn.avg_pool", _pad(Any("x")), name="pool"), fold_pad_into_avg_pool),
    Rule("pad_max_pool_to_max_pool", Op("nn.max_pool", _pad(Any("x")), name="pool"), fold_pad_into_max_pool),
])


# ---- fuse_epilogues -------------------------------------------------------------------------------------------

def matmul_to_linear(ctx: RewriteContext, m: Match) -> Folded:
    return ctx.op("nn.linear", m["x"], m["w"], name=m.root.name)


def _fuse_activation(activation: str) -> Callable[[RewriteContext, Match], Folded]:
    def rewrite(ctx: RewriteContext, m: Match) -> Folded:
        layer = m.node("layer")
        return ctx.op(layer.op, *layer.inputs, name=layer.name, **dict(layer.attrs, activation=activation))

    return rewrite


def _activation_rules() -> list[Rule]:
    rules = []
    for activation, spec in ACTIVATIONS.items():
        if spec is None:
            continue
        op, attrs = spec
        for kind in (CONV, LINEAR):
            layer = OptionalBias(kind.op, Any("x"), Any("w"), Any("b"), attrs={"activation": "none"}, name="layer")
            rules.append(Rule(f"{kind.short}_{activation}_to_{kind.short}", Op(op, layer, attrs=attrs), _fuse_activation(activation)))
    return rules


def _move_activation_before_reshape(op: str, attrs: dict) -> Callable[[RewriteContext, Match], Folded]:
    def rewrite(ctx: RewriteContext, m: Match) -> Folded:
        layer = m["y"].producer
        if layer is None or layer.op not in (CONV.op, LINEAR.op):
            return Mismatch("the reshape does not follow a conv or linear layer")
        if layer.attrs.get("activation", "none") != "none":
            return Mismatch("the layer already has an activation")
        if len(m["y"].uses) != 1 or any(m["y"] is out for out in ctx.graph.outputs):
            return Mismatch("the layer output has other users")
        return ctx.op("tensor.reshape", ctx.op(op, m["y"], **attrs), shape=m.node("reshape").attrs["shape"])

    return rewrite


def _activation_through_reshape_rules() -> list[Rule]:
    """act(reshape(layer(x))) -> reshape(act(layer(x))): an elementwise op commutes with a reshape.

    torch.export writes a linear over (B, S, D) as reshape -> addmm -> reshape, so the activation
    sits behind a reshape; moving it in front lets the epilogue rules fuse it into the layer.
    """
    rules = []
    for activation, spec in ACTIVATIONS.items():
        if spec is not None:
            op, attrs = spec
            pattern = Op(op, Op("tensor.reshape", Any("y"), name="reshape"), attrs=attrs)
            rules.append(Rule(f"{activation}_before_reshape", pattern, _move_activation_before_reshape(op, attrs)))
    return rules


_ADD = AFFINE_OPS[2]
FUSE_EPILOGUES = RuleSet(
    [Rule("matmul_to_linear", MATMUL.pattern(Any("x")), matmul_to_linear)]
    + [_affine_rule(CONV, _ADD), _affine_rule(LINEAR, _ADD)]
    + _activation_rules()
    + _activation_through_reshape_rules()
)


def combine(*rule_sets: Iterable[Rule]) -> RuleSet:
    """One rule set holding each named rule once, in first-seen order."""
    rules: dict[str, Rule] = {}
    for rule_set in rule_sets:
        for rule in rule_set:
            rules.setdefault(rule.name, rule)
    return RuleSet(rules.values())


# pads first (a folded pad may let a batch norm fold into the conv behind it), epilogues last
FUSION_RULES = combine(FOLD_PADS, FOLD_BATCH_NORM, FOLD_SCALE_BIAS, FUSE_EPILOGUES)


# ---- the passes ---------------------------------------------------------------------------------------------

@register_pass("fold_batch_norm")
def fold_batch_norm(verify_each: bool = False) -> RewritePass:
    """Fold inference batch norm into the conv, transposed conv, linear or matmul beside it.

    Before::

        %c: float32[1,8,16,16] = nn.conv(%x, %w) {pads=(1, 1, 1, 1)} @conv
        %y: float32[1,8,16,16] = nn.batch_norm(%c, %gamma, %beta, %mean, %var) @bn

    after (``w_fused = w * gamma / sqrt(var + eps)`` per output channel, ``conv_bias`` the shift)::

        %y: float32[1,8,16,16] = nn.conv(%x, %w_fused, %conv_bias) {pads=(1, 1, 1, 1)} @conv

    A batch norm before a conv folds into its weights per input channel when the conv does not
    pad (or the shift is zero); linear and matmul outputs fold when they are (N, C).
    """
    return RewritePass("fold_batch_norm", FOLD_BATCH_NORM, verify_each=verify_each)


@register_pass("fold_scale_bias")
def fold_scale_bias(verify_each: bool = False) -> RewritePass:
    """Fold a per-channel constant mul, div, add or sub after a conv, linear or matmul into its weights.

    Before::

        %c: float32[1,8,4,4] = nn.conv(%x, %w) @conv
        %s: float32[1,8,4,4] = math.mul(%c, %scale) @mul     # %scale: float32[1,8,1,1]
        %y: float32[1,8,4,4] = math.add(%s, %shift) @add     # %shift: float32[8,1,1]

    after::

        %y: float32[1,8,4,4] = nn.conv(%x, %w_fused, %conv_bias) @conv

    The constant must not vary along any axis but the output-channel one (axis 1 for convs, the
    last for linear and matmul); a matmul with a constant 2-d weight becomes ``nn.linear``.
    """
    return RewritePass("fold_scale_bias", FOLD_SCALE_BIAS, verify_each=verify_each)


@register_pass("fold_pads")
def fold_pads(verify_each: bool = False) -> RewritePass:
    """Fold an explicit zero (or -inf) ``tensor.pad`` into the pads of the conv or pool it feeds.

    Before::

        %p: float32[1,3,10,10] = tensor.pad(%x) {pads=(0, 0, 1, 1, 0, 0, 1, 1)} @pad
        %y: float32[1,8,8,8] = nn.conv(%p, %w) @conv

    after::

        %y: float32[1,8,8,8] = nn.conv(%x, %w) {pads=(1, 1, 1, 1)} @conv

    An average pool takes the zeros with ``count_include_pad=True``; a max pool takes a pad of
    -inf (or the dtype's lowest value). Ceil-mode pools and pads of the batch or channel axis stay.
    """
    return RewritePass("fold_pads", FOLD_PADS, verify_each=verify_each)


@register_pass("fuse_epilogues")
def fuse_epilogues(verify_each: bool = False) -> RewritePass:
    """Fuse bias adds and activations into the conv or matmul before them (one kernel each).

    Before::

        %m: float32[2,16] = linalg.matmul(%x, %w) @fc
        %b: float32[2,16] = math.add(%m, %bias) @add
        %y: float32[2,16] = math.gelu(%b) @gelu

    after::

        %y: float32[2,16] = nn.linear(%x, %w, %bias) {activation='gelu'} @fc

    Matmuls need a constant 2-d weight; activations are those of ``nn.ACTIVATIONS`` (relu, relu6
    as clip(0, 6), gelu, gelu_tanh, silu, sigmoid, tanh, hard_swish).
    """
    return RewritePass("fuse_epilogues", FUSE_EPILOGUES, verify_each=verify_each)


__all__ = [
    "FOLD_BATCH_NORM", "FOLD_PADS", "FOLD_SCALE_BIAS", "FUSE_EPILOGUES", "FUSION_RULES", "LAYERS", "LayerKind",
    "OptionalBias", "batch_norm_affine", "combine", "fold_affine", "fold_batch_norm", "fold_pads", "fold_scale_bias",
    "fuse_epilogues", "per_channel",
]
