"""Winograd F(4x4, 3x3) and F(2x2, 3x3) for float32 3x3 stride-1 convolutions on the CPU.

A direct 3x3 conv spends 9 multiply-adds per output and input channel. Winograd's minimal
filtering algorithm computes an m x m output tile from an (m+2) x (m+2) input tile with (m+2)^2
element-wise products per channel pair instead of 9 m^2: the products become (m+2)^2 independent
matrix products (one per position of the transformed tile), 4x fewer multiply-adds for m = 4 and
2.25x for m = 2, and the transforms in and out are sums of a few neighbours with small
coefficients (``A``, ``B``, ``G``, from TVM's Cook-Toom construction with the interpolation
points of Barabasz et al.; their error for F(4x4, 3x3) is ~3e-7 relative per product).

The catch is the transformed weight: (m+2)^2 / 9 times the bytes of the original (4x for m = 4),
read once per call. ResNet-18's last stage (512 channels on 7x7 planes, 16 tiles) would stream
37 MB per conv, so ``worth_it`` takes a tile size only when there are enough tiles per weight
element; m = 4 first, else m = 2 (14x14 planes: 49 tiles instead of 16), else the direct conv.

Three pieces:

``WinogradRewrite`` (a Relax pass the CPU target runs before ``zero``; AVX-512 targets only)
    Before: ``R.nn.conv2d(x, w)``, float32, NCHW/OIHW, groups 1, 3x3, stride 1, no dilation,
    batch 1, and a plane ``worth_it``. After: ``U = winograd_weight(w)`` (the filter transform
    ``G g G^T``, laid out ``[a, a, K/nr, C, nr]`` so a register tile's nr output channels are one
    contiguous vector; computed from the weight alone, so ``LiftWeights`` runs it once at load
    time) and ``winograd_conv2d(x, U)``, a TE function marked as a conv for FuseOps (the bias,
    residual add and ReLU fuse after it).

``winograd_conv2d`` (TE), per row of tiles ``th``:
    ``wino_pad``: the a input rows of the tile row, zero-padded;
    ``wino_t1[e]`` = sum over r of B[r, e] * rows[r]: the column transform, along whole rows;
    ``wino_s[e, n]`` = sum over r of B[r, n] * t1[e][w + r], at every column w, not only at the
    tile starts (m times the needed work, but contiguous vectors: the exact values would be a
    stride-m gather, which TVM scalarizes); the product reads only columns m * tw;
    ``wino_gemm[e, n, tw, k]`` = sum over c of s[e, n, c, m tw] * U[e, n, k, c]: register tiles
    of mr tiles x nr channels, input values broadcast;
    ``wino_z``, ``wino_out``: the output transform ``A^T M A``, then the epilogue.

``WinogradConv2d`` (a schedule rule, first in ``default_rules``) puts all of it under one
parallel loop over tile rows, so every intermediate of a tile row stays in its core's cache: the
transforms with their coefficient loops unrolled (the Selects that pick a coefficient fold away)
and rows vectorized, the product as register tiles, the output transform and epilogue
vectorized over 16 output channels (its NCHW stores scatter).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx
from tvm.ir import IRModule
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points
from tvm.topi.utils import const_matrix

from ..lower.module import ENTRY
from .common import num_cores, vector_lanes, vectorize_registers
from .weights import single_main

R = 3  # kernel
TILE_SIZES = (4, 2)  # output tile m of F(m x m, 3x3), largest first (input tile m + 2)
LANES = 16  # AVX-512 float32; the rewrite only runs where the target has it
OP_PATTERN_OUT_EWISE_FUSABLE = 4  # relax.analysis's kOutEWiseFusable: FuseOps fuses the epilogue after it
BLOCK_PREFIX = "wino_"
KERNELS = ("winograd_weight", "winograd_conv2d")  # the PrimFuncs the rewrite makes (fused names contain them)
MIN_TILES = 32  # fewer output tiles than this: the transformed weight's bytes dominate (worth_it)


@functools.cache
def matrices(m: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A [a, m], B [a, a], G [a, 3]) of F(m, 3), a = m + 2: Y = A^T [(G g G^T) * (B^T d B)] A."""
    a, b, g = _cook_toom_convolution(_interpolation_points(m + R - 2), m, R)
    return np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(g, np.float64)


@dataclass(frozen=True)
class WinogradShape:
    channels: int
    filters: int
    height: int  # input plane
    width: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    m: int = 4  # output tile: F(m x m, 3x3)

    @property
    def alpha(self) -> int:
        """The input tile."""
        return self.m + R - 1

    @property
    def out_h(self) -> int:
        return self.height + self.pads[0] + self.pads[2] - R + 1

    @property
    def out_w(self) -> int:
        return self.width + self.pads[1] + self.pads[3] - R + 1

    @property
    def tile_rows(self) -> int:
        return -(-self.out_h // self.m)

    @property
    def tile_cols(self) -> int:
        return -(-self.out_w // self.m)

    @property
    def s_width(self) -> int:
        """Columns of ``wino_s``: every column up to the last tile's start (the product reads m * tw)."""
        return self.m * (self.tile_cols - 1) + 1

    @property
    def t1_width(self) -> int:
        """Columns of ``wino_t1`` and of the padded rows: what ``wino_s`` reads."""
        return self.s_width + self.alpha - 1


@dataclass(frozen=True)
class Tile:
    mr: int  # tiles per register tile
    vectors: int  # output-channel vectors per register tile

    @property
    def nr(self) -> int:
        return self.vectors * LANES


def tiles_per_register_tile(tile_cols: int) -> int:
    """The largest divisor of a row's tiles up to 8 (the rewrite and the schedule both use it)."""
    return next(size for size in range(min(8, tile_cols), 0, -1) if tile_cols % size == 0)


def choose_tile(shape: WinogradShape, registers: int = 16) -> Tile | None:
    """The register tile: up to 8 tiles of a row (a divisor of the row's tiles) x as many channel
    vectors as the accumulators allow; None when the channels do not split into whole vectors or
    the row's tiles have no divisor of at least 4 (13 tiles would run 1 x 4 register tiles)."""
    if shape.filters % LANES:
        return None
    mr = tiles_per_register_tile(shape.tile_cols)
    if mr < 4 and shape.tile_cols > mr:
        return None
    vectors = max(1, min(registers // mr, 4))
    while vectors > 1 and (shape.filters // LANES) % vectors:
        vectors -= 1
    return Tile(mr, vectors)


def worth_it(shape: WinogradShape) -> bool:
    """Whether Winograd beats the direct conv: the tiles must be mostly real outputs, and each
    element of the transformed weight (4x the bytes of the original, read once per call) must
    serve enough tiles. ResNet-18 in the model, 2 threads: 56- and 28-wide planes (196 and 49
    tiles) 0.37 and 0.36 ms against 0.65 and 0.58 direct; the 14-wide ones (16 tiles, 9.4 MB of
    transformed weight from DRAM) 0.62 against 0.59."""
    waste = (shape.tile_rows * shape.tile_cols * shape.m ** 2) / (shape.out_h * shape.out_w)
    return shape.tile_rows * shape.tile_cols >= MIN_TILES and waste <= 1.35 and shape.channels >= 16


def winograd_weight(weight: te.Tensor, nr: int, m: int) -> te.Tensor:
    """U[e, n, K / nr, C, nr] = (G g G^T)[e, n] of every (filter, channel) pair."""
    filters, channels = (int(dim) for dim in weight.shape[:2])
    g = matrices(m)[2]
    alpha = m + R - 1
    ra = te.reduce_axis((0, R), name="ra")
    rb = te.reduce_axis((0, R), name="rb")
    g_const = const_matrix(g.astype("float32"), "wino_G")
    return te.compute(
        (alpha, alpha, filters // nr, channels, nr),
        lambda e, n, kb, c, kl: te.sum(g_const[e, ra] * weight[kb * nr + kl, c, ra, rb] * g_const[n, rb], axis=[ra, rb]),
        name="wino_weight",
    )


def _combination(coefficients: np.ndarray, index: tirx.PrimExpr, term) -> tirx.PrimExpr:
    """sum over r of coefficients[r, index] * term(r), as a Select over ``index`` of sums that
    name only the nonzero coefficients (``index``'s loop is unrolled, so the Select folds away)."""
    sums = []
    for column in range(coefficients.shape[1]):
        total = None
        for row in range(coefficients.shape[0]):
            value = float(coefficients[row, column])
            if value == 0:
                continue
            part = term(row) if value == 1 else (-term(row) if value == -1 else term(row) * tirx.const(value, "float32"))
            total = part if total is None else total + part
        sums.append(total if total is not None else tirx.const(0.0, "float32"))
    out = sums[-1]
    for column in range(len(sums) - 2, -1, -1):
        out = tirx.Select(index == column, sums[column], out)
    return out


def winograd_conv2d(x: te.Tensor, packed: te.Tensor, shape: WinogradShape, tile: Tile) -> te.Tensor:
    """The conv of ``x`` [1, C, H, W] with the transformed weight ``packed`` (winograd_weight)."""
    a, b, _ = matrices(shape.m)
    m, alpha = shape.m, shape.alpha
    top, left = shape.pads[0], shape.pads[1]
    nr = tile.nr
    rows = te.compute(
        (shape.tile_rows, shape.channels, alpha, shape.t1_width),
        lambda th, c, r, w: tirx.if_then_else(
            tirx.all(m * th + r >= top, m * th + r < top + shape.height, w >= left, w < left + shape.width),
            x[0, c, m * th + r - top, w - left], tirx.const(0.0, "float32")),
        name="wino_pad",
    )
    t1 = te.compute(
        (shape.tile_rows, alpha, shape.channels, shape.t1_width),
        lambda th, e, c, w: _combination(b, e, lambda r: rows[th, c, r, w]),
        name="wino_t1",
    )
    s = te.compute(
        (shape.tile_rows, alpha, alpha, shape.channels, shape.s_width),
        lambda th, e, n, c, w: _combination(b, n, lambda r: t1[th, e, c, w + r]),
        name="wino_s",
    )
    rc = te.reduce_axis((0, shape.channels), name="rc")
    gemm = te.compute(
        (shape.tile_rows, alpha, alpha, shape.tile_cols, shape.filters),
        lambda th, e, n, tw, k: te.sum(s[th, e, n, rc, m * tw] * packed[e, n, k // nr, rc, k % nr], axis=rc),
        name="wino_gemm",
    )
    z = te.compute(
        (shape.tile_rows, alpha, m, shape.tile_cols, shape.filters),
        lambda th, r1, j, tw, k: _combination(a, j, lambda r: gemm[th, r1, r, tw, k]),
        name="wino_z",
    )
    return te.compute(
        (1, shape.filters, shape.out_h, shape.out_w),
        lambda _n, k, oh, ow: _combination(a, oh % m, lambda r: z[oh // m, r, ow % m, ow // m, k]),
        name="wino_out",
    )


# ---- the Relax rewrite -----------------------------------------------------------------------------------


def _static(values) -> list[int] | None:
    out = []
    for value in values:
        if not isinstance(value, tirx.IntImm):
            return None
        out.append(int(value))
    return out


def winograd_shape(call: relax.Call) -> WinogradShape | None:
    """The conv's shape when ``call`` is a conv2d Winograd takes (see the module docstring)."""
    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
        return None
    attrs = call.attrs
    if (str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or int(attrs.groups) != 1
            or [int(v) for v in attrs.strides] != [1, 1] or [int(v) for v in attrs.dilation] != [1, 1]
            or str(attrs.out_dtype) not in ("", "None", "float32")):
        return None
    x_type, w_type = call.args[0].ty, call.args[1].ty
    if not isinstance(x_type, relax.TensorType) or not isinstance(w_type, relax.TensorType):
        return None
    if str(x_type.dtype) != "float32" or str(w_type.dtype) != "float32" or x_type.shape is None or w_type.shape is None:
        return None
    x_shape, w_shape = _static(x_type.shape.values), _static(w_type.shape.values)
    if x_shape is None or w_shape is None or x_shape[0] != 1 or w_shape[2:] != [R, R]:
        return None
    pads = [int(v) for v in attrs.padding]
    for m in TILE_SIZES:
        shape = WinogradShape(x_shape[1], w_shape[0], x_shape[2], x_shape[3], (pads[0], pads[1], pads[2], pads[3]), m)
        if shape.out_h > 0 and shape.out_w > 0 and worth_it(shape) and choose_tile(shape) is not None:
            return shape
    return None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # pylint: disable=arguments-renamed
        call = super().visit_call_(call)
        shape = winograd_shape(call)
        if shape is None:
            return call
        tile = choose_tile(shape)
        packed = self.builder_.emit_te(winograd_weight, call.args[1], tile.nr, shape.m,
                                       primfunc_name_hint=KERNELS[0])
        self.rewritten += 1
        # a call, not an emitted var: the binding stays ``lv = call_tir(...)`` for FuseOps to fuse
        return self.builder_.call_te(lambda x, u: winograd_conv2d(x, u, shape, tile), call.args[0], packed,
                                     primfunc_name_hint=KERNELS[1])


@tvm.transform.module_pass(opt_level=0, name="optc.WinogradRewrite")
class WinogradRewrite:
    """Replace the float32 3x3 stride-1 convs Winograd is faster on (``winograd_shape``)."""

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        target = Target.current(allow_none=True)
        if target is None or "llvm" not in str(target.kind) or vector_lanes(target) != LANES:
            return mod
        if single_main(mod) is None:
            # the multi-entry modules of compile_entries keep their weights unlifted (weights.py):
            # the filter transform would run on every call
            return mod
        rewriter = _Rewriter(mod)
        gvar = mod.get_global_var(ENTRY)
        rewriter.builder_.update_func(gvar, rewriter.visit_expr(mod[gvar]))
        if not rewriter.rewritten:
            return mod
        mod = rewriter.builder_.get()
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, tirx.PrimFunc) and gvar.name_hint.startswith(KERNELS[1]):
                mod[gvar] = func.with_attr("op_pattern", OP_PATTERN_OUT_EWISE_FUSABLE)
        return mod


def is_winograd_kernel(name: str) -> bool:
    """Whether a (fused) kernel is one of the rewrite's: the conv or its weight transform."""
    return any(kernel in name for kernel in KERNELS)


# ---- the schedule -----------------------------------------------------------------------------------------


def _block(sch: s_tir.Schedule, name: str):
    try:
        return sch.get_sblock(name)
    except Exception:  # pylint: disable=broad-except
        return None


def _tile_of(sch: s_tir.Schedule, gemm) -> Tile | None:
    """The register tile the rewrite chose, read back from the packed weight's shape."""
    block = sch.get(gemm)
    packed = block.reads[1].source
    nr = int(packed.shape[-1])
    mr = tiles_per_register_tile(int(block.writes[0].source.shape[3]))
    return Tile(mr, nr // LANES) if nr % LANES == 0 else None


class WinogradConv2d(CPUScheduleRule):
    """The fused ``winograd_conv2d`` functions of ``WinogradRewrite``: everything per tile row."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = {name: _block(sch, BLOCK_PREFIX + name) for name in ("pad", "t1", "s", "gemm", "z", "out")}
        if any(block is None for block in blocks.values()) or vector_lanes(target) != LANES:
            return None
        tile = _tile_of(sch, blocks["gemm"])
        if tile is None:
            return None
        m = int(sch.get(blocks["z"]).writes[0].source.shape[2])
        last = _inline_epilogue(sch, blocks["out"])
        if last is None:
            return None
        n, k, oh, ow = sch.get_loops(last)
        th, i = sch.split(oh, [None, m])
        tw, j = sch.split(ow, [None, m])
        k0, k1 = sch.split(k, [None, LANES])
        sch.reorder(n, th, i, tw, j, k0, k1)
        sch.unroll(i)
        sch.unroll(j)
        sch.vectorize(k1)  # the output transform's loads are contiguous in k; the stores scatter
        outer = sch.fuse(n, th)
        if num_cores(target) > 1:
            sch.parallel(outer)

        z, gemm, s, t1, pad = (blocks[name] for name in ("z", "gemm", "s", "t1", "pad"))
        sch.compute_at(z, outer, preserve_unit_loops=True)
        sch.compute_at(gemm, outer, preserve_unit_loops=True)
        g_loops = sch.get_loops(gemm)
        _, g_th, e, nn, gtw, gk, rc = g_loops
        sch.compute_at(s, e, preserve_unit_loops=True)
        sch.compute_at(t1, outer, preserve_unit_loops=True)
        sch.compute_at(pad, outer, preserve_unit_loops=True)

        # the product: mr tiles x nr channels in registers, input values broadcast
        kb, kl = sch.split(gk, [None, tile.nr])
        two, tw1 = sch.split(gtw, [None, tile.mr])
        sch.reorder(kb, two, rc, tw1, kl)
        sch.unroll(tw1)
        vectorize_registers(sch, kl, tile.vectors, LANES)
        init = sch.decompose_reduction(gemm, rc)
        sch.vectorize(sch.get_loops(init)[-1])

        # the transforms: the coefficient index unrolled (its Select folds away), the rows one
        # vector each (their extent is what the consumer reads, not a multiple of the lanes:
        # LLVM splits a 53-lane vector into whole registers and a tail, TVM would scalarize a
        # predicated split)
        _, sn, sc, sw = sch.get_loops(s)[-4:]
        sch.reorder(sc, sn, sw)
        sch.unroll(sn)
        sch.vectorize(sw)
        te_, tc, tw_ = sch.get_loops(t1)[-3:]
        sch.reorder(tc, te_, tw_)
        sch.unroll(te_)
        sch.vectorize(tw_)
        sch.vectorize(sch.get_loops(pad)[-1])
        zr, zj, ztw, zk = sch.get_loops(z)[-4:]
        zk0, zk1 = sch.split(zk, [None, LANES])
        sch.reorder(zr, ztw, zk0, zj, zk1)
        sch.unroll(zj)
        sch.vectorize(zk1)
        return sch


def _inline_epilogue(sch: s_tir.Schedule, out):
    """Inline ``wino_out`` and the epilogue chain after it into the last block; that block."""
    consumers = sch.get_consumers(out)
    current = out
    while consumers:
        if len(consumers) != 1:
            return None
        try:
            sch.compute_inline(current)
        except Exception:  # pylint: disable=broad-except
            return None
        current = consumers[0]
        consumers = sch.get_consumers(current)
    return current
