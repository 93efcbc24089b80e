"""CPU schedule rules for 2-d convolutions in NCHW (``nn.conv`` after Relax legalization).

``Conv2d`` handles dense (groups=1) convolutions of any kernel size, stride and dilation as a
matrix product, in one of three orientations, tried in this order:

* pointwise (1x1, stride 1, unpadded) convs over planes of whole vectors, or of rows that
  nearly fill one: vectorized along the flat pixels, weights broadcast in place, NCHW kept
  (``conv_pixels.py``);
* short reductions (C*KH*KW <= 64) with stride 1 (or 2 with 16 lanes) and rows a multiple of
  the vector width:
  tiles of (channels x row vectors), weights broadcast, no packing, NCHW kept;
* everything else: M = output pixels along a row, N = output channels, K = (in channels,
  kernel rows, kernel cols). The output channels are the vectorized axis, so every stride
  works the same (input values are broadcast, never gathered). Two layout changes make that
  possible: the weight is packed from OIHW into ``[O/nr, I, KH, KW, nr]``, so a tile's nr
  channels are one contiguous vector load, and the conv result (an intermediate buffer of the
  fused function) is laid out ``[N, H, W, C]``, so a register tile ``[mr pixels, nr channels]``
  is contiguous and stays in registers.

The packing is a block of its own marked ``meta_schedule.layout_rewrite_preproc``:
``SplitLayoutRewritePreproc`` (in ``schedule_passes``) moves it out of the kernel and
``LiftTransformParams`` runs it once at load time, so no call repacks weights (ResNet-18's 3x3
convs on 7x7 planes: 1.5x). Where those passes do not run, the packing stays in the kernel and
runs per call, as before.

The fused epilogue (bias, residual add, ReLU/ReLU6 clip) runs on each tile right after its
reduction and writes the NCHW output. Padding stays a separate copy, scheduled like a standalone
pad (row loops vectorized, parallel only when big: each parallel loop is a thread wake-up); a
``pad_temp`` that pads nothing (every 1x1 conv) is inlined instead of copying the input on every call. A
batch > 1 is an outer loop.

``DepthwiseConv2d`` handles groups == channels: parallel over channels, the padded channel
plane computed per channel (cache-resident); rows are vectorized with the taps unrolled, a
whole narrow row per step (14- and 7-wide planes, stride-2 rows of at most one vector), whole
vectors on wider stride-1 rows; wide stride-2 rows keep LLVM's scalar loops.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.sym.pattern import detect_linear_equation
from tvm.target import Target

from .common import anchor_for, fitting_lanes, parallelize, static_extent, vector_lanes, vectorize_registers
from .conv_pixels import PixelTile, reads_plane, schedule_pixels


# TVM's marker for a block that only changes a weight's layout: ``SplitLayoutRewritePreproc`` moves
# such a block into a PrimFunc of its own, which ``LiftTransformParams`` then runs once at load time
LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"


@dataclass(frozen=True)
class ConvConfig:
    max_vectors: int = 4  # widest channel tile, in SIMD registers
    # accumulator budget; None: 16 with 16-lane vectors (AVX-512 has 32 registers), else 12. Measured
    # (AVX-512): 16 picks 7x2 tiles on 7- and 14-wide rows, 1.3-1.5x the 4x2 tiles (two ragged
    # halves) that 12 allowed, and left the 56- and 28-wide 3x3 convs as fast or faster
    registers: int | None = None
    mr: int | None = None  # pixels per tile (None: chosen per shape)
    nr_vectors: int | None = None  # channel vectors per tile (None: chosen per shape)
    # a pixel tile that does not divide the row: measured 6x2 tiles on 28-wide rows at half the
    # speed of 4x2 ones (the predicated last tile), so ragged tiles score lower
    ragged_penalty: float = 0.85
    # stride 1, rows a multiple of the vector and a short reduction (C*KH*KW <= row_max_reduction):
    # vectorize along rows instead (no weight packing, no transposed epilogue). Measured: 1.4x
    # for 16- and 24-channel pointwise convs, 0.8x for 64-channel 3x3 ones.
    row_vectors: bool = True
    row_max_reduction: int = 64
    # pointwise convs over planes of whole vectors (or of 14-wide rows with 16 lanes): vectorize along
    # the flat pixels (conv_pixels.py); measured 1.2-2.2x the channel tiles on MobileNetV2's 112x112,
    # 56x56 and 28x28 layers, 1.2-1.5x on its 14x14 ones
    pixel_vectors: bool = True
    pixel_tile: PixelTile | None = None  # None: chosen per shape (conv_pixels.pixel_tile)


def _uses(expr: tirx.Expr, var: tirx.Var) -> bool:
    return any(used.same_as(var) for used in collect_vars_used_in_prim_expr(expr))


@dataclass
class ConvMatch:
    out_channel: tirx.Var
    row: tirx.Var
    col: tirx.Var
    weight_index: int  # position of the weight among the block's reads
    data_index: int
    batch: tirx.Var | None = None  # the batch iter when the batch is not 1


def match_conv2d(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV, operands: frozenset[str] = frozenset({"float32"}),
                 accumulator: str = "float32") -> ConvMatch | None:
    """``out[n, f, y, x] += data[n, c, y*s + ry, x*s + rx] * weight[f, c, ry, rx]`` (float32, or
    operands of a dtype in ``operands`` accumulated in ``accumulator``: int8/uint8 into int32).

    Unit iters are gone after ``normalize_prim_func`` (batch 1, 1x1 kernels), so the block has
    spatial iters (n, f, y, x), or (f, y, x) with output index ``[0, f, y, x]``, and one to three
    reduction iters. The weight is the read indexed by f and reduction vars only.
    """
    block = sch.get(block_rv)
    iters = list(block.iter_vars)
    spatial = [iv.var for iv in iters if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [iv.var for iv in iters if iv.iter_type == tirx.IterVar.CommReduce]
    if len(spatial) + len(reduce) != len(iters) or len(spatial) not in (3, 4) or not reduce:
        return None
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in iters[:len(spatial)]):
        return None  # spatial iters first, then reductions
    if len(block.writes) != 1:
        return None
    out = block.writes[0]
    if str(out.source.dtype) != accumulator or len(out.region) != 4:
        return None
    out_index = [r.min for r in out.region]
    if len(spatial) == 3:  # batch 1: its unit iter is gone
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
        if str(region.source.dtype) not in operands or len(region.region) != 4:
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


def _wide_penalty(vectors: int) -> float:
    """Measured: tiles 4+ vectors wide ran slower than the load count predicts (3x4 half of 6x2)."""
    return 0.7 if vectors >= 4 else 1.0


def _tile_shape(width: int, channels: int, lanes: int, config: ConvConfig) -> tuple[int, int]:
    """(channel vectors, pixels) per register tile; the pixels run along an output row."""
    if channels % lanes != 0:
        return 0, 0
    widths = [v for v in range(1, config.max_vectors + 1) if (channels // lanes) % v == 0]
    if config.nr_vectors:
        widths = [v for v in widths if v == config.nr_vectors]
    best = None
    for vectors in widths:
        rows = [config.mr] if config.mr else range(1, config.registers // vectors + 1)
        for mr in rows:
            mr = min(mr, width)
            if mr * vectors > config.registers and not (config.mr and config.nr_vectors):
                continue
            waste = width / (-(-width // mr) * mr)
            if width % mr:
                waste *= config.ragged_penalty
            score = (mr * vectors / (mr + vectors) * waste * _wide_penalty(vectors), mr * vectors, -vectors)
            if best is None or score > best[0]:
                best = (score, vectors, mr)
    return (best[1], best[2]) if best is not None else (0, 0)


class Conv2d(CPUScheduleRule):
    """Register-tiled NCHW conv2d (groups=1) vectorized over output channels."""

    operands: frozenset[str] = frozenset({"float32"})  # operand dtypes, and what they accumulate in
    accumulator: str = "float32"

    def __init__(self, config: ConvConfig | None = None) -> None:
        self.config = config or ConvConfig()

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        anchor = anchor_for(func, self.is_target_available(target), max_producers=1)
        if anchor is None:
            return None
        sch = anchor.sch
        block = anchor.block.block_rv
        producers = inline_copies(sch, anchor.producers)
        match = match_conv2d(sch, block, self.operands, self.accumulator)
        if match is None:
            return None
        return schedule_conv2d(sch, block, match, producers, anchor.epilogue, target, self.config)


def inline_copies(sch: s_tir.Schedule, producers: list) -> list:
    """Inline producers that only copy (Relax's ``pad_temp`` of an unpadded conv); the rest stay.

    Without padding, ``pad_temp`` is a full copy of the input on every call (1.8 MB for
    MobileNetV2's 144x56x56 projections); inlined, the conv reads its input in place.
    """
    kept = []
    for producer in producers:
        body = sch.get(producer.block_rv).body
        copies = isinstance(body, tirx.stmt.BufferStore) and isinstance(body.value, TensorLoad)
        if copies:
            try:
                sch.compute_inline(producer.block_rv)
                continue
            except Exception:  # pylint: disable=broad-except  (not inlinable: keep the copy)
                pass
        kept.append(producer)
    return kept


def schedule_conv2d(sch, block, match: ConvMatch, producers, epilogue, target: Target, config: ConvConfig):
    lanes = vector_lanes(target)
    loops = sch.get_loops(block)
    if len(loops) != len(sch.get(block).iter_vars):
        return None
    batch = [loops.pop(0)] if match.batch is not None else []
    f, y, x, *reduction = loops
    channels, height, width = (static_extent(sch, loop) for loop in (f, y, x))
    if channels is None or height is None or width is None:
        return None
    work = channels * height * width * (static_extent(sch, batch[0]) or 8 if batch else 1)
    for loop in reduction:
        work *= static_extent(sch, loop) or 1
    if (config.pixel_vectors and not producers and len(reduction) == 1
            and reads_plane(sch, block, match.data_index, match.row, match.col)):
        scheduled = schedule_pixels(sch, block, batch, (f, y, x), reduction, epilogue, target, lanes, work,
                                    config.pixel_tile)
        if scheduled is not None:
            return scheduled
    row_lanes = fitting_lanes(width, lanes)
    reduction_size = work // (channels * height * width * (static_extent(sch, batch[0]) or 8 if batch else 1))
    if (config.row_vectors and reduction_size <= config.row_max_reduction and width % row_lanes == 0
            and row_lanes >= min(lanes, 8)  # 4-lane rows measured 0.65x the channel tiles
            and width >= 2 * row_lanes and _column_stride(sch, block, x, match.data_index) in row_strides(lanes)):
        return _schedule_conv2d_rows(sch, block, batch, (f, y, x), reduction, producers, epilogue, target,
                                     config, row_lanes, work)
    if config.registers is None:
        config = replace(config, registers=16 if lanes >= 16 else 12)
    lanes = fitting_lanes(channels, lanes)
    vectors, mr = _tile_shape(width, channels, lanes, config)
    if not vectors:
        return None
    nr = vectors * lanes

    # the conv result: an intermediate [1, F, H, W] buffer when an epilogue follows; lay it out NHWC
    out_buffer = sch.get(block).writes[0].source
    if epilogue is not None and any(param.same_as(out_buffer) for param in sch.mod["main"].params):
        return None  # the result is also a function output: its layout is not ours to change
    if epilogue is None:
        epilogue_block = sch.cache_write(block, 0, "global")
    else:
        epilogue_block = epilogue.block_rv
    sch.transform_layout(block, ("write", 0), lambda n, c, h, w: (n, h, w, c))

    packed = sch.cache_read(block, match.weight_index, "global")
    sch.transform_layout(block, ("read", match.weight_index), lambda o, i, h, w: (o // nr, i, h, w, o % nr))
    pack_loops = sch.get_loops(packed)
    # [O/nr, I, KH, KW, nr] order: make the nr copy innermost, parallel over the outer blocks
    o_outer, o_inner = sch.split(pack_loops[0], [None, nr])
    sch.reorder(o_outer, *pack_loops[1:], o_inner)
    sch.vectorize(o_inner)  # strided loads, one contiguous vector store: measured 3x the other order
    parallelize(sch, o_outer, target, work)
    sch.annotate(packed, LAYOUT_REWRITE_PREPROC, True)

    for producer in producers:  # the padding copy
        schedule_padding_copy(sch, producer.block_rv, target)

    f0, f1 = sch.split(f, [None, nr])
    x0, x1 = sch.split(x, [None, mr])
    sch.reorder(*batch, f0, y, x0, *reduction, x1, f1)
    sch.unroll(x1)
    vectorize_registers(sch, f1, vectors, lanes)

    sch.reverse_compute_at(epilogue_block, x0)
    epilogue_loops = sch.get_loops(epilogue_block)[len(batch) + 3:]
    if epilogue_loops and width % mr == 0:  # the tile's pixels of a row: 2-7% over scalar stores
        sch.vectorize(epilogue_loops[-1])  # (a ragged last tile has no constant extent to vectorize)
    fused = sch.fuse(*batch, f0, y, x0)
    parallelize(sch, fused, target, work)
    init = sch.decompose_reduction(block, reduction[0])
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    return sch


def schedule_padding_copy(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, target: Target) -> None:
    """A conv's padding copy (``pad_temp``) as the ``Elementwise`` rule schedules a standalone pad: each
    row's loop vectorized, rows parallel only when the copy is big enough to pay a thread wake-up."""
    from .elementwise import schedule_injective_block  # noqa: PLC0415  (elementwise imports conv helpers)

    schedule_injective_block(sch, block, target, vector_lanes(target))


def row_strides(lanes: int) -> tuple[int, ...]:
    """The strides the row orientation takes. Stride 2 gathers its input rows; with 16 lanes that
    paid on MobileNetV2's RGB stem (3 -> 32 channels, 3x3/2): 1.2x the channel tiles alone, 2x inside
    the model, where the channel tiles' NHWC result (1.6 MB) and transposed epilogue miss the cache.
    With AVX2 (8 lanes) the gathered rows ran at 0.5x."""
    return (1, 2) if lanes >= 16 else (1,)


def _schedule_conv2d_rows(sch, block, batch, spatial, reduction, producers, epilogue, target, config, lanes, work):
    """Stride 1 (or 2, ``row_strides``) and output rows a multiple of the vector width: vectorize
    along the output row.

    Register tile: mr output channels x (v vectors of a row); the weights are broadcast scalars
    (no packing), the input row is a contiguous (unaligned) vector load (strided with stride 2),
    the conv result keeps
    its NCHW layout so the epilogue is vectorized along the row too.
    """
    f, y, x = spatial
    width, channels = static_extent(sch, x), static_extent(sch, f)
    widths = [v for v in range(1, 3) if (width // lanes) % v == 0]
    vectors = max(widths)
    mr = min(channels, max(1, (config.registers or 12) // vectors))
    nr = vectors * lanes
    epilogue_block = epilogue.block_rv if epilogue is not None else sch.cache_write(block, 0, "global")
    for producer in producers:  # the padding copy
        schedule_padding_copy(sch, producer.block_rv, target)
    f0, f1 = sch.split(f, [None, mr])
    x0, x1 = sch.split(x, [None, nr])
    sch.reorder(*batch, f0, y, x0, *reduction, f1, x1)
    sch.unroll(f1)
    vectorize_registers(sch, x1, vectors, lanes)
    sch.reverse_compute_at(epilogue_block, x0)
    epilogue_loops = sch.get_loops(epilogue_block)[len(batch) + 3:]
    if epilogue_loops:
        sch.vectorize(epilogue_loops[-1])
    fused = sch.fuse(*batch, f0, y, x0)
    parallelize(sch, fused, target, work)
    init = sch.decompose_reduction(block, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])
    return sch


def match_depthwise(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV,
                    operands: frozenset[str] = frozenset({"float32"}), accumulator: str = "float32") -> bool:
    """``out[0, f, y, x] += data[0, f, y*s + ry, x*s + rx] * weight[f, 0, ry, rx]``, operands of a
    dtype in ``operands`` accumulated in ``accumulator`` (float32; int8/uint8 into int32 in quant.py)."""
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
    if str(out.source.dtype) != accumulator or len(out_index) != 4:
        return False
    if not (isinstance(out_index[0], tirx.IntImm) and out_index[1].same_as(f)
            and out_index[2].same_as(y) and out_index[3].same_as(x)):
        return False
    inputs = [region for region in block.reads if not region.source.same_as(out.source)]
    if len(inputs) != 2 or any(str(r.source.dtype) not in operands or len(r.region) != 4 for r in inputs):
        return False
    data = [r for r in inputs if r.region[1].min.same_as(f) and _uses(r.region[2].min, y) and _uses(r.region[3].min, x)]
    weight = [r for r in inputs if r.region[0].min.same_as(f) and not any(_uses(e.min, y) or _uses(e.min, x) for e in r.region)]
    return len(data) == 1 and len(weight) == 1 and data[0] is not weight[0]


def _column_stride(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV, x_loop, data_index: int | None = None) -> int | None:
    """The stride of the data read along the output column var (1 for stride-1 convolutions)."""
    block = sch.get(block_rv)
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    x = spatial[-1]
    out = block.writes[0].source
    for index, region in enumerate(block.reads):
        if data_index is not None and index != data_index:
            continue
        if region.source.same_as(out) or not _uses(region.region[-1].min, x):
            continue
        found = detect_linear_equation(region.region[-1].min, [x])
        if len(found) == 2 and isinstance(found[0], tirx.IntImm):
            return int(found[0])
    return None


def _row_vector(width: int, lanes: int, stride: int | None) -> int | None:
    """How many output pixels of a row one vectorized step computes; None: leave rows scalar.

    Narrow rows are one step each, a whole row (``<14 x float>``, ``<7 x float>``, LLVM splits
    the loads and stores). Measured with AVX-512: on MobileNetV2's 14x14 and 7x7 planes 2.4x the
    scalar loops, on its 28-wide stride-1 rows 1.3x; with stride 2 (the input gathered) 1.4-3.5x
    on 14- and 7-wide outputs, 0.5x on 56- and 28-wide ones. With AVX2 (8 lanes) 7-wide rows
    gained 1.4x but 14-wide ones (two vectors) lost 0.7x: rows of two vectors only with 16 lanes.
    Wider stride-1 rows take whole vectors of at least 8 lanes.
    """
    if 4 <= width <= (2 * lanes if stride == 1 and lanes >= 16 else lanes):
        return width
    if stride != 1:
        return None
    for candidate in (2 * lanes, lanes, lanes // 2):
        if candidate >= 8 and width % candidate == 0:
            return candidate
    return None


class DepthwiseConv2d(CPUScheduleRule):
    """Depthwise NCHW conv2d: parallel over channels, rows vectorized (``_row_vector``), taps unrolled."""

    def __init__(self, row_step: int | None = None) -> None:
        self.row_step = row_step

    def matches(self, sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
        """Whether ``block`` is a depthwise conv this rule takes (float32; quant.py: int8)."""
        return match_depthwise(sch, block)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        anchor = anchor_for(func, self.is_target_available(target), max_producers=1)
        if anchor is None:
            return None
        sch = anchor.sch
        block = anchor.block.block_rv
        if not self.matches(sch, block):
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
        vectorized = step is not None
        if vectorized:
            for tap in taps:
                if (static_extent(sch, tap) or 0) <= 7:
                    sch.unroll(tap)
            # vectorize along the output row (a gather of the input with stride 2), taps outside the vector
            x0, x1 = sch.split(x, [None, step])
            sch.reorder(f, y, x0, *taps, x1)
            sch.vectorize(x1)
            sch.reverse_compute_at(epilogue, x0)
            epilogue_loops = sch.get_loops(epilogue)[3:]
            if epilogue_loops:
                sch.vectorize(epilogue_loops[-1])
        else:
            # wide strided rows or rows of no whole vectors: scalar loops as they are (LLVM does
            # better with them than with unrolled taps), the epilogue per channel
            sch.reverse_compute_at(epilogue, f)
        for producer in anchor.producers:  # the padded plane of one channel, right before its use
            sch.compute_at(producer.block_rv, f)
        work = 1
        for loop in sch.get_loops(block):
            work *= static_extent(sch, loop) or 1
        parallelize(sch, f, target, work)
        if vectorized:
            init = sch.decompose_reduction(block, taps[0])
            sch.vectorize(sch.get_loops(init)[-1])
        return sch
