"""The VNNI kernels of ``vnni.py`` as TIR: ``vpdpbusd`` loops written as TVMScript text and parsed.

The text is generated with Python loops over the register tile (rows x vectors unrolled), so
the accumulators are one small buffer at constant offsets (LLVM keeps it in registers) and each
interleaved weight block is bound once per step for all rows. ``dense_kernel`` computes
``C = A @ B`` (int8/uint8 A broadcast 4 bytes at a time, int8 B in 16 x 4 blocks);
``conv_kernel`` a batch-1 NCHW convolution with the data rearranged to channels-innermost bytes.
Both *write* their result (no read of it): the rules tensorize the product's init and update
together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.script import tirx as T

logger = logging.getLogger(__name__)

LANES = 16  # int32 lanes of one zmm register: output channels per vpdpbusd
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
SHIFT = -2139062144  # 0x80808080 as int32: four bytes of 128
# byte j*4 + r of an interleaved block is row r, column j of four 16-byte weight rows
INTERLEAVE = [row * LANES + column for column in range(LANES) for row in range(4)]
PREP_PARALLEL_MIN = 1 << 16  # bytes of data and weight to rearrange before a conv goes parallel
# bytes of A to shift (xor, 64 bytes an instruction) before the dense kernel's shift pass goes
# parallel: below, a parallel loop costs more in waking the pool's worker than it saves
SHIFT_PARALLEL_MIN = 1 << 20


def _vpdpbusd(acc, unsigned, signed):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(VPDPBUSD), acc, unsigned, signed, dtype="int32x16")


@dataclass(frozen=True)
class ConvShape:
    channels: int  # input channels C
    filters: int  # output channels F
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    data: tuple[int, ...]  # the (padded) input buffer's shape, NCHW
    out: tuple[int, int]  # output H, W
    data_dtype: str
    # (top, left, input height, input width, value): the kernel pads the input itself while it
    # rearranges it (``vnni_epilogue.fold_prologue`` then makes it read the unpadded input)
    padding: tuple[int, int, int, int, int] | None = None


def dense_kernel(rows: int, depth: int, columns: int, signed: bool, nv: int, mr: int,
                 a_dtype: str = "int8", shapes: tuple[tuple[int, ...], ...] | None = None,
                 prepacked: bool = False) -> tirx.PrimFunc:
    """``C[rows, columns] = A[rows, depth] @ B[depth, columns]`` (int8 or uint8 A, int8 B, int32 C)
    with vpdpbusd on 16-column vectors; ``depth % 4 == 0``; a ragged last row tile and a ragged
    last vector (``columns % 16``: zero-padded, only its real lanes stored) are handled. The interleaved B block is made in registers, once per k step
    for all the rows of a tile. ``shapes``: the parameters' own (contiguous) shapes when they are
    not these matrices (a 1x1 convolution's OIHW weight, NCHW data and result), viewed as them.
    ``prepacked``: B arrives as ``[ceil(columns/16), depth/4, 16, 4]`` blocks (the last one
    zero-padded), interleaved once when the model loads, so a step is one 64-byte load per vector;
    ``nv`` must divide the block count. A signed A is shifted to uint8 once per call (a pass over
    A before the tiles), so that a tile step broadcasts each row's 4 bytes straight from memory
    instead of loading, xor-ing and moving them from a general register (measured 128x768x3072,
    1 thread: 404 -> 460 GMAC/s)."""
    width = nv * LANES
    vectors = -(-columns // LANES)  # the last one zero-padded when columns % 16
    panels = vectors // nv
    partial = columns % LANES  # lanes of the last vector that are real (0: all)
    tiles, rest = divmod(rows, mr)
    steps = depth // 4
    code = KernelText()
    matrices = ((rows, depth), (depth, columns), (rows, columns))
    shapes = shapes or matrices
    names = ("A", "B", "C") if shapes == matrices else ("Ap", "Bp", "Cp")
    if prepacked:
        assert names[1] == "B"
        shapes = (shapes[0], (vectors, depth // 4, LANES, 4), shapes[2])
    assert vectors % nv == 0, "nv must divide the 16-column vectors"
    dtypes = (a_dtype, "int8", "int32")
    params = ", ".join(f"{name}: T.Buffer({tuple(shape)}, \"{dtype}\")" for name, shape, dtype in zip(names, shapes, dtypes))
    code.line(f"def kernel({params}):")
    with code.indent():
        code.line('with T.sblock("root"):')
        with code.indent():
            regions = [f"{name}[{', '.join(f'0:{size}' for size in shape)}]" for name, shape in zip(names, shapes)]
            code.line(f"T.reads({regions[0]}, {regions[1]})")
            code.line(f"T.writes({regions[2]})")
            if names[0] != "A":
                for view, name, shape, dtype in zip(("A", "B", "C"), names, matrices, dtypes):
                    code.line(f"{view} = T.decl_buffer({shape}, \"{dtype}\", data={name}.data)")
            code.allocate(["colsum"], width)
            code.allocate(["acc"], mr * width)
            if prepacked:
                code.line(f"blocks = T.decl_buffer(({depth * vectors * LANES},), \"int8\", data=B.data)")
            else:
                code.allocate(["interleaved"], depth * width, "int8")
                if partial:
                    code.allocate(["edge"], 4 * LANES, "int8")
            code.line(f"A32 = T.decl_buffer(({rows * steps},), \"int32\", data=A.data)")
            quads = "A32"
            if signed:  # A ^ 0x80 once: bytes + 128 as uint8, 4 at a time
                quads = "shifted"
                code.line(f"shifted = T.sblock_alloc_buffer(({rows * steps},), \"int32\")")
                loop = "T.parallel" if rows * depth >= SHIFT_PARALLEL_MIN else "T.serial"
                code.line(f"for row in {loop}({rows}):")
                with code.indent():
                    chunks, left = divmod(steps, LANES)
                    if chunks:
                        code.line(f"for chunk in T.serial({chunks}):")
                        with code.indent():
                            at = f"T.ramp(row * {steps} + chunk * {LANES}, 1, {LANES})"
                            code.line(f"shifted[{at}] = T.bitwise_xor(A32[{at}], T.broadcast(T.int32({SHIFT}), {LANES}))")
                    if left:
                        code.line(f"for q in T.serial({left}):")
                        with code.indent():
                            at = f"row * {steps} + {chunks * LANES} + q"
                            code.line(f"shifted[{at}] = T.bitwise_xor(A32[{at}], T.int32({SHIFT}))")
            if panels:
                code.line(f"for panel in T.parallel({panels}):")
                with code.indent():
                    column = "panel * {width} + {offset}"

                    def last_vector(v: int, ragged, whole) -> None:
                        """``ragged()`` for the last panel's last vector of a ragged B, else ``whole()``."""
                        if partial and v == nv - 1:
                            code.branch(f"panel == {panels - 1}", ragged, whole)
                        else:
                            whole()

                    def weight_blocks() -> None:
                        """B's 4 x 16 block of each vector, interleaved into ``interleaved``; the
                        last vector of a ragged B through ``edge``, zero past the last column."""
                        for v in range(nv):
                            first = column.format(width=width, offset=v * LANES)
                            loads = ", ".join(f"B[k4 * 4 + {r}, T.ramp({first}, 1, {LANES})]" for r in range(4))

                            def edge_block(v: int = v, first: str = first) -> None:
                                code.line(f"for r, lane in T.grid(4, {LANES}):")
                                with code.indent():
                                    code.line(f"edge[r * {LANES} + lane] = T.if_then_else({first} + lane < {columns}, "
                                              f"B[k4 * 4 + r, {first} + lane], T.int8(0))")
                                edges = ", ".join(f"edge[T.ramp({r * LANES}, 1, {LANES})]" for r in range(4))
                                code.line(f"{stored_block(v)} = T.Shuffle([{edges}], INTERLEAVE)")

                            def whole_block(v: int = v, loads: str = loads) -> None:
                                code.line(f"{stored_block(v)} = T.Shuffle([{loads}], INTERLEAVE)")

                            last_vector(v, edge_block, whole_block)

                    # the panel's B interleaved once (and 128 * its column sums), read by every row tile
                    for v in range(nv):
                        code.line(f"colsum[{code.vector(v)}] = T.broadcast(T.int32(0), {LANES})")
                    def stored_block(v: int) -> str:
                        if prepacked:
                            return f"blocks[T.ramp(((panel * {nv} + {v}) * {steps} + k4) * {4 * LANES}, 1, {4 * LANES})]"
                        return f"interleaved[T.ramp((k4 * {nv} + {v}) * {4 * LANES}, 1, {4 * LANES})]"

                    if signed or not prepacked:
                        code.line(f"for k4 in T.serial({steps}):")
                        with code.indent():
                            if not prepacked:
                                weight_blocks()
                            for v in range(nv):
                                code.line(f"b{v} = T.bind({stored_block(v)})")
                                if signed:
                                    code.line(f"colsum[{code.vector(v)}] = vpdpbusd(colsum[{code.vector(v)}], SHIFT_BYTES, b{v})")

                    def tile(base: str, count: int) -> None:
                        for i in range(count):
                            for v in range(nv):
                                code.line(f"acc[{code.vector(i * nv + v)}] = T.broadcast(T.int32(0), {LANES})")
                        code.line(f"for k4 in T.serial({steps}):")
                        with code.indent():
                            for v in range(nv):
                                code.line(f"b{v} = T.bind({stored_block(v)})")
                            for i in range(count):
                                code.line(f"a{i} = T.bind(T.reinterpret(T.broadcast({quads}[({base} + {i}) * {steps} + k4], "
                                          f"{LANES}), dtype=\"int8x64\"))")
                                for v in range(nv):
                                    code.line(f"acc[{code.vector(i * nv + v)}] = vpdpbusd(acc[{code.vector(i * nv + v)}], a{i}, b{v})")
                        for i in range(count):
                            for v in range(nv):
                                first = column.format(width=width, offset=v * LANES)
                                store = (f"C[{base} + {i}, {first} + lane] = "
                                         f"acc[{(i * nv + v) * LANES} + lane] - colsum[{v * LANES} + lane]")

                                def lanes(kind: str, count: int, store: str = store) -> None:
                                    # scalar stores in a lane loop: vectorized, one vector store once
                                    # lowered; vnni_epilogue.py rewrites them into the epilogue's stores
                                    code.line(f"for lane in {kind}({count}):")
                                    with code.indent():
                                        code.line(store)

                                # the padded last vector stores its real lanes only
                                last_vector(v, lambda lanes=lanes: lanes("T.unroll", partial),
                                            lambda lanes=lanes: lanes("T.vectorized", LANES))

                    _row_tiles(code, tile, tiles, mr, rest)
    return code.parse()


class KernelText:
    """TVMScript source of a kernel, written line by line (Python loops unroll it) and parsed."""

    def __init__(self) -> None:
        self.lines: list[str] = ["@T.prim_func(s_tir=True)"]
        self.depth = 0

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def indent(self):
        text = self

        class _Indent:
            def __enter__(self) -> None:
                text.depth += 1

            def __exit__(self, *exc) -> None:
                text.depth -= 1

        return _Indent()

    def branch(self, condition: str, then, otherwise) -> None:
        """``if condition: then() else: otherwise()`` (each emits its own lines)."""
        self.line(f"if {condition}:")
        with self.indent():
            then()
        self.line("else:")
        with self.indent():
            otherwise()

    def allocate(self, names: list[str], size: int, dtype: str = "int32") -> None:
        """Buffers declared in the root block: TVM moves each into the innermost loop that holds
        all its uses (one per thread under a parallel loop). Found in TVM 0.27's lowering: only a
        "global"-scope buffer under 1 KB becomes a stack slot that LLVM keeps in registers (a
        "local" one, or a bigger one, is a heap workspace: the accumulators were stored after every
        vpdpbusd, 2-4x slower); a buffer allocated in a nested block fails TVM's reduction-block
        check once tensorized. Hence one accumulator buffer of at most 15 vectors."""
        for name in names:
            self.line(f"{name} = T.sblock_alloc_buffer(({size},), \"{dtype}\")")

    @staticmethod
    def vector(index: int) -> str:
        return f"T.ramp({index * LANES}, 1, {LANES})"

    def parse(self, **constants) -> tirx.PrimFunc:
        """The kernel; ``constants`` are names the text uses (shuffle index lists)."""
        source = "\n".join(self.lines)
        try:
            return tvm.script.parser.parse(source, extra_vars={
                "T": T, "INTERLEAVE": INTERLEAVE, "vpdpbusd": _vpdpbusd, **constants,
                "SHIFT_BYTES": T.reinterpret(T.broadcast(T.int32(SHIFT), LANES), dtype="int8x64")})
        except Exception:
            logger.debug("VNNI kernel source that failed to parse:\n%s", source)
            raise


def conv_kernel(shape: ConvShape, nv: int, mr: int, nhwc: bool, prepacked: bool = False) -> tirx.PrimFunc:
    """``out += conv(data, weight)`` for int8/uint8 NCHW data (batch 1) and int8 OIHW weights on vpdpbusd.

    Per call: the data as ``[H, W, C4]`` bytes shifted to uint8, the weight as
    ``[F/16, KH, KW, C4/4, 16, 4]`` with ``128 * sum(w)`` per filter (C4: C rounded up to 4,
    the extra channels weigh 0). Then, parallel over (filter groups, output rows): tiles of mr
    pixels x nv * 16 filters, reduced over (ky, kx, C4/4) in registers. ``nhwc``: the result
    buffer is ``[1, H, W, F]`` (else NCHW, stored strided).
    """
    channels, filters = shape.channels, shape.filters
    kernel_h, kernel_w = shape.kernel
    stride_h, stride_w = shape.strides
    dilation_h, dilation_w = shape.dilations
    _, _, buffer_h, buffer_w = shape.data
    # the rows and columns the conv reads (a stride-2 conv may not read the last padded ones)
    data_h = (shape.out[0] - 1) * stride_h + (kernel_h - 1) * dilation_h + 1
    data_w = (shape.out[1] - 1) * stride_w + (kernel_w - 1) * dilation_w + 1
    out_h, out_w = shape.out
    quads = -(-channels // 4)
    depth = quads * 4
    signed = shape.data_dtype == "int8"
    vectors = -(-filters // LANES)  # the last one partial when F % 16: zero filters pad it
    groups = vectors // nv
    padded = vectors * LANES
    tiles, rest = divmod(out_w, mr)
    out_dims = (1, out_h, out_w, filters) if nhwc else (1, filters, out_h, out_w)
    out_shape = f"({', '.join(str(size) for size in out_dims)})"
    data_shape = f"1, {channels}, {data_h}, {data_w}"
    data_strides = f"{channels * buffer_h * buffer_w}, {buffer_h * buffer_w}, {buffer_w}, 1"
    code = KernelText()
    w_dims = (vectors, kernel_h, kernel_w, quads, LANES, 4) if prepacked else (filters, channels, kernel_h, kernel_w)
    code.line(f"def kernel(D: T.Buffer(({data_shape}), \"{shape.data_dtype}\", strides=({data_strides})), "
              f"W: T.Buffer({w_dims}, \"int8\"), C: T.Buffer({out_shape}, \"int32\")):")
    with code.indent():
        code.line('with T.sblock("root"):')
        with code.indent():
            code.line(f"T.reads(D[0:1, 0:{channels}, 0:{data_h}, 0:{data_w}], W[{', '.join(f'0:{size}' for size in w_dims)}])")
            code.line(f"T.writes(C[{', '.join(f'0:{size}' for size in out_dims)}])")
            code.line(f"pixels = T.sblock_alloc_buffer(({data_h * data_w * depth},), \"{shape.data_dtype}\")")
            if prepacked:  # packed at load time (layout_rewrite_preproc): only a flat view here
                code.line(f"packed = T.decl_buffer(({padded * kernel_h * kernel_w * depth},), \"int8\", data=W.data)")
            else:
                code.line(f"packed = T.sblock_alloc_buffer(({padded * kernel_h * kernel_w * depth},), \"int8\")")
            code.line(f"colsum = T.sblock_alloc_buffer(({padded},), \"int32\")")
            code.allocate(["acc"], mr * nv * LANES)
            # one pass of preparation, parallel over data rows and filter blocks: the data with the
            # channels innermost, shifted to uint8; the weight in 16 x 4 blocks with 128 * sum(w)
            prep_work = data_h * data_w * depth + (1 if prepacked else 2) * padded * kernel_h * kernel_w * depth
            loop = "T.parallel" if prep_work >= PREP_PARALLEL_MIN else "T.serial"
            code.line(f"for prep in {loop}({data_h + vectors}):")
            with code.indent():
                code.line(f"if prep < {data_h}:")
                with code.indent():
                    code.line("y = T.bind(prep)")
                    code.line(f"for x, c in T.grid({data_w}, {depth}):")
                    with code.indent():
                        value = f"T.bitwise_xor(D[0, c, y, x], T.int8(-128))" if signed else "D[0, c, y, x]"
                        zero = "T.int8(0)" if signed else "T.uint8(0)"
                        if shape.padding is not None:
                            top, left, height, width, pad = shape.padding
                            byte = f"T.int8({pad ^ -128})" if signed else f"T.uint8({pad})"
                            inside = f"{top} <= y and y < {top + height} and {left} <= x and x < {left + width}"
                            value = f"T.if_then_else({inside}, {value}, {byte})"
                        if depth != channels:
                            value = f"T.if_then_else(c < {channels}, {value}, {zero})"
                        code.line(f"pixels[(y * {data_w} + x) * {depth} + c] = {value}")
                code.line("else:")
                with code.indent():
                    code.line(f"block = T.bind(prep - {data_h})")
                    if not prepacked:
                        code.line(f"for ky, kx, quad, lane, r in T.grid({kernel_h}, {kernel_w}, {quads}, {LANES}, 4):")
                        with code.indent():
                            value = f"W[block * {LANES} + lane, quad * 4 + r, ky, kx]"
                            guards = ([f"quad * 4 + r < {channels}"] if depth != channels else []) + (
                                [f"block * {LANES} + lane < {filters}"] if padded != filters else [])
                            if guards:
                                value = f"T.if_then_else({' and '.join(guards)}, {value}, T.int8(0))"
                            code.line(f"packed[(((block * {kernel_h} + ky) * {kernel_w} + kx) * {quads} + quad) * {4 * LANES} "
                                      f"+ lane * 4 + r] = {value}")
                    # 128 * sum(w) of the block's 16 filters: vpdpbusd of 0x80 bytes with its packed weight
                    sums = f"colsum[T.ramp(block * {LANES}, 1, {LANES})]"
                    code.line(f"{sums} = T.broadcast(T.int32(0), {LANES})")
                    if signed:
                        steps = kernel_h * kernel_w * quads
                        code.line(f"for step in T.serial({steps}):")
                        with code.indent():
                            code.line(f"{sums} = vpdpbusd({sums}, SHIFT_BYTES, "
                                      f"packed[T.ramp((block * {steps} + step) * {4 * LANES}, 1, {4 * LANES})])")
            code.line(f"for job in T.parallel({groups * out_h}):")
            with code.indent():
                code.line(f"group = T.bind(job // {out_h})")
                code.line(f"oy = T.bind(job % {out_h})")

                def tile(base: str, count: int) -> None:
                    for index in range(count * nv):
                        code.line(f"acc[{code.vector(index)}] = T.broadcast(T.int32(0), {LANES})")
                    code.line(f"for ky, kx, quad in T.grid({kernel_h}, {kernel_w}, {quads}):")
                    with code.indent():
                        for v in range(nv):
                            offset = (f"((((group * {nv} + {v}) * {kernel_h} + ky) * {kernel_w} + kx) * {quads} + quad) "
                                      f"* {4 * LANES}")
                            code.line(f"b{v} = T.bind(packed[T.ramp({offset}, 1, {4 * LANES})])")
                        for i in range(count):
                            pixel = (f"((oy * {stride_h} + ky * {dilation_h}) * {data_w} + ({base} + {i}) * {stride_w} "
                                     f"+ kx * {dilation_w}) * {depth} + quad * 4")
                            code.line(f"a{i} = T.bind(T.reinterpret(T.broadcast(T.reinterpret(pixels[T.ramp({pixel}, 1, 4)], "
                                      f"dtype=\"int32\"), {LANES}), dtype=\"int8x64\"))")
                            for v in range(nv):
                                vector = code.vector(i * nv + v)
                                code.line(f"acc[{vector}] = vpdpbusd(acc[{vector}], a{i}, b{v})")
                    for i in range(count):
                        for v in range(nv):
                            first = f"group * {nv * LANES} + {v * LANES}"
                            partial = v == nv - 1 and padded != filters  # the last group's last vector
                            if partial:
                                code.line(f"if group == {groups - 1}:")
                                with code.indent():
                                    code.line(f"for lane in T.unroll({filters % LANES}):")
                                    with code.indent():
                                        out = (f"C[0, oy, {base} + {i}, {first} + lane]" if nhwc
                                               else f"C[0, {first} + lane, oy, {base} + {i}]")
                                        code.line(f"{out} = acc[{(i * nv + v) * LANES} + lane] - colsum[{first} + lane]")
                                code.line("else:")
                                code.depth += 1
                            if nhwc:
                                out = f"C[0, oy, {base} + {i}, T.ramp({first}, 1, {LANES})]"
                                code.line(f"{out} = acc[{code.vector(i * nv + v)}] - colsum[T.ramp({first}, 1, {LANES})]")
                            else:  # the NCHW function output: lane by lane
                                code.line(f"for lane in T.unroll({LANES}):")
                                with code.indent():
                                    out = f"C[0, {first} + lane, oy, {base} + {i}]"
                                    code.line(f"{out} = acc[{(i * nv + v) * LANES} + lane] - colsum[{first} + lane]")
                            if partial:
                                code.depth -= 1

                _row_tiles(code, tile, tiles, mr, rest)
    return code.parse()


def _row_tiles(code, tile, tiles: int, mr: int, rest: int) -> None:
    """Emit ``tile`` for ``tiles`` full tiles of ``mr`` rows (a serial loop), then one of ``rest`` rows."""
    if tiles:
        code.line(f"for tile in T.serial({tiles}):")
        with code.indent():
            tile(f"tile * {mr}", mr)
    if rest:
        tile(str(tiles * mr), rest)
