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

from .common import find_anchor, parallelize, static_extent, vector_lanes
from .conv import Conv2d, DepthwiseConv2d, _column_stride, _row_vector, _uses
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
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        anchor = find_anchor(func)
        if anchor is None or anchor.producers:
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


def match_integer_depthwise(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV) -> bool:
    """``out[0, f, y, x] += data[0, f, y*s + ry, x*s + rx] * weight[f, 0, ry, rx]``: int8/uint8 operands,
    int32 accumulator (``conv.match_depthwise`` takes float32 only)."""
    block = sch.get(block_rv)
    iters = list(block.iter_vars)
    if len(iters) < 4 or any(iv.iter_type != tirx.IterVar.DataPar for iv in iters[:3]):
        return False
    if any(iv.iter_type != tirx.IterVar.CommReduce for iv in iters[3:]):
        return False
    f, y, x = (iv.var for iv in iters[:3])
    if len(block.writes) != 1:
        return False
    out = block.writes[0]
    out_index = [r.min for r in out.region]
    if str(out.source.dtype) != "int32" or len(out_index) != 4:
        return False
    if not (isinstance(out_index[0], tirx.IntImm) and out_index[1].same_as(f)
            and out_index[2].same_as(y) and out_index[3].same_as(x)):
        return False
    inputs = [region for region in block.reads if not region.source.same_as(out.source)]
    if len(inputs) != 2 or any(str(r.source.dtype) not in INTEGER_OPERANDS or len(r.region) != 4 for r in inputs):
        return False
    data = [r for r in inputs if r.region[1].min.same_as(f) and _uses(r.region[2].min, y) and _uses(r.region[3].min, x)]
    weight = [r for r in inputs if r.region[0].min.same_as(f) and not any(_uses(e.min, y) or _uses(e.min, x) for e in r.region)]
    return len(data) == 1 and len(weight) == 1 and data[0] is not weight[0]


class IntegerDepthwiseConv2d(DepthwiseConv2d):
    """The float depthwise schedule (parallel over channels, rows vectorized, taps unrolled) on
    int8 depthwise convolutions, whose products vpdpbusd cannot take (one input channel per output).

    The body is ``DepthwiseConv2d.apply`` with the integer matcher.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        anchor = find_anchor(func)
        if anchor is None or len(anchor.producers) > 1:
            return None
        sch = anchor.sch
        block = anchor.block.block_rv
        if not match_integer_depthwise(sch, block):
            return None
        loops = sch.get_loops(block)
        if len(loops) != len(sch.get(block).iter_vars):
            return None
        f, y, x, *taps = loops
        width = static_extent(sch, x)
        if width is None or static_extent(sch, f) is None:
            return None
        epilogue = anchor.epilogue.block_rv if anchor.epilogue is not None else sch.cache_write(block, 0, "global")
        stride = _column_stride(sch, block, x)
        step = self.row_step or _row_vector(width, vector_lanes(target), stride)
        if step is not None:
            for tap in taps:
                if (static_extent(sch, tap) or 0) <= 7:
                    sch.unroll(tap)
            x0, x1 = sch.split(x, [None, step])
            sch.reorder(f, y, x0, *taps, x1)
            sch.vectorize(x1)
            sch.reverse_compute_at(epilogue, x0)
            epilogue_loops = sch.get_loops(epilogue)[3:]
            if epilogue_loops:
                sch.vectorize(epilogue_loops[-1])
        else:
            sch.reverse_compute_at(epilogue, f)
        for producer in anchor.producers:  # the padded plane of one channel, right before its use
            sch.compute_at(producer.block_rv, f)
        work = 1
        for loop in sch.get_loops(block):
            work *= static_extent(sch, loop) or 1
        parallelize(sch, f, target, work)
        if step is not None:
            init = sch.decompose_reduction(block, taps[0])
            sch.vectorize(sch.get_loops(init)[-1])
        return sch



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
