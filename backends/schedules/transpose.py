"""A CPU schedule rule for big standalone transposes (a kernel that is one permuting copy).

GPT-2's tied language-model head transposes the 50257 x 768 embedding on every call (the
frontend keeps shared params unfolded): untuned, a serial loop that reads with a stride of 768
floats, 168 ms of a 540 ms forward pass. Tiled into 8 x 8 blocks (each block reads 8 short rows
and writes 8 short rows, all within a few cache lines) and parallel over the blocks: 33 ms.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .common import parallelize, static_extent

TILE = 8  # measured: 8x8 blocks beat 16, 32 and 64 on both a 50257 x 768 and a 768 x 3072 transpose
MIN_ELEMENTS = 1 << 20  # smaller copies: a 355K-element one ran slower tiled than untouched


class Transpose(CPUScheduleRule):
    """``out[v0, ..., vn] = in[permutation of v]`` with the last output dim not the last input dim."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or len(infos) != 1 or not infos[0].is_injective():
            return None
        block_rv = infos[0].block_rv
        block = sch.get(block_rv)
        iter_vars = [iv.var for iv in block.iter_vars]
        if len(iter_vars) < 2 or len(block.reads) != 1 or len(block.writes) != 1:
            return None
        written = [r.min for r in block.writes[0].region if not isinstance(r.min, tirx.IntImm)]
        read = [r.min for r in block.reads[0].region if not isinstance(r.min, tirx.IntImm)]
        if len(written) != len(iter_vars) or any(not w.same_as(v) for w, v in zip(written, iter_vars)):
            return None
        if len(read) != len(iter_vars) or not all(any(r.same_as(v) for v in iter_vars) for r in read):
            return None
        if read[-1].same_as(iter_vars[-1]):
            return None  # the innermost dims agree: a contiguous copy, nothing to tile
        loops = sch.get_loops(block_rv)
        if len(loops) != len(iter_vars):
            return None
        extents = [static_extent(sch, loop) for loop in loops]
        if any(extent is None for extent in extents):
            return None
        elements = 1
        for extent in extents:
            elements *= extent
        if elements < MIN_ELEMENTS:
            return None
        # the loop that walks the input's innermost dim, and the output's innermost loop
        a_position = next(i for i, v in enumerate(iter_vars) if v.same_as(read[-1]))
        a, b = loops[a_position], loops[-1]
        others = [loop for i, loop in enumerate(loops[:-1]) if i != a_position]
        a0, a1 = sch.split(a, [None, TILE])
        b0, b1 = sch.split(b, [None, TILE])
        sch.reorder(*others, a0, b0, a1, b1)
        sch.unroll(b1)
        parallelize(sch, sch.fuse(*others, a0, b0), target, elements)
        return sch
