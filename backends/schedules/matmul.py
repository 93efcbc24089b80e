"""A CPU schedule rule for dense matrix products with a fused elementwise epilogue.

It matches a PrimFunc that is ``C[s..., j] += A[..., k] * B[..., k, j]`` (``nn.linear`` and
``linalg.matmul`` after Relax legalization: ``matmul``, ``fused_matmul_add``,
``fused_matmul_add_gelu``, batched ``(..., S, K) x (K, N)``), optionally followed by injective
blocks (bias add, activation, residual add), and schedules it as a register-blocked kernel:

    parallel for (m0, n0):                      # mr x nr output tiles, over the cores
        C_tile = 0                              # vectorized
        for k:                                  # the whole K, accumulators stay in registers
            for m1 in unroll(mr):
                for n1 in vectorize(nr):        # nr = 1-3 SIMD registers
                    C_tile[m1, n1] += A[m0*mr + m1, k] * B[k, n0*nr + n1]
        out[tile] = epilogue(C_tile)            # bias, GELU, ... while the tile is hot

Leading (batch) dims stay outer loops, fused into the parallel loop; a ragged last row tile is
handled by a predicate on its unrolled rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .common import anchor_for, fitting_lanes, parallelize, static_extent, vector_lanes
from .weights import PACKED_ARG_ANNOTATION, weight_arg


@dataclass(frozen=True)
class MatmulConfig:
    """Tile shape knobs; ``None`` picks from the target's vector width."""

    mr: int | None = None  # rows of a register tile
    nr_vectors: int | None = None  # SIMD registers per tile row
    max_vectors: int = 6  # widest tile row, in SIMD registers
    registers: int = 12  # accumulator budget (of 16 AVX2 / 32 AVX-512 registers, leave room for operands)
    n_outer: bool = True  # loop order of the tiles: (n0, m0) re-uses a B panel across row tiles
    unroll_k: int = 1  # unroll the K loop by this factor
    ragged_split: bool = True  # N not a multiple of 4: full vector tiles + a scalar tail (loop_partition)
    pack_weights: bool = True  # weight B operands read as [N / nr, K, nr] panels (see pack_weight)


def _uses(expr: tirx.Expr, var: tirx.Var) -> bool:
    return any(used.same_as(var) for used in collect_vars_used_in_prim_expr(expr))


FLOAT32 = frozenset({"float32"})


def match_dense(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV, operands: frozenset[str] = FLOAT32,
                accumulator: str = "float32") -> bool:
    """Whether the block is ``C[s..., j] (+)= A[..., k] * B[..., k, j]`` with operands of a dtype
    in ``operands`` accumulated in ``accumulator`` (float32 by default; int8/uint8 into int32
    for the integer kernels).

    ``normalize_prim_func`` has dropped unit iters, so an index may be a constant.
    """
    block = sch.get(block_rv)
    iters = list(block.iter_vars)
    if len(iters) < 2 or iters[-1].iter_type != tirx.IterVar.CommReduce:
        return False
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in iters[:-1]):
        return False
    spatial = [iv.var for iv in iters[:-1]]
    j, k = spatial[-1], iters[-1].var
    if len(block.writes) != 1:
        return False
    out = block.writes[0]
    if str(out.source.dtype) != accumulator:
        return False
    out_vars = [r.min for r in out.region if not isinstance(r.min, tirx.IntImm)]
    if len(out_vars) != len(spatial) or any(not e.same_as(v) for e, v in zip(out_vars, spatial)):
        return False
    inputs = [region for region in block.reads if not region.source.same_as(out.source)]
    if len(inputs) != 2 or any(str(region.source.dtype) not in operands for region in inputs):
        return False
    b_side = [r for r in inputs if len(r.region) >= 2 and r.region[-1].min.same_as(j) and r.region[-2].min.same_as(k)]
    if len(b_side) != 1:
        return False
    a_side = [r for r in inputs if r is not b_side[0]][0]
    a_index = [r.min for r in a_side.region]
    if not a_index or not a_index[-1].same_as(k) or any(_uses(e, j) for e in a_index):
        return False
    return True


# what a symbolic row or batch extent counts as when choosing tiles and deciding on threads
DYNAMIC_EXTENT = 64


def _tile_shape(extent_m: int, extent_n: int, lanes: int, config: MatmulConfig) -> tuple[int, int]:
    """(vectors per tile row, rows per tile) for an extent_m x extent_n output.

    Among tiles with at most ``config.registers`` accumulators, whose width divides N (a ragged
    vectorized tile would fall back to scalar code), pick the one with the most FMAs per load
    (``mr * v / (mr + v)``: each k step loads v vectors of B and broadcasts mr values of A),
    discounted by the padding waste of the last row tile.
    """
    if extent_n % lanes != 0:
        widths = [1]
    else:
        widths = [v for v in range(1, config.max_vectors + 1) if (extent_n // lanes) % v == 0]
    if config.nr_vectors:
        widths = [config.nr_vectors]
    best: tuple[float, int, int] | None = None
    for vectors in widths:
        rows = [config.mr] if config.mr else range(1, config.registers // vectors + 1)
        for mr in rows:
            mr = min(mr, extent_m)
            if mr * vectors > config.registers and not (config.mr and config.nr_vectors):
                continue
            waste = extent_m / (-(-extent_m // mr) * mr)
            score = (mr * vectors / (mr + vectors) * waste * _wide_penalty(vectors), mr * vectors, -vectors)
            if best is None or score > best[0]:
                best = (score, vectors, mr)
    assert best is not None
    return best[1], best[2]


def _wide_penalty(vectors: int) -> float:
    """Measured: tiles 4+ vectors wide ran slower than the load count predicts (3x4 half of 6x2)."""
    return 0.8 if vectors >= 4 else 1.0


def _largest_divisor(value: int, limit: int) -> int:
    for candidate in range(min(value, limit), 0, -1):
        if value % candidate == 0:
            return candidate
    return 1


class Matmul(CPUScheduleRule):
    """Register-blocked, vectorized, parallel dense products with the epilogue fused into the tile."""

    operands: frozenset[str] = FLOAT32  # operand dtypes the rule takes, and what they accumulate in
    accumulator: str = "float32"

    def __init__(self, config: MatmulConfig | None = None) -> None:
        self.config = config or MatmulConfig()

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        anchor = anchor_for(func, self.is_target_available(target), max_producers=0)
        if anchor is None:
            return None
        sch = anchor.sch
        block = anchor.block.block_rv
        if not match_dense(sch, block, self.operands, self.accumulator):
            return None
        return schedule_dense(sch, block, anchor.epilogue.block_rv if anchor.epilogue else None, target, self.config)


def schedule_dense(
    sch: s_tir.Schedule,
    block: s_tir.schedule.SBlockRV,
    epilogue: s_tir.schedule.SBlockRV | None,
    target: Target,
    config: MatmulConfig,
) -> s_tir.Schedule | None:
    lanes = vector_lanes(target)
    loops = sch.get_loops(block)
    if len(loops) != len(sch.get(block).iter_vars):
        return None
    *rows, n, k = loops
    # batch dims stay outer loops: a row tile straddling two batches would make the tile's
    # output region (what the epilogue computes at the tile) a bounding box, not the tile
    # symbolic batch and row counts (dynamic batch or sequence) are fine: tiles get predicates;
    # N and K must be static (they size the register tile and the vectors)
    batch, m = (rows[:-1], rows[-1]) if rows else ([], None)
    extent_m = (static_extent(sch, m) or DYNAMIC_EXTENT) if m is not None else 1
    extent_batch = 1
    for loop in batch:
        extent_batch *= static_extent(sch, loop) or DYNAMIC_EXTENT
    extent_n, extent_k = static_extent(sch, n), static_extent(sch, k)
    if extent_n is None or extent_k is None:
        return None

    # --- tile shape: nr = a few vectors wide, mr rows so that mr * nr / lanes accumulators fit
    if extent_n % min(4, lanes) != 0 and extent_n > lanes and config.ragged_split:
        return _schedule_ragged_n(sch, block, epilogue, target, config, batch, m, n, k,
                                  (extent_batch, extent_m, extent_n, extent_k), lanes)
    lanes = fitting_lanes(extent_n, lanes)
    nr_vectors, mr = _tile_shape(extent_m, extent_n, lanes, config)
    nr = min(nr_vectors * lanes, extent_n)

    n0, n1 = sch.split(n, [None, nr])
    if m is not None:
        m0, m1 = sch.split(m, [None, mr])
        outer = [*batch, n0, m0] if config.n_outer else [*batch, m0, n0]
        sch.reorder(*outer, k, m1, n1)
        sch.unroll(m1)
    else:
        outer = [*batch, n0]
        sch.reorder(*outer, k, n1)
    if config.unroll_k > 1 and extent_k % config.unroll_k == 0:
        k, k_inner = sch.split(k, [None, config.unroll_k])
        sch.reorder(k_inner, *([m1] if m is not None else [n1]))
        sch.unroll(k_inner)
    if nr > lanes and nr % lanes == 0:
        # one SIMD register per instruction: LLVM splits odd vector widths (40 lanes) badly
        n1_vectors, n1_lanes = sch.split(n1, [None, lanes])
        sch.unroll(n1_vectors)
        sch.vectorize(n1_lanes)
    else:
        sch.vectorize(n1)

    tile = outer[-1]
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, tile)
        epilogue_loops = sch.get_loops(epilogue)[len(outer):]
        if epilogue_loops:
            sch.vectorize(epilogue_loops[-1])
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    parallelize(sch, fused, target, extent_batch * extent_m * extent_n * extent_k)
    if config.pack_weights:
        pack_weight(sch, block, nr)
    init = sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(init)[-1])
    return sch


def pack_weight(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, nr: int) -> bool:
    """Read ``B[K, N]`` as ``B[N / nr, K, nr]`` when it is a weight (``weights.MarkWeightArgs``).

    Each output tile then streams one contiguous K x nr panel instead of K rows N apart (one
    cache line and, for wide N, one page per k); ``weights.PackWeights`` packs the weight at the
    call site and TVM's ``LiftTransformParams`` moves that packing to load time.
    Measured on 128x768 @ 768x3072 (AVX-512, 2 threads): 4.5 ms -> 2.5 ms.
    """
    func = sch.mod["main"]
    stmt = sch.get(block)
    spatial, reduce = stmt.iter_vars[-2].var, stmt.iter_vars[-1].var
    for index, region in enumerate(stmt.reads):
        buffer = region.source
        mins = [r.min for r in region.region]
        if len(mins) != 2 or not (mins[0].same_as(reduce) and mins[1].same_as(spatial)):
            continue
        shape = [dim for dim in buffer.shape]
        if not all(isinstance(dim, tirx.IntImm) for dim in shape) or int(shape[1]) <= nr:
            return False
        position = weight_arg(func, buffer)
        if position is None:
            return False
        # a ragged N (a 50257-word vocabulary) pads the last panel with zeros (PackWeights pads too)
        pad = {"pad_value": 0.0} if int(shape[1]) % nr else {}
        sch.transform_layout(block, ("read", index), lambda k, n: (n // nr, k, n % nr), **pad)
        sch.annotate(block, PACKED_ARG_ANNOTATION, [position, nr])
        return True
    return False


def _schedule_ragged_n(sch, block, epilogue, target, config, batch, m, n, k, extents, lanes):
    """N with no vector width dividing it (a 50257-word vocabulary): the columns [0, main) in full
    vector tiles and the tail [main, N) as a scalar tile of its own, via ``loop_partition``.

    The partition wraps the two parts in opaque blocks, so the epilogue cannot move into the tiles;
    it stays a separate pass over the output (parallel over rows). ``loop_partition`` runs on a
    loop nest with one block and no annotations: TVM 0.27 crashed (segfault) when the partitioned
    loop also held the epilogue.
    """
    extent_batch, extent_m, extent_n, extent_k = extents
    main = extent_n - extent_n % lanes
    nr_vectors, mr = _tile_shape(extent_m, main, lanes, config)
    nr = nr_vectors * lanes
    n0, n1 = sch.split(n, [None, nr])
    if m is not None:
        m0, m1 = sch.split(m, [None, mr])
        sch.reorder(n0, m0, k, m1, n1)
    else:
        sch.reorder(n0, k, n1)
    if config.pack_weights:  # before the partition: its opaque blocks hide the buffer from transform_layout
        pack_weight(sch, block, nr)
    block_name, loop_name = sch.get(block).name_hint, sch.get(n0).loop_var.name
    tiles = main // nr
    sch.loop_partition(n0, [tiles, None])
    work = extent_batch * extent_m * extent_n * extent_k
    for part in (0, 1):
        part_block = sch.get_sblock(f"{block_name}_{loop_name}{part}")
        loops = sch.get_loops(part_block)
        if m is not None:
            *outer, tile_n, tile_m, reduce, rows, cols = loops
            sch.unroll(rows)
        else:
            *outer, tile_n, reduce, cols = loops
            tile_m = None
        if part == 0:
            cols_vectors, cols_lanes = sch.split(cols, [None, lanes])
            sch.unroll(cols_vectors)
            sch.vectorize(cols_lanes)
        if batch:
            pass  # the batch loops (outside the partition) are the parallel ones, below
        elif tile_m is not None:
            parallelize(sch, sch.fuse(tile_n, tile_m) if part == 0 else tile_m, target, work)
        elif part == 0:
            parallelize(sch, tile_n, target, work)
        init = sch.decompose_reduction(part_block, reduce)
        if part == 0:
            sch.vectorize(sch.get_loops(init)[-1])
    if batch:
        parallelize(sch, sch.fuse(*batch) if len(batch) > 1 else batch[0], target, work)
    if epilogue is not None:
        epilogue_loops = sch.get_loops(epilogue)
        rows_loops = epilogue_loops[:-1]
        if rows_loops:
            parallelize(sch, sch.fuse(*rows_loops) if len(rows_loops) > 1 else rows_loops[0], target, work)
    return sch
