"""CPU schedules for the integer kernels of ``quant.*``: int8 x int8 -> int32 products.

``IntegerMatmul`` matches the block ``C[.., j] (+)= int32(A[.., k]) * int32(B[.., k, j])`` that
``quant.linear`` / ``quant.matmul`` legalize to (int8 or uint8 operands, int32 accumulator) and
schedules it exactly like the float ``Matmul`` rule: register tiles of int32 accumulators,
vectorized over N, parallel over tiles, with the epilogue (zero-point correction, bias,
requantize when fused) computed in the tile.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .common import find_anchor
from .conv import Conv2d, ConvMatch, schedule_conv2d
from .matmul import Matmul, MatmulConfig, _uses, schedule_dense

INTEGER_OPERANDS = frozenset({"int8", "uint8"})


def match_integer_dense(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV) -> bool:
    """Whether the block is ``C[s..., j] (+)= A[..., k] * B[..., k, j]`` with int8/uint8 operands into int32."""
    block = sch.get(block_rv)
    iters = list(block.iter_vars)
    if len(iters) < 2 or iters[-1].iter_type != tirx.IterVar.CommReduce:
        return False
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in iters[:-1]):
        return False
    spatial = [iv.var for iv in iters[:-1]]
    j, k = spatial[-1], iters[-1].var
    if len(block.writes) != 1 or str(block.writes[0].source.dtype) != "int32":
        return False
    out = block.writes[0]
    out_vars = [r.min for r in out.region if not isinstance(r.min, tirx.IntImm)]
    if len(out_vars) != len(spatial) or any(not e.same_as(v) for e, v in zip(out_vars, spatial)):
        return False
    inputs = [region for region in block.reads if not region.source.same_as(out.source)]
    if len(inputs) != 2 or any(str(region.source.dtype) not in INTEGER_OPERANDS for region in inputs):
        return False
    b_side = [r for r in inputs if len(r.region) >= 2 and r.region[-1].min.same_as(j) and r.region[-2].min.same_as(k)]
    if len(b_side) != 1:
        return False
    a_side = [r for r in inputs if r is not b_side[0]][0]
    a_index = [r.min for r in a_side.region]
    return bool(a_index) and a_index[-1].same_as(k) and not any(_uses(e, j) for e in a_index)


class IntegerMatmul(Matmul):
    """The float Matmul schedule on int8 x int8 -> int32 products."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        anchor = find_anchor(func)
        if anchor is None or anchor.producers:
            return None
        if not match_integer_dense(anchor.sch, anchor.block.block_rv):
            return None
        return schedule_dense(anchor.sch, anchor.block.block_rv, anchor.epilogue.block_rv if anchor.epilogue else None,
                              target, self.config)


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


def match_integer_conv2d(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV) -> ConvMatch | None:
    """``conv.match_conv2d``'s pattern with int8/uint8 data and weight accumulated into int32.

    The same structural checks as the float matcher (which also pins the dtypes to float32).
    """
    block = sch.get(block_rv)
    iters = list(block.iter_vars)
    spatial = [iv.var for iv in iters if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [iv.var for iv in iters if iv.iter_type == tirx.IterVar.CommReduce]
    if len(spatial) + len(reduce) != len(iters) or len(spatial) not in (3, 4) or not reduce:
        return None
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in iters[:len(spatial)]) or len(block.writes) != 1:
        return None
    out = block.writes[0]
    if str(out.source.dtype) != "int32" or len(out.region) != 4:
        return None
    out_index = [r.min for r in out.region]
    if len(spatial) == 3:
        if not (isinstance(out_index[0], tirx.IntImm) and int(out_index[0]) == 0):
            return None
        batch, (f, y, x) = None, spatial
    else:
        batch, f, y, x = spatial
        if not out_index[0].same_as(batch):
            return None
    if not (out_index[1].same_as(f) and out_index[2].same_as(y) and out_index[3].same_as(x)):
        return None
    reads = list(block.reads)
    inputs = [i for i, region in enumerate(reads) if not region.source.same_as(out.source)]
    if len(inputs) != 2:
        return None
    weight_index = data_index = None
    for i in inputs:
        region = reads[i]
        if str(region.source.dtype) not in INTEGER_OPERANDS or len(region.region) != 4:
            return None
        index = [r.min for r in region.region]
        if index[0].same_as(f) and not any(_uses(e, f) or _uses(e, y) or _uses(e, x) or (batch is not None and _uses(e, batch))
                                           for e in index[1:]):
            weight_index = i
        elif not any(_uses(e, f) for e in index):
            data_index = i
    if weight_index is None or data_index is None:
        return None
    return ConvMatch(f, y, x, weight_index, data_index, batch)


class IntegerConv2d(Conv2d):
    """The float Conv2d schedule (output channels in vectors, pixel tiles, padding per row) on
    int8 x int8 -> int32 convolutions."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        anchor = find_anchor(func)
        if anchor is None or len(anchor.producers) > 1:
            return None
        match = match_integer_conv2d(anchor.sch, anchor.block.block_rv)
        if match is None:
            return None
        return schedule_conv2d(anchor.sch, anchor.block.block_rv, match, anchor.producers, anchor.epilogue, target,
                               self.config)
