"""int8 depthwise convolutions on ``vpdpbusd``: one kernel row of taps is one 4-byte dot product.

A depthwise conv has one input channel per output, so the dense VNNI kernels (4 input channels
per byte group) do not apply, and ``IntegerDepthwiseConv2d`` multiplied 32-bit integers: 9 to
17 GMAC/s on MobileNetV2's layers, 1.35 of its 3.6 ms (1 thread). Here the 4 bytes of a lane's
dot product are the taps of one kernel row instead: for output pixel ``x`` of row ``y``,

    acc[x] += sum_j data_u8[y*s + ky*d, x*s + j*d] * w[ky, j]      (j < KW <= 4; byte 3 weighs 0)

so a 3x3 conv is three ``vpdpbusd`` per 16 output pixels. The 64 bytes of one such operand are
one byte shuffle (``vpermb`` with AVX512-VBMI) of 64 consecutive input bytes: byte ``4x + j`` is
input column ``x*s + j*d``. Per call, parallel over channels::

    shifted = data[c] ^ 0x80, padded         # signed int8 -> uint8; border bytes = pad value's
    taps[ky] = broadcast(w[c, ky, 0..KW-1], 0...)      # 4 bytes, 16 times
    for each output row y, each 16-pixel vector x0 (unrolled along the row):
        acc = sum_ky vpdpbusd(acc, shuffle(shifted[c, row y*s + ky*d, from x0*s]), taps[ky])
        out[c, y, x0:x0+16] = acc - 128 * sum(w[c])   # the real lanes of a ragged last vector

The stores are ``out[c, y * OW + x]`` on a ``[C, OH * OW]`` view, the form ``vnni_epilogue.py``
folds the requantize into. The shifted plane (one per thread) has 64 bytes of slack after it, so
the last vector's load stays inside the buffer (lanes past the row read the next row or the
slack; their results are not stored). A padding block before the conv (zero padding, or static
int8's zero point) is taken over: the copy writes the border bytes itself and
``vnni_epilogue.fold_prologue`` makes it read the unpadded input. Exact like the other VNNI
kernels: bit for bit the reference's int32 sums.

Measured on MobileNetV2's 17 depthwise convs (1 thread, each with its requantize): 1.0 ms with
``IntegerDepthwiseConv2d`` -> 0.38 ms (112-wide stride-1 rows ~86 GMAC/s for the product alone;
14- and 7-wide planes 20-30 GMAC/s, where the per-channel copy and epilogue dominate).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import s_tir, tirx
from tvm.target import Target

from .conv import match_depthwise
from .vnni import VnniRule, _int, _linear, _schedule_planes, _tensorize_folding, padding_to_take_over
from .vnni_epilogue import fold_prologue
from .vnni_kernels import LANES, KernelText

BYTES = 4 * LANES  # one zmm operand


@dataclass(frozen=True)
class DepthwiseShape:
    channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    data: tuple[int, ...]  # the data buffer's shape, NCHW
    out: tuple[int, int]
    data_dtype: str
    # (top, left, input height, input width, value): the kernel pads the data buffer's input itself
    # (``vnni_epilogue.fold_prologue`` then makes it read the unpadded input)
    padding: tuple[int, int, int, int, int] | None = None


def shuffle_indices(stride: int, dilation: int, taps: int) -> list[int]:
    """Byte ``4x + j`` of the vpdpbusd operand: input column ``x*stride + j*dilation`` (tap j < taps; 0 after)."""
    return [x * stride + (j * dilation if j < taps else 0) for x in range(LANES) for j in range(4)]


def depthwise_kernel(shape: DepthwiseShape) -> tirx.PrimFunc:
    """``out[0, c, y, x] = sum(data[0, c, y*s + ky*d, x*s + kx*d] * w[c, 0, ky, kx])`` on vpdpbusd
    (module docstring); int8 or uint8 data, int8 weights, kernel width at most 4."""
    channels = shape.channels
    kernel_h, kernel_w = shape.kernel
    stride_h, stride_w = shape.strides
    dilation_h, dilation_w = shape.dilations
    _, _, buffer_h, buffer_w = shape.data
    out_h, out_w = shape.out
    data_h = (out_h - 1) * stride_h + (kernel_h - 1) * dilation_h + 1
    data_w = (out_w - 1) * stride_w + (kernel_w - 1) * dilation_w + 1
    plane = data_h * data_w
    vectors, partial = divmod(out_w, LANES)
    signed = shape.data_dtype == "int8"
    code = KernelText()
    strides = f"{channels * buffer_h * buffer_w}, {buffer_h * buffer_w}, {buffer_w}, 1"
    code.line(f"def kernel(D: T.Buffer((1, {channels}, {data_h}, {data_w}), \"{shape.data_dtype}\", strides=({strides})), "
              f"W: T.Buffer(({channels}, 1, {kernel_h}, {kernel_w}), \"int8\"), "
              f"Cp: T.Buffer((1, {channels}, {out_h}, {out_w}), \"int32\")):")
    with code.indent():
        code.line('with T.sblock("root"):')
        with code.indent():
            code.line(f"T.reads(D[0:1, 0:{channels}, 0:{data_h}, 0:{data_w}], W[0:{channels}, 0:1, 0:{kernel_h}, 0:{kernel_w}])")
            code.line(f"T.writes(Cp[0:1, 0:{channels}, 0:{out_h}, 0:{out_w}])")
            code.line(f"C = T.decl_buffer(({channels}, {out_h * out_w}), \"int32\", data=Cp.data)")
            code.line(f"shifted = T.sblock_alloc_buffer(({plane + BYTES},), \"{shape.data_dtype}\")")
            code.allocate(["acc"], (vectors + (partial > 0)) * LANES)
            code.line(f"for c in T.parallel({channels}):")
            with code.indent():
                _copy_plane(code, shape, data_h, data_w)
                for ky in range(kernel_h):
                    quad = " | ".join(f"T.shift_left(T.bitwise_and(T.Cast(\"int32\", W[c, 0, {ky}, {j}]), 255), {8 * j})"
                                      for j in range(kernel_w))
                    code.line(f"tap{ky} = T.bind(T.reinterpret(T.broadcast({quad}, {LANES}), dtype=\"int8x64\"))")
                total = " + ".join(f"T.Cast(\"int32\", W[c, 0, {ky}, {kx}])" for ky in range(kernel_h) for kx in range(kernel_w))
                code.line(f"colsum = T.bind(({total}) * {128 if signed else 0})")
                code.line(f"for y in T.serial({out_h}):")
                with code.indent():
                    for v in range(vectors + (partial > 0)):
                        code.line(f"acc[{code.vector(v)}] = T.broadcast(T.int32(0), {LANES})")
                    for ky in range(kernel_h):
                        for v in range(vectors + (partial > 0)):
                            start = f"(y * {stride_h} + {ky * dilation_h}) * {data_w} + {v * LANES * stride_w}"
                            operand = f"T.Shuffle([shifted[T.ramp({start}, 1, {BYTES})]], SHUFFLE)"
                            code.line(f"acc[{code.vector(v)}] = vpdpbusd(acc[{code.vector(v)}], {operand}, tap{ky})")
                    for v in range(vectors + (partial > 0)):
                        kind, count = ("T.vectorized", LANES) if v < vectors else ("T.vectorized", partial)
                        code.line(f"for lane in {kind}({count}):")
                        with code.indent():
                            code.line(f"C[c, y * {out_w} + {v * LANES} + lane] = acc[{v * LANES} + lane] - colsum")
    return code.parse(SHUFFLE=shuffle_indices(stride_w, dilation_w, kernel_w))


def _copy_plane(code: KernelText, shape: DepthwiseShape, data_h: int, data_w: int) -> None:
    """``shifted = data[c] ^ 0x80`` (uint8 data as it is); with ``shape.padding``, the border bytes
    are the pad value's and only the input's own elements are read."""
    signed = shape.data_dtype == "int8"

    def element(y: str, x: str) -> str:
        return f"T.bitwise_xor(D[0, c, {y}, {x}], T.int8(-128))" if signed else f"D[0, c, {y}, {x}]"

    def fill(rows: str, first_row: str, columns: int, first_column: str) -> None:
        code.line(f"for y, x in T.grid({rows}, {columns}):")
        with code.indent():
            code.line(f"shifted[({first_row} + y) * {data_w} + {first_column} + x] = {byte}")

    if shape.padding is None:
        code.line(f"for y, x in T.grid({data_h}, {data_w}):")
        with code.indent():
            code.line(f"shifted[y * {data_w} + x] = {element('y', 'x')}")
        return
    top, left, height, width, value = shape.padding
    byte = f"T.int8({value ^ -128})" if signed else f"T.uint8({value})"
    rows, columns = min(height, data_h - top), min(width, data_w - left)  # the input the conv reads
    if top:
        fill(str(top), "0", data_w, "0")
    if data_h > top + rows:
        fill(str(data_h - top - rows), str(top + rows), data_w, "0")
    code.line(f"for row in T.serial({rows}):")
    with code.indent():
        if left:
            fill("1", f"{top} + row", left, "0")
        code.line(f"for x in T.serial({columns}):")
        with code.indent():
            code.line(f"shifted[({top} + row) * {data_w} + {left} + x] = {element(f'row + {top}', f'x + {left}')}")
        if data_w > left + columns:
            fill("1", f"{top} + row", data_w - left - columns, str(left + columns))


def match_vnni_depthwise(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV) -> tuple[DepthwiseShape, tirx.Var, tirx.Var] | None:
    """A batch-1 int8 depthwise conv (kernel width <= 4) the kernel computes: (shape, data, weight), or None."""
    if not match_depthwise(sch, block_rv, frozenset({"int8", "uint8"}), "int32"):
        return None
    block = sch.get(block_rv)
    f, y, x = (iv.var for iv in block.iter_vars[:3])
    taps = [iv.var for iv in block.iter_vars[3:]]
    out = block.writes[0]
    inputs = [region for region in block.reads if not region.source.same_as(out.source)]
    data = next(r for r in inputs if r.region[1].min.same_as(f))
    weight = next(r for r in inputs if r is not data)
    if str(weight.source.dtype) != "int8" or _int(out.source.shape[0]) != 1:
        return None
    # each tap var is the weight's row or column index; a kernel of one row / column has no var for it
    w_index = [r.min for r in weight.region]
    tap_row = [var for var in taps if w_index[2].same_as(var)]
    tap_col = [var for var in taps if w_index[3].same_as(var)]
    if len(tap_row) + len(tap_col) != len(taps) or len(tap_row) > 1 or len(tap_col) > 1:
        return None
    if any(not tap and _int(size) != 1 for tap, size in ((tap_row, weight.source.shape[2]), (tap_col, weight.source.shape[3]))):
        return None
    rows = _linear(data.region[2].min, [y, *tap_row, *tap_col])
    cols = _linear(data.region[3].min, [x, *tap_row, *tap_col])
    if rows is None or cols is None or rows[-1] or cols[-1]:
        return None
    dilation_h = rows[1] if tap_row else 1
    dilation_w = cols[1 + len(tap_row)] if tap_col else 1
    if (tap_row and cols[1]) or (tap_col and rows[1 + len(tap_row)]):
        return None  # a tap that moves both the data row and column
    kernel = (_int(weight.source.shape[2]), _int(weight.source.shape[3]))
    extents = {iv.var: _int(iv.dom.extent) for iv in block.iter_vars}
    if kernel[1] > 4 or rows[0] < 1 or cols[0] < 1 or extents[f] != _int(weight.source.shape[0]):
        return None
    if (LANES - 1) * cols[0] + (kernel[1] - 1) * dilation_w >= BYTES:
        return None  # one output vector's columns do not fit in one 64-byte load
    shape = DepthwiseShape(extents[f], kernel, (rows[0], cols[0]), (dilation_h, dilation_w),
                           tuple(_int(size) for size in data.source.shape), (extents[y], extents[x]),
                           str(data.source.dtype))
    return shape, data.source, weight.source


class VnniDepthwiseConv2d(VnniRule):
    """int8 depthwise NCHW convolutions (batch 1, kernel width <= 4) on vpdpbusd (module docstring)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        matched = self.match_conv(func, target, match_vnni_depthwise)
        if matched is None:
            return None
        anchor, block, producers, (shape, data, weight) = matched
        sch = anchor.sch
        padding = padding_to_take_over(sch, producers, data, target)
        if padding is not None:
            shape = replace(shape, padding=padding.spec)
        out_buffer = sch.get(block).writes[0].source
        name = sch.get(block).name_hint
        pixels = shape.out[0] * shape.out[1]
        work = shape.channels * pixels * 8
        kernel = depthwise_kernel(shape)
        sch = _tensorize_folding(sch, anchor, [data, weight], out_buffer, kernel, f"depthwise{shape.padding}",
                                 (shape.channels, pixels), self.config,
                                 lambda epilogue: _schedule_planes(sch, epilogue, target, work))
        # the kernel pads the input itself: it reads the unpadded input, and the padding copy goes
        return sch if padding is None else fold_prologue(sch, f"{name}_o", padding)


__all__ = ["DepthwiseShape", "VnniDepthwiseConv2d", "depthwise_kernel", "match_vnni_depthwise", "shuffle_indices"]
