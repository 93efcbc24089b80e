"""int8 products on AVX-512 VNNI: ``vpdpbusd`` kernels for ``quant.linear`` / ``quant.matmul`` / ``quant.conv``.

``vpdpbusd`` adds, in each of 16 int32 lanes, the sum of four products of an unsigned byte and a
signed byte. optc's int8 activations are signed, so one operand is shifted into uint8 on the fly
(``a ^ 0x80`` is ``a + 128``) and the excess ``128 * sum_k(other operand)`` is taken off the
accumulator (it is computed with vpdpbusd too, against bytes of 0x80). Everything stays exact in
wrapping int32: the kernels are bit for bit the reference interpreter's results.

A rule replaces the product of a fused PrimFunc (``find_anchor``: one reduction, an epilogue
after it) by a hand-written kernel (``vnni_kernels.py``), through ``tensorize`` with an
intrinsic made for that one product: its description is the product's own loop nest (init and
update), so it matches by construction. The epilogue (bias, requantize, dequantize, activation)
stays a loop nest of its own over the int32 result, vectorized and parallel.

``VnniDense`` (``quant.linear``, and ``quant.matmul`` by a 2-d ``(K, N)`` operand)::

    parallel for each row: a_u8[row] = a[row] ^ 0x80                # 64 bytes at a time
    parallel for each panel of nr = 16 * nv columns:
        colsum[nv x 16] = 128 * sum_k w[k, panel]               # vpdpbusd with 0x80 bytes
        for each tile of mr rows:
            acc[mr x nv x 16] = 0
            for k in 0, 4, ..., K - 4:
                acc[i, v] = vpdpbusd(acc[i, v], broadcast(a_u8[row i, k:k+4]), w_block[k/4, v])
            out[tile] = acc - colsum

``w_block`` is the weight in 16 x 4 blocks, ``[ceil(N/16), K/4, 16, 4]``, zero-padded to whole
blocks; it is made once when the model loads (a copy block marked
``meta_schedule.layout_rewrite_preproc``, which ``SplitLayoutRewritePreproc`` and
``LiftTransformParams`` in ``schedule_passes`` move out of the kernel to load time). The last
vector of a ragged N stores only its real lanes. A signed A is shifted to uint8 (``^ 0x80``) once
per call, before the tiles, so a tile step broadcasts each row's 4 bytes straight from memory.
K must be a multiple of 4.

``VnniConv2d`` (``quant.conv``, groups 1, batch 1, NCHW) takes one of two forms:

* pointwise (1x1, stride 1, unpadded int8 input, C % 4 == 0, a plane of >= 128 pixels): the
  dense kernel on the NCHW buffers as they are, ``out[F, H*W] = W[F, C] @ X[C, H*W]`` (the weight
  broadcast and shifted, 16 pixels of 4 channels interleaved), epilogue per channel plane;
* otherwise: per call the (padded) input becomes ``[H, W, C4]`` bytes shifted to uint8 (C4: C
  rounded up to 4, zero weights for the extra channels); the weight ``[F/16, KH, KW, C4/4, 16, 4]``
  is packed at load time (F % 16 == 0 and C % 4 == 0; else per call, F padded with zero filters);
  tiles of mr pixels along an output row x nv * 16 filters accumulate over (ky, kx, C4/4). The
  int32 result is NHWC when an epilogue follows (which transposes it in 16-pixel blocks), else
  stored NCHW lane by lane.

``VnniDepthwiseConv2d`` (vnni_depthwise.py) takes depthwise int8 convs: the taps of one kernel row
are the four bytes of a lane's dot product. None of these rules applies without ``+avx512vnni`` in the target (``has_vnni``); the integer
schedules of ``quant.py`` are then the ones that run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.script import tirx as T
from tvm.sym.pattern import detect_linear_equation
from tvm.target import Target, codegen

from .common import anchor_for, num_cores, parallelize, static_extent, vector_lanes
from .conv import inline_copies, match_conv2d
from .elementwise import schedule_injective_block
from .matmul import match_dense
from .vnni_epilogue import Padding, fold_epilogue, fold_prologue, match_epilogue, match_padding
from .vnni_kernels import LANES, ConvShape, conv_kernel, dense_kernel


def has_vnni(target: Target) -> bool:
    """Whether LLVM may emit AVX-512 VNNI (``vpdpbusd`` on zmm) for ``target``."""
    try:
        return bool(codegen.target_has_features("avx512vnni", target)) and bool(
            codegen.target_has_features("avx512bw", target))
    except Exception:  # non-x86 LLVM targets
        return False


@dataclass(frozen=True)
class VnniConfig:
    nv: int | None = None  # 16-lane vectors per tile row (None: chosen per shape)
    mr: int | None = None  # rows (dense) or pixels (conv) per tile
    registers: int = 15  # accumulator vectors: their buffer must stay under 1 KB (KernelText.allocate)
    fold_epilogue: bool = True  # dense, pointwise conv: the epilogue in the kernel's stores (vnni_epilogue.py)


# ---- the tensorize plumbing -------------------------------------------------------------------------------

def _whole_product(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> s_tir.schedule.SBlockRV:
    """The product as one block: its whole loop nest blockized (the zeroing lifted into its init)."""
    return sch.blockize(sch.get_loops(block)[0], preserve_unit_iters=False)


def _register_whole_nest(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, operands: list, output,
                         impl: tirx.PrimFunc, key: str) -> str:
    """An intrinsic whose description is ``block``'s whole computation: zero the result, then the
    reduction nest (``_whole_product`` on a copy of the schedule). Its regions are the description's;
    it is printed and parsed again so that the description has buffers of its own (tensorize
    maps them onto the function's). The kernel thus writes the result, it never reads it.
    """
    copy = s_tir.Schedule(sch.mod["main"])
    whole = copy.get(_whole_product(copy, copy.get_sblock(sch.get(block).name_hint)))
    desc = tirx.PrimFunc([*operands, output], s_tir.SBlockRealize([], True, s_tir.SBlock(
        [], list(whole.reads), list(whole.writes), "root", whole.body, whole.init)))
    text = desc.script().replace("@T.prim_func(private=True)", "@T.prim_func(private=True, s_tir=True)")
    desc = tvm.script.parser.parse(text, extra_vars={"T": T})
    intrin = "optc_vnni_" + hashlib.sha1((text + key).encode()).hexdigest()[:16]
    s_tir.TensorIntrin.register(intrin, desc, impl, override=True)
    return intrin


def _schedule_elementwise(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV | None, target: Target,
                          work: int | None = None) -> None:
    """An elementwise nest as one fused loop: 16-wide vectors, parallel chunks."""
    if block is None:
        return
    loops = sch.get_loops(block)
    if not loops:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = static_extent(sch, fused)
    if extent is None:
        return
    work = work if work is not None else extent * 8
    if extent % LANES == 0 and extent >= 2 * LANES:
        outer, inner = sch.split(fused, [None, LANES])
        sch.vectorize(inner)
        parallelize(sch, outer, target, work)
    else:
        parallelize(sch, fused, target, work)


def _schedule_planes(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV | None, target: Target, work: int) -> None:
    """An elementwise NCHW nest: parallel over (channels, pixel chunks), 16 pixels of one channel a vector.

    Fusing all loops instead would make the channel index vary inside a vector (gathers of the
    per-channel bias and multipliers, a division per lane): measured 10x slower.
    """
    if block is None:
        return
    loops = sch.get_loops(block)
    extents = [static_extent(sch, loop) for loop in loops]
    if len(loops) < 3 or any(extent is None for extent in extents):
        _schedule_elementwise(sch, block, target, work)
        return
    *outer, y, x = loops
    plane = sch.fuse(y, x)
    size = extents[-1] * extents[-2]
    lanes = next((lanes for lanes in (LANES, 8, 4) if size % lanes == 0), None)
    if lanes is not None:
        plane, inner = sch.split(plane, [None, lanes])
        sch.vectorize(inner)
    parallelize(sch, sch.fuse(*outer, plane), target, work)


def _schedule_padding(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, target: Target) -> None:
    """A padding copy before a conv (``pad_temp``): as the ``Elementwise`` rule schedules a standalone
    pad, rows parallel and each row's loop vectorized (TVM scalarizes the ``if_then_else`` lanes).
    ``_schedule_planes`` fused rows and columns, so every lane divided its flat index back into a
    row and a column: 3 ms for MobileNetV2's first 32 x 114 x 114 depthwise input."""
    schedule_injective_block(sch, block, target, vector_lanes(target, 8))


def padding_to_take_over(sch: s_tir.Schedule, producers: list, data, target: Target) -> Padding | None:
    """The padding block before a conv whose kernel pads ``data`` itself (``fold_prologue`` then
    removes the block), or None after scheduling the producers as copies of their own."""
    padding = match_padding(sch, producers[0].block_rv) if len(producers) == 1 else None
    if padding is not None and padding.block.body.buffer.same_as(data):
        return padding
    for producer in producers:
        _schedule_padding(sch, producer.block_rv, target)
    return None


def _schedule_transposed_epilogue(sch: s_tir.Schedule, epilogue: s_tir.schedule.SBlockRV, target: Target,
                                  work: int) -> None:
    """The epilogue of a conv whose result is NHWC and output NCHW: per output row, blocks of 16
    pixels x all channels (16 pixels' channels stay in L1 while each channel's 16 outputs are
    written as one vector)."""
    loops = sch.get_loops(epilogue)
    extents = [static_extent(sch, loop) for loop in loops]
    if len(loops) not in (3, 4) or any(extent is None for extent in extents):
        _schedule_elementwise(sch, epilogue, target, work)
        return
    *unit, f, y, x = loops
    width = extents[-1]
    lanes = next((lanes for lanes in (LANES, 8, 4) if width % lanes == 0), None)
    if lanes is None:
        sch.reorder(*unit, y, f, x)
        parallelize(sch, y, target, work)
        return
    x0, x1 = sch.split(x, [None, lanes])
    sch.reorder(*unit, y, x0, f, x1)
    sch.vectorize(x1)
    parallelize(sch, sch.fuse(y, x0), target, work)


def _tensorize(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, operands: list, output, impl: tirx.PrimFunc,
               key: str) -> s_tir.schedule.SBlockRV:
    """Replace ``block``'s nest by ``impl``; the impl's own buffers (registers) move with it.
    Returns the block that now holds the kernel.

    Tensorize keeps only the body of the impl's root block, so its ``alloc_buffers`` are added
    to the tensorized block afterwards; TVM then places each allocation in the innermost loop
    that holds all its uses (inside the parallel loop: one per thread).
    """
    intrin = _register_whole_nest(sch, block, operands, output, impl, key)
    outer = _whole_product(sch, block)
    sch.tensorize(outer, intrin, preserve_unit_iters=False)
    names = {buffer.name for buffer in impl.body.block.alloc_buffers}
    declared = list(sch.mod["main"].body.block.alloc_buffers) + list(sch.get(outer).alloc_buffers)
    # tensorize renews the impl's buffers: find the copies among the buffers the function touches
    own = [buffer for buffer in s_tir.analysis.detect_buffer_access_lca(sch.mod["main"]).keys()
           if buffer.name in names and not any(buffer.same_as(d) for d in declared)]
    stmt = sch.get(outer)
    # the kernel writes every element of the result: the zeroing (the block's init) is part of it
    replaced = s_tir.SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint, stmt.body, None,
                            list(stmt.alloc_buffers) + own, stmt.match_buffers, stmt.annotations)
    sch.state.replace(sch.get_sref(outer), replaced, {stmt: replaced})
    return outer


def _tensorize_folding(sch: s_tir.Schedule, anchor, operands: list, result, kernel: tirx.PrimFunc, key: str,
                       product: tuple[int, int], config: VnniConfig, schedule_epilogue) -> s_tir.Schedule:
    """``_tensorize`` the anchor's product by a dense kernel (a ``(rows, columns)`` product), with the
    epilogue folded into the kernel's stores where ``match_epilogue`` allows, else scheduled as a
    nest of its own by ``schedule_epilogue(block or None)``."""
    epilogue = None
    if anchor.epilogue is not None and config.fold_epilogue:
        epilogue = match_epilogue(sch, anchor.epilogue.block_rv, result, *product)
    if epilogue is None:
        schedule_epilogue(anchor.epilogue.block_rv if anchor.epilogue else None)
    outer = _tensorize(sch, anchor.block.block_rv, operands, result, kernel, key)
    if epilogue is None:
        return sch
    return fold_epilogue(sch, outer, anchor.epilogue.block_rv, epilogue, result)


def _int(value) -> int:
    return int(value.value) if hasattr(value, "value") else int(value)


# ---- dense: (rows, K) x (K, N) ------------------------------------------------------------------------------

def _dense_tile_shape(rows: int, vectors: int, config: VnniConfig, cores: int) -> tuple[int, int]:
    """(nv, mr): nv 16-lane vectors per row dividing the 16-column blocks, leaving work for every core.

    Measured (64 x 256 x 512 and 64 x 1024 x 256, 2 threads): 2 x 8 and 2 x 12 tiles ~300 GOPS,
    3 x 5 and 4 x 4 20-25% slower.
    """
    if config.nv:
        nv = config.nv if vectors % config.nv == 0 else 1
    else:
        choices = [nv for nv in (2, 4, 1, 3) if vectors % nv == 0]
        enough = [nv for nv in choices if vectors // nv >= 2 * cores]
        nv = (enough or choices)[0]
    mr = config.mr or max(1, config.registers // nv)
    return nv, max(1, min(mr, rows))


INTEGER_ACTIVATIONS = frozenset({"int8", "uint8"})


def _flat_rows(index: list, shape: list, row_vars: list, row_extents: list[int]) -> bool:
    """Whether ``buffer[index..., last]`` is the row-major flattening of the row iters (unit dims constant)."""
    dims = [(entry, _int(size)) for entry, size in zip(index, shape)]
    used = [(entry, size) for entry, size in dims if not isinstance(entry, tirx.IntImm)]
    if any(isinstance(entry, tirx.IntImm) and (int(entry) != 0 or size != 1) for entry, size in dims):
        return False
    kept = [(var, extent) for var, extent in zip(row_vars, row_extents) if extent != 1 or any(e.same_as(var) for e, _ in used)]
    if len(used) != len(kept):
        return False
    return all(entry.same_as(var) and size == extent for (entry, size), (var, extent) in zip(used, kept))


@dataclass(frozen=True)
class DenseMatch:
    activations: tirx.Var
    weight: tirx.Var
    result: tirx.Var
    rows: int
    depth: int
    columns: int
    a_dtype: str


def match_vnni_dense(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV) -> DenseMatch | None:
    """``C[rows..., n] (+)= A[rows..., k] * W[k, n]``: int8/uint8 A, a 2-d int8 W, int32 C, static sizes,
    A and C row-major over the rows, K a multiple of 4."""
    if not match_dense(sch, block_rv, INTEGER_ACTIVATIONS, "int32"):
        return None
    block = sch.get(block_rv)
    iters = list(block.iter_vars)
    row_vars = [iv.var for iv in iters[:-2]]
    n_var, k_var = iters[-2].var, iters[-1].var
    extents = [iv.dom.extent for iv in iters]
    if not all(isinstance(extent, tirx.IntImm) for extent in extents):
        return None
    row_extents = [int(extent) for extent in extents[:-2]]
    columns, depth = int(extents[-2]), int(extents[-1])
    out = block.writes[0]
    inputs = [region for region in block.reads if not region.source.same_as(out.source)]
    weight = [r for r in inputs if len(r.region) == 2 and r.region[0].min.same_as(k_var) and r.region[1].min.same_as(n_var)]
    if len(weight) != 1 or str(weight[0].source.dtype) != "int8":
        return None
    activations = [r for r in inputs if r is not weight[0]][0]
    w_shape = [_int(size) for size in weight[0].source.shape]
    if w_shape != [depth, columns] or depth % 4:
        return None
    a_index = [r.min for r in activations.region]
    c_index = [r.min for r in out.region]
    if not a_index[-1].same_as(k_var) or _int(activations.source.shape[-1]) != depth:
        return None
    if not c_index[-1].same_as(n_var) or _int(out.source.shape[-1]) != columns:
        return None
    if not _flat_rows(a_index[:-1], list(activations.source.shape[:-1]), row_vars, row_extents):
        return None
    if not _flat_rows(c_index[:-1], list(out.source.shape[:-1]), row_vars, row_extents):
        return None
    rows = 1
    for extent in row_extents:
        rows *= extent
    return DenseMatch(activations.source, weight[0].source, out.source, rows, depth, columns,
                      str(activations.source.dtype))


class VnniRule(CPUScheduleRule):
    """What the VNNI rules share: their config, and a func's anchor where the target has VNNI."""

    max_producers = 1  # blocks before the product (a padding or identity copy)

    def __init__(self, config: VnniConfig | None = None) -> None:
        self.config = config or VnniConfig()

    def anchor(self, func: tirx.PrimFunc, target: Target):
        return anchor_for(func, has_vnni(target), self.max_producers)

    def match_conv(self, func: tirx.PrimFunc, target: Target, matcher):
        """(anchor, its block, the producers left once identity copies are inlined, what ``matcher``
        found in the block) for the conv rules; None when the func has no anchor or no match."""
        anchor = self.anchor(func, target)
        if anchor is None:
            return None
        block = anchor.block.block_rv
        producers = inline_copies(anchor.sch, anchor.producers)  # an unpadded input is read in place
        found = matcher(anchor.sch, block)
        return None if found is None else (anchor, block, producers, found)


class VnniDense(VnniRule):
    """int8 dense products (``quant.linear``, ``quant.matmul`` by a constant-shaped 2-d weight) on vpdpbusd."""

    max_producers = 0

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        anchor = self.anchor(func, target)
        if anchor is None:
            return None
        sch, block = anchor.sch, anchor.block.block_rv
        match = match_vnni_dense(sch, block)
        if match is None or match.columns < LANES:
            return None
        nv, mr = _dense_tile_shape(match.rows, -(-match.columns // LANES), self.config, num_cores(target))
        # the weight in 16 x 4 blocks, a ragged N zero-padded to whole blocks (GPT-2's 50257-word head)
        weight = _pack_at_load(sch, block, match.weight, lambda k, n: (n // LANES, k // 4, n % LANES, k % 4), target,
                               padded=match.columns % LANES != 0)
        kernel = dense_kernel(match.rows, match.depth, match.columns, match.a_dtype == "int8", nv, mr, match.a_dtype,
                              prepacked=True)
        return _tensorize_folding(sch, anchor, [match.activations, weight], match.result, kernel, f"dense{nv}x{mr}packed",
                                  (match.rows, match.columns), self.config, lambda epilogue: _schedule_elementwise(
                                      sch, epilogue, target, match.rows * match.columns * 8))


# ---- conv2d: NCHW, groups 1 -----------------------------------------------------------------------------------

def _linear(expr, variables: list) -> list[int] | None:
    """Integer coefficients of ``expr`` in ``variables`` (then the constant), or None."""
    found = detect_linear_equation(expr, variables)
    if len(found) != len(variables) + 1 or not all(isinstance(value, tirx.IntImm) for value in found):
        return None
    return [int(value) for value in found]


def match_vnni_conv(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV) -> tuple[ConvShape, tirx.Var, tirx.Var] | None:
    """A batch-1 int8 conv the VNNI kernel computes: (shape, data buffer, weight buffer), or None."""
    match = match_conv2d(sch, block_rv, INTEGER_ACTIVATIONS, "int32")
    if match is None or match.batch is not None:
        return None
    block = sch.get(block_rv)
    reads = list(block.reads)
    data, weight = reads[match.data_index], reads[match.weight_index]
    if str(weight.source.dtype) != "int8" or len(data.region) != 4:
        return None
    reduce = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    d_index = [r.min for r in data.region]
    w_index = [r.min for r in weight.region]
    if not (isinstance(d_index[0], tirx.IntImm) and int(d_index[0]) == 0):
        return None
    channel = [var for var in reduce if d_index[1].same_as(var)]
    if len(channel) != 1 or not w_index[1].same_as(channel[0]):
        return None
    taps = [var for var in reduce if not var.same_as(channel[0])]
    rows = _linear(d_index[2], [match.row, *taps])
    cols = _linear(d_index[3], [match.col, *taps])
    if rows is None or cols is None or rows[-1] or cols[-1]:
        return None
    # each tap var moves exactly one of (data row, data col) and is the weight's index there
    tap_row = [var for position, var in enumerate(taps) if rows[1 + position] and not cols[1 + position]]
    tap_col = [var for position, var in enumerate(taps) if cols[1 + position] and not rows[1 + position]]
    if len(tap_row) + len(tap_col) != len(taps) or len(tap_row) > 1 or len(tap_col) > 1:
        return None
    w_shape = tuple(_int(size) for size in weight.source.shape)
    filters, channels, kernel_h, kernel_w = w_shape
    for position, (tap, extent) in enumerate(((tap_row, kernel_h), (tap_col, kernel_w))):
        entry = w_index[2 + position]
        if tap and not entry.same_as(tap[0]) or not tap and not (isinstance(entry, tirx.IntImm) and extent == 1):
            return None
    dilation_h = rows[1 + taps.index(tap_row[0])] if tap_row else 1
    dilation_w = cols[1 + taps.index(tap_col[0])] if tap_col else 1
    extents = {iv.var: iv.dom.extent for iv in block.iter_vars}
    out_h, out_w = _int(extents[match.row]), _int(extents[match.col])
    if _int(extents[match.out_channel]) != filters:
        return None
    shape = ConvShape(channels, filters, (kernel_h, kernel_w), (rows[0], cols[0]), (dilation_h, dilation_w),
                      tuple(_int(size) for size in data.source.shape), (out_h, out_w), str(data.source.dtype))
    return shape, data.source, weight.source


def _conv_tile_shape(width: int, vectors: int, config: VnniConfig) -> tuple[int, int]:
    """(nv, mr): mr output pixels of a row x nv 16-channel vectors, mr dividing the row when it can."""
    nv = config.nv if config.nv and vectors % config.nv == 0 else next(nv for nv in (2, 1) if vectors % nv == 0)
    budget = config.registers // nv
    if config.mr:
        return nv, min(config.mr, width)
    divisors = [mr for mr in range(budget, 0, -1) if width % mr == 0]
    mr = divisors[0] if divisors and divisors[0] * 2 > budget else min(budget, width)
    return nv, mr


class VnniConv2d(VnniRule):
    """int8 NCHW convolutions (groups 1, batch 1) on vpdpbusd: the pointwise form or the general one."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        matched = self.match_conv(func, target, match_vnni_conv)
        if matched is None:
            return None
        anchor, block, producers, (shape, data, weight) = matched
        sch = anchor.sch
        out_buffer = sch.get(block).writes[0].source
        if _is_pointwise(shape):
            return self._pointwise(sch, anchor, producers, block, shape, data, weight, out_buffer, target)
        nhwc = anchor.epilogue is not None and not any(param.same_as(out_buffer) for param in sch.mod["main"].params)
        if nhwc:
            sch.transform_layout(block, ("write", 0), lambda n, c, h, w: (n, h, w, c))
        nv, mr = _conv_tile_shape(shape.out[1], -(-shape.filters // LANES), self.config)
        prepacked = shape.filters % LANES == 0 and shape.channels % 4 == 0
        if prepacked:
            weight = _pack_weight_at_load(sch, block, weight, target)
        padding = padding_to_take_over(sch, producers, data, target)
        if padding is not None:
            shape = replace(shape, padding=padding.spec)
        kernel = conv_kernel(shape, nv, mr, nhwc, prepacked)
        work = shape.filters * shape.out[0] * shape.out[1] * 8
        name = sch.get(block).name_hint
        if anchor.epilogue is not None:
            if nhwc:
                _schedule_transposed_epilogue(sch, anchor.epilogue.block_rv, target, work)
            else:
                _schedule_planes(sch, anchor.epilogue.block_rv, target, work)
        _tensorize(sch, block, [data, weight], sch.get(block).writes[0].source, kernel,
                   f"conv{nv}x{mr}{nhwc}{shape.padding}")
        # the kernel pads the input while rearranging it: it reads the unpadded input, the padding copy goes
        return sch if padding is None else fold_prologue(sch, f"{name}_o", padding)

    def _pointwise(self, sch, anchor, producers, block, shape: ConvShape, data, weight, out_buffer,
                   target: Target) -> s_tir.Schedule:
        """A 1x1 stride-1 conv as ``out[F, H*W] = W[F, C] @ X[C, H*W]`` on the NCHW buffers as they are:
        the weight is the broadcast (shifted) operand, 16 pixels of 4 channels the interleaved one."""
        filters, channels = shape.filters, shape.channels
        pixels = shape.out[0] * shape.out[1]
        nv, mr = _dense_tile_shape(filters, -(-pixels // LANES), self.config, num_cores(target))
        shapes = ((filters, channels, 1, 1), tuple(shape.data), (1, filters, *shape.out))
        kernel = dense_kernel(filters, channels, pixels, True, nv, mr, "int8", shapes)
        work = filters * pixels * 8
        for producer in producers:  # a copy of the input that did not inline
            _schedule_padding(sch, producer.block_rv, target)
        # requantized int8 planes stored straight from the tiles when the epilogue folds
        return _tensorize_folding(sch, anchor, [weight, data], out_buffer, kernel, f"pointwise{nv}x{mr}",
                                  (filters, pixels), self.config,
                                  lambda epilogue: _schedule_planes(sch, epilogue, target, work))


LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"


def _pack_weight_at_load(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, weight, target: Target):
    """Read the OIHW weight as ``[F/16, KH, KW, C/4, 16, 4]`` blocks (``_pack_at_load``)."""
    return _pack_at_load(sch, block, weight, lambda o, i, h, w: (o // LANES, h, w, i // 4, o % LANES, i % 4), target)


def _pack_at_load(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, weight, layout, target: Target,
                  padded: bool = False):
    """Read ``weight`` in the blocked ``layout`` (an index map), made by a copy block of its own;
    ``padded``: the layout rounds a dimension up, and the copy writes zeros there.

    The copy is marked ``meta_schedule.layout_rewrite_preproc`` (as conv.py's packing):
    ``SplitLayoutRewritePreproc`` in ``schedule_passes`` moves it out of the kernel and
    ``LiftTransformParams`` runs it once when the model loads. Returns the packed buffer.
    """
    index = next(i for i, region in enumerate(sch.get(block).reads) if region.source.same_as(weight))
    copy = sch.cache_read(block, index, "global")
    sch.transform_layout(block, ("read", index), layout, pad_value=tirx.const(0, "int8") if padded else None)
    loops = sch.get_loops(copy)
    if loops:
        parallelize(sch, loops[0], target, 1 << 20)
    sch.annotate(copy, LAYOUT_REWRITE_PREPROC, True)
    return sch.get(block).reads[index].source


POINTWISE_MIN_PIXELS = 128  # fewer (7x7 planes): the filters-as-vectors kernel is faster


def _is_pointwise(shape: ConvShape) -> bool:
    """A 1x1, stride-1 conv over the whole (unpadded) int8 input, with channels in groups of 4, on
    a plane of at least ``POINTWISE_MIN_PIXELS`` (measured on MobileNetV2's convs: 14x14 planes 2x
    faster this way, 7x7 ones 1.4x slower, their ragged last vector left to a scalar tail)."""
    pixels = shape.out[0] * shape.out[1]
    return (shape.kernel == (1, 1) and shape.strides == (1, 1) and shape.data_dtype == "int8"
            and tuple(shape.data[2:]) == tuple(shape.out) and shape.channels % 4 == 0
            and pixels >= POINTWISE_MIN_PIXELS)
