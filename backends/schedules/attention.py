"""A CPU schedule rule for optc's fused attention kernel (``nn.attention`` lowered as one TE func).

The PrimFunc (``backends/lower/nn.py: _attention_te``) computes, per (batch, head):
``scores = q @ k^T * scale`` [``masked_scores``], a softmax in four blocks (max, exp, sum,
normalize) [``guarded_weights``: NaN rows to 0], then ``attention = weights @ v``. Untuned, every
block is a serial loop nest over the whole (heads, S, S) score tensor.

The schedule works on blocks of ``mr`` query rows at a time, in parallel over (batch x heads x
row blocks): the rows' scores, softmax and weighted sum all run while the (mr x S) slice of the
scores is in cache. Both products are register-blocked like ``Matmul``; ``k`` is transposed once
per call (a parallel copy) so the score tile is vectorized along the keys.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .common import fitting_lanes, parallelize, static_extent, vector_lanes
from .matmul import MatmulConfig, _tile_shape

CORE_BLOCKS = ("scores", "T_softmax_maxelem", "T_softmax_exp", "T_softmax_expsum", "T_softmax_norm", "attention")
OPTIONAL_BLOCKS = ("masked_scores", "guarded_weights")


# the lane-split softmax of a static key count (backends/lower/attention.py)
PADDED_BLOCKS = ("keys_t", "scores", "row_max_part", "row_max", "row_exp", "row_sum_part", "row_sum", "weights",
                 "attention")


def _blocks(sch: s_tir.Schedule, core: tuple[str, ...] = CORE_BLOCKS,
            optional: tuple[str, ...] = OPTIONAL_BLOCKS) -> dict[str, s_tir.schedule.SBlockRV] | None:
    root = sch.get_sblock("root")
    found = {}
    for block in sch.get_child_blocks(root):
        name = sch.get(block).name_hint
        if name not in core + optional:
            return None
        found[name] = block
    if any(name not in found for name in core):
        return None
    return found


class Attention(CPUScheduleRule):
    """Row-blocked, parallel attention: scores, softmax and the weighted sum per block of queries."""

    def __init__(self, config: MatmulConfig | None = None, transpose_keys: bool = True) -> None:
        self.config = config or MatmulConfig()
        self.transpose_keys = transpose_keys

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        padded = _blocks(sch, PADDED_BLOCKS, ("masked_scores",))
        blocks = padded if padded is not None else _blocks(sch)
        if blocks is None:
            return None
        if str(sch.get(blocks["attention"]).writes[0].source.dtype) != "float32":
            return None  # the tiles assume float32 vectors (a mask may be bool)
        lanes = vector_lanes(target)
        if "masked_scores" in blocks:
            sch.compute_inline(blocks["masked_scores"])
        if "guarded_weights" in blocks:
            sch.reverse_compute_inline(blocks["guarded_weights"])
        out = blocks["attention"]
        tiled = self._tile_weighted_sum(sch, out, lanes)
        if tiled is None:
            return None
        if padded is not None:
            return self._schedule_padded(sch, blocks, target, lanes, tiled)
        head, heads, r0, keys, (n_rows, n_cols, n_keys) = tiled

        # the row block's scores and softmax, right before its weighted sum
        for name in ("T_softmax_norm", "T_softmax_expsum", "T_softmax_exp", "T_softmax_maxelem", "scores"):
            sch.compute_at(blocks[name], r0)

        scores = blocks["scores"]
        scores_reduction = self._schedule_scores(sch, scores, lanes, r0) if self.transpose_keys else None

        outer = [loop for loop in (head, r0) if loop is not None]
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        parallelize(sch, fused, target, 2 * (heads or 1) * n_rows * n_keys * n_cols)
        init = sch.decompose_reduction(out, keys)
        sch.vectorize(sch.get_loops(init)[-1])
        if scores_reduction is not None:
            init = sch.decompose_reduction(*scores_reduction)
            sch.vectorize(sch.get_loops(init)[-1])
        return sch

    def _tile_weighted_sum(self, sch: s_tir.Schedule, out: s_tir.schedule.SBlockRV, lanes: int):
        """The weighted sum as [mr rows x nr cols] register tiles over the keys, the (batch x
        heads) loops fused; returns (head loop, heads, row block loop, keys loop, (rows, cols,
        keys)), or None for a symbolic extent."""
        *batch, rows, cols, keys = sch.get_loops(out)
        extents = [static_extent(sch, loop) for loop in (rows, cols, keys)]
        if any(extent is None for extent in extents):
            return None
        n_rows, n_cols, _ = extents
        lanes_pv = fitting_lanes(n_cols, lanes)
        vectors, mr = _tile_shape(n_rows, n_cols, lanes_pv, self.config)
        nr = min(vectors * lanes_pv, n_cols)
        head = sch.fuse(*batch) if len(batch) > 1 else (batch[0] if batch else None)
        heads = static_extent(sch, head) if head is not None else 1
        r0, r1 = sch.split(rows, [None, mr])
        c0, c1 = sch.split(cols, [None, nr])
        sch.reorder(r0, c0, keys, r1, c1)
        sch.unroll(r1)
        _vectorize_tile(sch, c1, nr, lanes_pv)
        return head, heads, r0, keys, tuple(extents)

    def _schedule_padded(self, sch: s_tir.Schedule, blocks: dict, target: Target, lanes: int,
                         tiled: tuple) -> s_tir.Schedule:
        """The lane-split softmax: everything per block of ``mr`` query rows, in parallel over
        (batch x heads x row blocks), every loop over the (padded) keys vectorized.

        scores (register tiles of rows x key vectors over the depth), the masking inlined, the
        partial maxima and sums as ``KEY_LANES``-wide vectors accumulated over key chunks, exp and
        normalization vectorized, then the weighted sum (tiled by ``_tile_weighted_sum``)."""
        out = blocks["attention"]
        head, heads, r0, keys, (n_rows, n_cols, n_keys) = tiled
        for name in ("weights", "row_sum", "row_sum_part", "row_exp", "row_max", "row_max_part", "scores"):
            sch.compute_at(blocks[name], r0)

        # scores: [rows x 2 key vectors] register tiles, the depth innermost but one
        own = _loops_below(sch, blocks["scores"], r0)
        i1, j, d = own if len(own) == 3 else (None, *own)
        step = 2 * lanes if n_keys % (2 * lanes) == 0 and n_keys >= 4 * lanes else lanes
        if n_keys % step:
            step = fitting_lanes(n_keys, lanes)
        _tile_keys(sch, j, d, i1, step, lanes)
        # partial maxima / sums: the lanes innermost (a vector), the key chunks around them
        chunks = {}
        for name in ("row_max_part", "row_sum_part"):
            own = _loops_below(sch, blocks[name], r0)
            lane, chunks[name] = own[-2], own[-1]
            sch.reorder(chunks[name], lane)
            sch.vectorize(lane)
        for name in ("row_exp", "weights"):
            _, vector = sch.split(_loops_below(sch, blocks[name], r0)[-1], [None, fitting_lanes(n_keys, lanes)])
            sch.vectorize(vector)
        # the transposed keys: once per call, parallel over (batch x heads)
        keys_t = sch.get_loops(blocks["keys_t"])
        if len(keys_t) > 2:
            parallelize(sch, sch.fuse(*keys_t[:-2]) if len(keys_t) > 3 else keys_t[0], target,
                        2 * (heads or 1) * n_rows * n_keys * n_cols)

        outer = [loop for loop in (head, r0) if loop is not None]
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        parallelize(sch, fused, target, 2 * (heads or 1) * n_rows * n_keys * n_cols)
        for block, loop in ((out, keys), (blocks["scores"], d)):
            init = sch.decompose_reduction(block, loop)
            sch.vectorize(sch.get_loops(init)[-1])
        for name, chunk in chunks.items():
            init = sch.decompose_reduction(blocks[name], chunk)
            sch.vectorize(sch.get_loops(init)[-1])
        return sch

    def _schedule_scores(self, sch, scores, lanes, row_block):
        """scores[i, j] = sum_d q[i, d] * k[j, d]: transpose k once, then vectorize over keys j.

        Keys that fill no whole vector (197 = 12 x 16 + 5) are split off with ``loop_partition``
        into a scalar tail. Returns the (block, loop) whose reduction init is decomposed after
        the parallel loop exists (TVM refuses ``parallel`` above a decomposed reduction).
        """
        block = sch.get(scores)
        out = block.writes[0].source
        key_reads = [index for index, region in enumerate(block.reads)
                     if not region.source.same_as(out) and region.source.name == _key_buffer_name(block)]
        if len(key_reads) != 1:
            return None
        key_index = key_reads[0]
        sch.cache_read(scores, key_index, "global")
        sch.transform_layout(scores, ("read", key_index),
                             lambda *index: (*index[:-2], index[-1], index[-2]))
        own = _loops_below(sch, scores, row_block)
        if len(own) not in (2, 3):
            return None
        # a single query row (a decode step) leaves no row loop once computed at the row block
        i1, j, d = own if len(own) == 3 else (None, *own)
        n_keys = static_extent(sch, j)
        if n_keys is None:
            return None
        step = 2 * lanes if n_keys >= 4 * lanes else lanes
        main = n_keys - n_keys % step
        if main == 0:
            return None
        if i1 is not None:
            sch.reorder(j, i1, d)
        if main != n_keys:
            # keys [0, main) in full vectors; the ragged tail [main, S) as a plain loop of its own
            block_name, loop_name = sch.get(scores).name_hint, sch.get(j).loop_var.name
            sch.loop_partition(j, [main, None])
            scores = _partition_block(sch, block_name, loop_name, 0)
            if scores is None:
                return None
            own = _loops_below(sch, scores, row_block)
            j, i1, d = own if len(own) == 3 else (own[0], None, own[1])
        _tile_keys(sch, j, d, i1, step, lanes)
        return scores, d


def _tile_keys(sch, j, d, i1, step: int, lanes: int) -> None:
    """The scores as [rows x ``step`` keys] register tiles: keys split by ``step`` (vectorized),
    the depth ``d`` around the unrolled rows ``i1`` (None for a single query row)."""
    j0, j1 = sch.split(j, [None, step])
    if i1 is not None:
        sch.reorder(j0, d, i1, j1)
        sch.unroll(i1)
    else:
        sch.reorder(j0, d, j1)
    _vectorize_tile(sch, j1, step, lanes)


def _loops_below(sch, block, outer) -> list:
    """The loops of ``block`` nested inside ``outer`` (its own loops after ``compute_at``)."""
    loops = sch.get_loops(block)
    target = sch.get(outer)
    for index, loop in enumerate(loops):
        if sch.get(loop).same_as(target):
            return list(loops[index + 1:])
    return list(loops[-3:])


def _partition_block(sch, block_name: str, loop_name: str, part: int):
    """The block of one part after ``loop_partition`` (TVM names it ``<block>_<loop><part>``)."""
    try:
        return sch.get_sblock(f"{block_name}_{loop_name}{part}")
    except Exception:  # pylint: disable=broad-except
        return None


def _key_buffer_name(block) -> str:
    """The key operand of the scores block: the read indexed [..., j, d] (d the reduction var)."""
    iters = list(block.iter_vars)
    j, d = iters[-2].var, iters[-1].var
    for region in block.reads:
        index = [r.min for r in region.region]
        if len(index) >= 2 and index[-1].same_as(d) and index[-2].same_as(j):
            return region.source.name
    return ""


def _vectorize_tile(sch, loop, width: int, lanes: int) -> None:
    if width > lanes and width % lanes == 0:
        outer, inner = sch.split(loop, [None, lanes])
        sch.unroll(outer)
        sch.vectorize(inner)
    else:
        sch.vectorize(loop)
