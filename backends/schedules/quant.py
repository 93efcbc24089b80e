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
from .conv import Conv2d
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
