"""Pointwise (1x1, stride 1, unpadded) NCHW convolutions as products over flattened pixels.

In NCHW a pointwise convolution is the matrix product ``out[f, p] = sum_c w[f, c] * x[c, p]``
over the ``p = y * W + x`` pixels of a plane, which are contiguous in both the input and the
output. When the plane holds whole SIMD vectors (56x56, 28x28, 112x112 planes with 16 lanes), or
a row nearly fills one (14x14 planes: vectors of 14 pixels, one row each), this rule vectorizes
along the pixels:

    parallel for (pixel tile p0, channel tile f0):     # nr = v vectors of pixels, mr channels
        acc[mr, nr] = 0
        for c:                                          # the whole reduction in registers
            for f1 in unroll(mr):
                for p1 in vectorize(nr):
                    acc[f1, p1] += w[f0*mr + f1, c] * x[c, p0*nr + p1]   # w broadcast
        out[f0*mr + f1, p0*nr + p1] = epilogue(acc)     # bias, residual, clip: contiguous rows

Nothing is packed (each weight is a broadcast scalar read in place) and nothing is transposed:
the conv result, its epilogue and the output keep the NCHW order. The conv block, its result
buffer and the epilogue are re-indexed from (y, x) to the flat pixel ``p`` first
(``transform_block_layout`` / ``transform_layout``), so that a tile of pixels that spans two
rows is still one exact region when the epilogue moves into it: with (y, x) TVM would widen the
region to whole rows, and the epilogue would read results other tiles have not reduced yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from .common import parallelize, static_extent, vectorize_registers


@dataclass(frozen=True)
class PixelTile:
    """Register tile of the pixel orientation: ``channels`` output channels x ``vectors`` pixel vectors."""

    channels: int
    vectors: int


# Measured on AVX-512 (1 thread, MobileNetV2's 56x56 / 28x28 / 112x112 pointwise convs):
# 6 channels x 2 vectors ran at 210-240 GFLOP/s; 8x2 was as fast on some shapes and 0.6x on
# the 16 -> 96 and 24 -> 144 ones, 4x4 and 6x4 were 0.4-0.8x. On 14x14 planes (14-pixel
# vectors) 6x2 and 8x2 ran alike (190-220 GFLOP/s), 4x2 and 12x1 at 0.7-0.8x.
CHANNEL_PREFERENCE = (6, 8, 4, 12, 3, 2, 1)
PIXEL_VECTORS = 2


def pixel_tile(channels: int, pixels: int, lanes: int, tile: PixelTile | None = None) -> PixelTile:
    """The tile for ``channels`` outputs over ``pixels`` (a multiple of ``lanes``): channels that
    divide the count (no ragged last tile), vectors that divide the pixel vectors."""
    if tile is not None:
        return tile
    mr = next(m for m in CHANNEL_PREFERENCE if channels % m == 0)
    vectors = PIXEL_VECTORS
    while (pixels // lanes) % vectors:
        vectors -= 1
    return PixelTile(mr, vectors)


def pixel_lanes(height: int, width: int, lanes: int) -> int | None:
    """The pixels one vector holds: ``lanes`` when the plane is whole vectors, else one row when a
    row nearly fills a vector (14 of 16 lanes; LLVM splits the loads and stores of
    ``<14 x float>``); None when neither (the channel tiles take the conv).

    Measured on MobileNetV2's 14x14 planes (AVX-512): 14-pixel vectors ran at 1.2-1.5x the channel
    tiles with packed weights; on its 7x7 planes 7-pixel vectors (7 of 16 lanes) ran at 0.5x, and
    with AVX2 7 of 8 lanes still at 0.65-0.8x, so rows fill only 16-lane vectors.
    """
    if (height * width) % lanes == 0:
        return lanes
    if lanes >= 16 and 4 * width >= 3 * lanes and width <= lanes:
        return width
    return None


def reads_plane(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV, data_index: int, row: tirx.Var,
                col: tirx.Var) -> bool:
    """Whether the block reads its data at exactly ``[..., c, y, x]`` (stride 1, no taps, no padding)."""
    region = sch.get(block_rv).reads[data_index].region
    return region[-2].min.same_as(row) and region[-1].min.same_as(col)


def _epilogue_reads_plane(sch: s_tir.Schedule, block_rv, epilogue_rv) -> bool:
    """The epilogue's last two iters index the last two axes of the conv result (so they are y, x)."""
    written = sch.get(block_rv).writes[0].source
    epilogue = sch.get(epilogue_rv)
    iters = [iv.var for iv in epilogue.iter_vars]
    if len(iters) < 2:
        return False
    for region in epilogue.reads:
        if region.source.same_as(written):
            index = [r.min for r in region.region]
            return index[-2].same_as(iters[-2]) and index[-1].same_as(iters[-1])
    return False


def schedule_pixels(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, batch: list, spatial: tuple, reduction: list,
                    epilogue, target: Target, lanes: int, work: int,
                    tile: PixelTile | None = None) -> s_tir.Schedule | None:
    """Schedule a matched pointwise conv block over flat pixels; None (schedule untouched) when it cannot."""
    f, y, x = spatial
    channels, height, width = (static_extent(sch, loop) for loop in spatial)
    if channels is None or height is None or width is None:
        return None
    lanes = pixel_lanes(height, width, lanes)
    if lanes is None:
        return None
    out_buffer = sch.get(block).writes[0].source
    if any(param.same_as(out_buffer) for param in sch.mod["main"].params) and epilogue is not None:
        return None  # the result is also a function output: its layout is not ours to change
    if epilogue is not None and not _epilogue_reads_plane(sch, block, epilogue.block_rv):
        return None
    tile = pixel_tile(channels, height * width, lanes, tile)
    nr = tile.vectors * lanes

    epilogue_block = epilogue.block_rv if epilogue is not None else sch.cache_write(block, 0, "global")
    sch.transform_layout(block, ("write", 0), lambda n, c, h, w: (n, c, h * width + w))
    outer_iters = len(batch)  # the batch iter, when there is one, comes before f
    block_iters = len(sch.get(block).iter_vars)
    sch.transform_block_layout(block, tirx.IndexMap.from_func(
        lambda *v: (*v[:outer_iters + 1], v[outer_iters + 1] * width + v[outer_iters + 2], *v[outer_iters + 3:]),
        ndim=block_iters))
    epilogue_iters = len(sch.get(epilogue_block).iter_vars)
    sch.transform_block_layout(epilogue_block, tirx.IndexMap.from_func(
        lambda *v: (*v[:-2], v[-2] * width + v[-1]), ndim=epilogue_iters))

    loops = sch.get_loops(block)
    batch = loops[:outer_iters]
    f, pixels, *reduction = loops[outer_iters:]
    f0, f1 = sch.split(f, [None, tile.channels])
    p0, p1 = sch.split(pixels, [None, nr])
    # pixel tiles outside: one [C, nr] input panel (L1-sized) serves every channel tile
    outer = [*batch, p0, f0]
    sch.reorder(*outer, *reduction, f1, p1)
    sch.unroll(f1)
    vectorize_registers(sch, p1, tile.vectors, lanes)
    sch.reverse_compute_at(epilogue_block, outer[-1])
    epilogue_loops = sch.get_loops(epilogue_block)[len(outer):]
    if epilogue_loops:
        sch.vectorize(epilogue_loops[-1])
    fused = sch.fuse(*outer)
    parallelize(sch, fused, target, work)
    init = sch.decompose_reduction(block, reduction[0])
    sch.vectorize(sch.get_loops(init)[-1])
    return sch
