"""Window pooling (``nn.max_pool`` / ``nn.avg_pool``, NCHW): one channel plane at a time, in parallel.

TOPI legalizes a pool to a padding copy of the whole input (``pad_temp``) and a window reduction
(``pool_max`` / ``pool_sum``), maybe followed by a division (average). Unscheduled, the copy runs
over every channel before the reduction starts, and both are serial: ResNet-18's 3x3 stride-2
max pool took 0.16 ms on 2 threads, 1.5% of the model. The rule::

    parallel for (n, c):                     # only pools big enough to pay a thread wake-up
        pad_temp[n, c] = padded plane        # right before its use, while it is in cache
        for oh, ow: out = reduce over the taps (unrolled), [divided]

Rows stay scalar: the windows read the plane with the stride (a gather in a vector), and the
depthwise rule measured gathered rows slower than scalar ones on wide stride-2 planes; stride-1
rows are vectorized when a vector width divides them.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.sym.pattern import detect_linear_equation
from tvm.target import Target

from .common import PARALLEL_MIN_WORK, anchor_for, num_cores, static_extent, vector_lanes

POOL_BLOCKS = ("pool_max", "pool_sum")


class Pool2d(CPUScheduleRule):
    """NCHW window pooling: parallel over planes, the padded plane made right before its use."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        anchor = anchor_for(func, self.is_target_available(target), max_producers=1)
        if anchor is None:
            return None
        sch, block = anchor.sch, anchor.block.block_rv
        if sch.get(block).name_hint not in POOL_BLOCKS:
            return None
        loops = sch.get_loops(block)
        iters = sch.get(block).iter_vars
        # (n, c, h, w) spatial, (kh, kw) taps; unit loops (n = 1) are already gone
        if len(loops) != len(iters) or len(iters) not in (5, 6) or [iv.iter_type for iv in iters[-2:]] != [
                tirx.IterVar.CommReduce] * 2 or any(iv.iter_type != tirx.IterVar.DataPar for iv in iters[:-2]):
            return None
        *planes, h, w = loops[:-2]
        taps = loops[-2:]
        extents = [static_extent(sch, loop) for loop in loops]
        if None in extents:
            return None
        work = 1
        for extent in extents:
            work *= extent
        if num_cores(target) < 2 or work < PARALLEL_MIN_WORK:
            return None  # measured: a small pool runs faster as it is than one plane at a time, serially
        plane = sch.fuse(*planes) if len(planes) > 1 else planes[0]
        for tap in taps:
            sch.unroll(tap)
        stride = _column_stride(sch.get(block), iters[-3].var)
        width = extents[-3]
        lanes = next((lanes for lanes in (vector_lanes(target), 8) if width % lanes == 0), None)
        if stride == 1 and lanes is not None and width >= lanes:
            w0, w1 = sch.split(w, [None, lanes])
            sch.reorder(h, w0, *taps, w1)
            sch.vectorize(w1)
            init = sch.decompose_reduction(block, taps[0])
            sch.vectorize(sch.get_loops(init)[-1])
        if anchor.epilogue is not None:  # the average's division, per plane
            sch.reverse_compute_at(anchor.epilogue.block_rv, plane)
        for producer in anchor.producers:  # the padded plane, right before its use
            sch.compute_at(producer.block_rv, plane)
        sch.parallel(plane)
        return sch


def _column_stride(block: s_tir.SBlock, column: tirx.Var) -> int | None:
    """How far the window's read moves along the input row per output column (the pool's stride)."""
    reads = [region for region in block.reads if len(region.region) == 4]
    if len(reads) != 1:
        return None
    found = detect_linear_equation(reads[0].region[3].min, [column])
    if len(found) != 2 or not isinstance(found[0], tirx.IntImm):
        return None
    return int(found[0])
