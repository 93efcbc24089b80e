"""A CPU schedule rule for row reductions with an elementwise tail: layer norm, softmax, RMS norm.

``R.nn.layer_norm`` legalizes (``topi.nn.layer_norm``) to four blocks over ``x[rows..., K]``:
``sum`` (reduce over K), ``mean`` (per row), ``var_sum`` (reduce over K, reading ``mean``) and
the normalize block, each a serial loop nest over the whole tensor (GPT-2: 160 us per 128 x 768
call). A softmax is ``max`` / ``exp`` / ``sum`` / ``divide`` over the same rows. The rule runs
every block of a row right after the other, while the row is in cache::

    parallel for row:                                  # when the kernel pays a thread wake-up
        for k0 in K / w:                               # every reduction: w = 16 partial results
            vectorize for lane in w:                   # (float32 on AVX-512) in one register
                partial[lane] += x[row, k0 * w + lane]
        total = sum(partial[0 .. w))                   # then the per-row scalars (mean)
        ...
        for chunk: vectorize for lane in w:            # the elementwise blocks of the row
            out[row, chunk * w + lane] = ...

The reductions are split with ``rfactor``, so the partial results are summed lane by lane:
float32 sums differ from the serial order by rounding only (~1e-7 relative for K = 768).

It matches a PrimFunc whose reductions all reduce one innermost axis (contiguous in memory) of
the same leading ``rows`` dims, and whose other blocks are per row or per element of those rows
(the block writing the output last). Blocks off the rows (a copy of the scale) and the
per-element blocks after the last reduction (an activation FuseOps put after a layer norm) are
inlined first. A K that no vector width (16, 8, 4) divides keeps scalar reductions (still one
row at a time); per-element blocks whose accesses are not contiguous stay scalar loops.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .common import num_cores, static_extent, vector_lanes
from .elementwise import PARALLEL_MIN_UNITS, dividing_width, uses_var, has_bool_buffer, is_contiguous, is_param


class RowReduction(CPUScheduleRule):
    """Per-row reductions (vectorized through rfactor) and their elementwise tail, rows in parallel."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not _inline_off_row_blocks(sch, infos):
            return None
        infos = normalize_prim_func(sch)
        rows = _row_count(sch, func, infos) if infos else None
        if rows is None:
            return None
        lanes = vector_lanes(target)
        # every reduction over K becomes w partial results (the "rf" block) and their sum
        order: list[s_tir.schedule.SBlockRV] = []
        partials: list[s_tir.schedule.SBlockRV] = []
        for info in infos:
            if info.is_reduction():
                partial = _split_lanes(sch, info, lanes)
                if partial is not None:
                    order.append(partial)
                    partials.append(partial)
            order.append(info.block_rv)
        out = order.pop()
        row_loops = sch.get_loops(out)[:rows]
        row = sch.fuse(*row_loops) if rows > 1 else row_loops[0]
        for block in reversed(order):
            sch.compute_at(block, row, preserve_unit_loops=False)
        for partial in partials:
            lane, chunks = _loops_below(sch, partial, row)[-2:]
            sch.reorder(chunks, lane)
            sch.vectorize(lane)
        for info in infos:
            if not info.is_reduction():
                _vectorize_row_block(sch, info.block_rv, row, lanes)
        work = _work(infos)
        if num_cores(target) > 1 and work >= PARALLEL_MIN_UNITS and (static_extent(sch, row) or 2) > 1:
            sch.parallel(row)
        # TVM refuses ``parallel`` above a decomposed reduction: decompose last
        for partial in partials:
            chunks = _loops_below(sch, partial, row)[-2]
            init = sch.decompose_reduction(partial, chunks)
            sch.vectorize(sch.get_loops(init)[-1])
        return sch


def _inline_off_row_blocks(sch: s_tir.Schedule, infos: list[SBlockInfo]) -> bool:
    """Inline into their readers the injective blocks that do not run over the rows
    (``rms_norm`` copies its ``scale`` in a block of its own) and the per-element blocks after
    the last reduction (an activation fused after a layer norm: one pass over the row instead of
    one per block). Per-row scalars stay blocks (an inlined ``rsqrt`` would run per element).
    False when there are no reductions or a block cannot be inlined."""
    reductions = [info for info in infos if info.is_reduction()]
    if not reductions:
        return False
    rows = len(reductions[0].dom_kind()) - 1
    row_extents = [iv.dom.extent for iv in sch.get(reductions[0].block_rv).iter_vars[:rows]]
    last_reduction = max(position for position, info in enumerate(infos) if info.is_reduction())
    for position, info in enumerate(infos[:-1]):
        if info.is_reduction():
            continue
        extents = [iv.dom.extent for iv in sch.get(info.block_rv).iter_vars]
        off_rows = len(extents) < rows or not all(_same_extent(a, b) for a, b in zip(extents, row_extents))
        if off_rows or (position > last_reduction and len(extents) > rows):
            try:
                sch.compute_inline(info.block_rv)
            except Exception:  # pylint: disable=broad-except
                return False
    return True


def _row_count(sch: s_tir.Schedule, func: tirx.PrimFunc, infos: list[SBlockInfo]) -> int | None:
    """How many leading dims are the rows, when ``func`` has the shape the rule takes; else None.

    Every reduction block must be ``S^rows R`` over the same row extents, read the reduced axis
    as the innermost one of its buffer (contiguous) and write float32; every block must start
    with the row dims, index the buffers other blocks write by the same row vars, and only the
    last block may write a function argument.
    """
    reductions = [info for info in infos if info.is_reduction()]
    if not reductions:
        return None
    kinds = {info.dom_kind() for info in reductions}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    rows = len(kind) - 1
    if rows < 1 or kind != "S" * rows + "R":
        return None
    row_extents = [iv.dom.extent for iv in sch.get(reductions[0].block_rv).iter_vars[:rows]]
    written = []
    for position, info in enumerate(infos):
        block = sch.get(info.block_rv)
        iters = list(block.iter_vars)
        if len(iters) < rows or any(not _same_extent(iv.dom.extent, extent) for iv, extent in zip(iters, row_extents)):
            return None
        if any(iv.iter_type != tirx.IterVar.DataPar for iv in iters[:rows]):
            return None
        if len(block.writes) != 1 or has_bool_buffer(block):
            return None
        target = block.writes[0].source
        if is_param(func, target) != (position == len(infos) - 1):
            return None
        if info.is_reduction() and (str(target.dtype) != "float32" or not _reads_reduced_axis_innermost(block)):
            return None
        row_vars = [iv.var for iv in iters[:rows]]
        for region in block.reads:
            if any(region.source.same_as(buffer) for buffer in written):
                # normalize_prim_func dropped unit dims from the iters, not from the buffers
                mins = [r.min for r, dim in zip(region.region, region.source.shape)
                        if not (isinstance(dim, tirx.IntImm) and int(dim) == 1)]
                if len(mins) < rows or any(not index.same_as(var) for index, var in zip(mins, row_vars)):
                    return None
        written.append(target)
    return rows


def _same_extent(a: tirx.Expr, b: tirx.Expr) -> bool:
    if isinstance(a, tirx.IntImm) and isinstance(b, tirx.IntImm):
        return int(a) == int(b)
    return a.same_as(b)


def _reads_reduced_axis_innermost(block: s_tir.SBlock) -> bool:
    """Every read that uses the reduction var indexes the innermost dim with it, and only that dim."""
    reduce_var = block.iter_vars[-1].var
    for region in block.reads:
        mins = [r.min for r in region.region]
        used = [index for index in mins if uses_var(index, reduce_var)]
        if not used:
            continue
        if len(used) != 1 or not mins[-1].same_as(reduce_var):
            return False
    return True


def _split_lanes(sch: s_tir.Schedule, info: SBlockInfo, lanes: int) -> s_tir.schedule.SBlockRV | None:
    """Split the reduction over K into ``width`` lanes of partial results (``rfactor``); returns
    the partial block, or None when no vector width divides K (the reduction stays scalar)."""
    loop = sch.get_loops(info.block_rv)[-1]
    extent = static_extent(sch, loop)
    width = dividing_width(extent, lanes) if extent is not None else 0
    if not width or extent < 2 * width:
        return None
    _, lane = sch.split(loop, [None, width])
    written = sch.get(info.block_rv).writes[0].source
    return sch.rfactor(lane, factor_axis=len(written.shape))


def _loops_below(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, outer: s_tir.schedule.LoopRV) -> list:
    loops = sch.get_loops(block)
    anchor = sch.get(outer)
    for index, loop in enumerate(loops):
        if sch.get(loop).same_as(anchor):
            return list(loops[index + 1:])
    return []


def _vectorize_row_block(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, row: s_tir.schedule.LoopRV,
                         lanes: int) -> None:
    """Vectorize a per-element block of the row (normalize, exp) over its own (fused) loops."""
    own = _loops_below(sch, block, row)
    if not own:
        return  # a per-row scalar (mean)
    stmt = sch.get(block)
    extent = 1
    for loop in own:
        value = static_extent(sch, loop)
        if value is None:
            return
        extent *= value
    width = dividing_width(extent, lanes)
    iters = list(stmt.iter_vars)[-len(own):]
    if not width or len(iters) != len(own) or not is_contiguous(stmt, iters, width):
        return
    loop = sch.fuse(*own) if len(own) > 1 else own[0]
    _, vector = sch.split(loop, [None, width])
    sch.vectorize(vector)


def _work(infos: list[SBlockInfo]) -> int:
    """Elements the kernel touches, once per block (with the weight of a load and a store each)."""
    total = 0
    for info in infos:
        elements = 1
        for dom in info.dom():
            elements *= int(dom) if isinstance(dom, (int, tirx.IntImm)) else 64
        total += elements
    return total * 4
