"""CPU schedules for the integer kernels of ``quant.*``: int8 x int8 -> int32 products.

(On CPUs with AVX-512 VNNI, ``vnni.py`` takes the dense products and convolutions first; these
rules are what runs without it, and for depthwise convolutions in any case.)

``IntegerMatmul`` matches the block ``C[.., j] (+)= int32(A[.., k]) * int32(B[.., k, j])`` that
``quant.linear`` / ``quant.matmul`` legalize to (int8 or uint8 operands, int32 accumulator) and
schedules it exactly like the float ``Matmul`` rule: register tiles of int32 accumulators,
vectorized over N, parallel over tiles, with the epilogue (zero-point correction, bias,
requantize when fused) computed in the tile.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from ..lower.quant import PEAK_LANES

from .common import anchor_for, static_extent
from .conv import Conv2d, DepthwiseConv2d, match_depthwise
from .matmul import Matmul, MatmulConfig, schedule_dense

INTEGER_OPERANDS = frozenset({"int8", "uint8"})


class IntegerMatmul(Matmul):
    """The float Matmul schedule on int8 x int8 -> int32 products."""

    operands = INTEGER_OPERANDS
    accumulator = "int32"


class WeightOnlyMatmul(Matmul):
    """``quant.weight_matmul``'s kernel (int4 unpacked / int8 scaled inside the reduction): the
    float Matmul tiling, so the unpack and scale happen on vectors of N in registers. K is
    unrolled by 2 so that which nibble a row sits in is a constant in the unrolled body."""

    def __init__(self, config: MatmulConfig | None = None) -> None:
        super().__init__(config or MatmulConfig(unroll_k=2))

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        anchor = anchor_for(func, self.is_target_available(target), max_producers=0)
        if anchor is None:
            return None
        block = anchor.sch.get(anchor.block.block_rv)
        iters = list(block.iter_vars)
        if block.name_hint != "weight_matmul" or len(iters) < 2 or iters[-1].iter_type != tirx.IterVar.CommReduce:
            return None
        return schedule_dense(anchor.sch, anchor.block.block_rv, anchor.epilogue.block_rv if anchor.epilogue else None,
                              target, self.config)


class IntegerConv2d(Conv2d):
    """The float Conv2d schedule (output channels in vectors, pixel tiles, padding per row) on
    int8 x int8 -> int32 convolutions."""

    operands = INTEGER_OPERANDS
    accumulator = "int32"


class IntegerDepthwiseConv2d(DepthwiseConv2d):
    """The float depthwise schedule (parallel over channels, rows vectorized, taps unrolled) on
    int8 depthwise convolutions, for targets without VNNI (``vnni_depthwise.py`` takes them there)."""

    def matches(self, sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
        return match_depthwise(sch, block, INTEGER_OPERANDS, "int32")


class DynamicScale(CPUScheduleRule):
    """The scale kernel of ``quant.dynamic_quantize`` (``lower/quant.py``: max |x| over the whole
    tensor as 16 partial maxima, ``peak_lanes``, then one of 16): the 16 lanes innermost and
    unrolled, which LLVM turns into one vector max per step. Unscheduled it was one serial chain
    of scalar maxima (GPT-2 small: 35 us per 64 x 1024 activation, 9% of the dynamic-int8 run)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = {sch.get(block).name_hint: block for block in sch.get_child_blocks(sch.get_sblock("root"))}
        if set(blocks) != {"peak_lanes", "peak", "scale"}:
            return None
        loops = sch.get_loops(blocks["peak_lanes"])
        if len(loops) != 2 or static_extent(sch, loops[0]) != PEAK_LANES:
            return None
        lanes, steps = loops
        sch.reorder(steps, lanes)
        # vectorize refuses this loop (the flat index is no affine binding); unrolled, LLVM's SLP
        # vectorizer makes the 16 independent maxima one vector operation
        sch.unroll(lanes)
        return sch
