"""Default CPU schedules for the fused PrimFuncs of the ``zero`` pipeline, without tuning.

TVM 0.27's ``dlight`` has only GEMV and reduction rules for CPUs, so untuned dense products
and convolutions compile to serial scalar loops. The rules here are TIR schedule
transformations in the style of dlight (``ScheduleRule.apply(func, target, tunable)``):

* ``Matmul`` (matmul.py): ``nn.linear`` / ``linalg.matmul`` kernels, register-blocked,
  vectorized over N, parallel over tiles, with the bias/activation epilogue fused into the tile;
  a weight operand is read as K x nr panels packed once at load time (weights.py);
* ``WinogradConv2d`` (winograd.py): the kernels of ``WinogradRewrite``, a Relax pass the CPU
  target runs before fusion that turns float32 3x3 stride-1 convs into Winograd F(4x4, 3x3) or
  F(2x2, 3x3) (4x / 2.25x fewer multiply-adds; the filter transform runs at load time), one
  parallel loop over rows of tiles;
* ``Conv2d`` (conv.py, conv_pixels.py): 1x1 convs as tiles of channels x flat pixel vectors
  (weights read in place), others as channel tiles with weights packed at load time; epilogue
  fused; ``DepthwiseConv2d`` (conv.py): per-channel planes, rows vectorized;
* ``VnniDense`` / ``VnniConv2d`` (vnni.py, vnni_kernels.py), ``VnniDepthwiseConv2d``
  (vnni_depthwise.py): int8 products on AVX-512 VNNI (``vpdpbusd``) where the target has it;
  ``IntegerMatmul`` / ``IntegerConv2d`` / ``IntegerDepthwiseConv2d`` / ``WeightOnlyMatmul`` / ``DynamicScale`` (quant.py) otherwise;
* ``Attention`` (attention.py): optc's one-kernel ``nn.attention``, per block of query rows:
  scores, a lane-split softmax (vector partial maxima and sums) and the weighted sum while the
  rows are in cache, both products register-blocked;
* ``Transpose`` (transpose.py): big standalone transposes in 8x8 blocks, parallel;
* ``Pool2d`` (pool.py): max / average pooling, one padded channel plane at a time, planes parallel;
* ``RowReduction`` (rows.py): layer norm, softmax and other reductions over the innermost axis
  of rows, with their elementwise tail: one row at a time, each reduction as vector partial
  results (rfactor), the tail vectorized, rows parallel;
* ``Elementwise`` (elementwise.py): the standalone injective kernels (GELU after an int8
  product, ``dynamic_quantize``, residual adds, reshape / transpose / split copies): one pass,
  the innermost contiguous axis vectorized, rows parallel when big enough.

With ``fast_math`` (fast_math.py), float32 ``erf``/``tanh``/``exp`` calls (GELU, softmax)
become vectorizable approximations (relative error ~1e-7) instead of scalar libm calls.

``schedule_passes(target)`` is the Relax-level stage the CPU target runs between ``zero`` and
``tvm.compile``. A rule that does not match leaves the function alone; a rule that raises is
logged and skipped, so a scheduling bug costs speed, not a failed build. Two exceptions no
``try`` catches: ``loop_partition`` (ragged N in ``Matmul``, ragged keys in ``Attention``)
segfaulted in TVM 0.27 on other loop nests than the one-block ones used here; and an epilogue
moved into a tile it does not map onto exactly computes wrong values silently, which is why
``common.find_anchor`` refuses epilogues that reshape the result.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax, tirx
from tvm.ir import IRModule
from tvm.target import Target

from ..library import last_line
from .attention import Attention
from .conv import Conv2d, ConvConfig, DepthwiseConv2d
from .elementwise import Elementwise
from .fast_math import rewrite_fast_math
from .matmul import Matmul, MatmulConfig
from .pool import Pool2d
from .quant import DynamicScale, IntegerConv2d, IntegerDepthwiseConv2d, IntegerMatmul, WeightOnlyMatmul
from .rows import RowReduction
from .vnni import VnniConv2d, VnniDense
from .vnni_depthwise import VnniDepthwiseConv2d
from .transpose import Transpose
from .weights import mark_passes, pack_passes, with_packed_args
from .winograd import WinogradConv2d

logger = logging.getLogger(__name__)

SCHEDULED_ATTR = "tirx.is_scheduled"


def default_rules() -> list:
    """The rules, most specific first (the first that returns a schedule wins)."""
    return [WinogradConv2d(), Matmul(), VnniDense(), IntegerMatmul(), WeightOnlyMatmul(), Conv2d(), VnniConv2d(), IntegerConv2d(),
            DepthwiseConv2d(), VnniDepthwiseConv2d(), IntegerDepthwiseConv2d(), DynamicScale(), Attention(),
            Transpose(), Pool2d(), RowReduction(), Elementwise()]


def schedule_func(func: tirx.PrimFunc, target: Target, rules: list | None = None) -> tuple[tirx.PrimFunc, str] | None:
    """``func`` scheduled by the first matching rule, with that rule's name; None when none matches."""
    for rule in rules if rules is not None else default_rules():
        try:
            sch = rule.apply(func, target, False)
        except Exception as error:  # pylint: disable=broad-except
            logger.warning("schedule rule %s failed: %s", type(rule).__name__, last_line(error))
            continue
        if sch is None:
            continue
        if isinstance(sch, list):
            sch = sch[0]
        return with_packed_args(sch).with_attr(SCHEDULED_ATTR, True), type(rule).__name__
    return None


@tvm.transform.module_pass(opt_level=0, name="optc.ApplySchedules")
class ApplySchedules:
    """Schedule every unscheduled PrimFunc of a module with the first matching rule."""

    def __init__(self, rules: list | None = None, target: Target | None = None, fast_math: bool = True) -> None:
        self.rules = rules
        self.target = target
        self.fast_math = fast_math
        self.applied: dict[str, str] = {}  # function name -> rule name, from the last run

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        target = self.target or Target.current(allow_none=False)
        self.applied = {}
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
                continue
            if self.fast_math:
                func, rewritten = rewrite_fast_math(func)
                if rewritten:
                    updates[gvar] = func
            result = schedule_func(func, target, self.rules)
            if result is not None:
                updates[gvar] = result[0]
                self.applied[gvar.name_hint] = result[1]
        for gvar, func in updates.items():
            mod[gvar] = func
        logger.debug("scheduled %d PrimFunc(s): %s", len(updates), self.applied)
        return mod


def schedule_passes(target: Target | None = None, rules: list | None = None, fast_math: bool = True,
                    pack_weights: bool = True) -> list[tvm.transform.Pass]:
    """The passes the CPU target runs after ``zero`` when schedules are on; with ``pack_weights``,
    weights are packed for the kernels and every weight-only computation moves to load time
    (``weights.py``)."""
    if not pack_weights:
        return [ApplySchedules(rules, target, fast_math)]
    # SplitLayoutRewritePreproc: the weight packings the conv rules mark move out of their kernels
    # into PrimFuncs of their own, which pack_passes lifts to load time with the rest
    return [*mark_passes(), ApplySchedules(rules, target, fast_math), relax.transform.SplitLayoutRewritePreproc(),
            *pack_passes()]


def scheduled_kernels(graph, **target_options: object) -> tuple[dict[str, str], IRModule]:
    """Which default rule scheduled each fused kernel of ``graph`` on the cpu target (kernel name ->
    rule; kernels no rule took are absent), and the scheduled module, weights not yet packed."""
    from ..lower import lower_graph  # noqa: PLC0415
    from ..targets import get_target  # noqa: PLC0415

    target = get_target("cpu", **target_options)
    schedules = ApplySchedules()
    with target.tvm_target():
        module = tvm.transform.Sequential([*target.fusion_passes(), schedules])(lower_graph(graph))
    return schedules.applied, module


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and SCHEDULED_ATTR in func.attrs and bool(func.attrs[SCHEDULED_ATTR])


__all__ = [
    "ApplySchedules",
    "Attention",
    "Conv2d",
    "ConvConfig",
    "DepthwiseConv2d",
    "Elementwise",
    "Matmul",
    "MatmulConfig",
    "Pool2d",
    "RowReduction",
    "Transpose",
    "default_rules",
    "rewrite_fast_math",
    "schedule_func",
    "schedule_passes",
    "scheduled_kernels",
]
