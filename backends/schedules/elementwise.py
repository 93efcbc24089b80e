"""A CPU schedule rule for standalone elementwise / injective kernels (no reduction in them).

What FuseOps leaves on its own in a transformer: GELU after an int8 product, ``dynamic_quantize``,
residual adds, the copies of reshape + transpose / split around attention, embedding lookups.
Unscheduled, every block of such a PrimFunc is a serial scalar loop nest writing a full-size
intermediate buffer (the tanh GELU of GPT-2 is ten passes over its 128 x 3072 activation). The
rule makes each a single pass::

    parallel for rows (the output's leading dims, fused):   # when the kernel pays a thread wake-up
        for chunk in row / w:
            vectorize for lane in w:                       # w = 16 float32 lanes on AVX-512
                out[row, chunk * w + lane] = f(inputs ...)  # every intermediate block inlined

The innermost loop is vectorized only where every load and the store are contiguous in it
(after flattening the buffers: a reshape's div/mod indices count as contiguous when they cancel)
or do not depend on it (a broadcast operand, a scalar scale); trailing dims are fused first when
that gives a vector width dividing the extent (a ragged 7 x 5 tail becomes one loop of 35).
Kernels that transpose their innermost dim keep a scalar inner loop (``Transpose`` takes the big
ones before this rule); bool buffers are never vectorized.
"""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir, sym, tirx
from tvm.ir import Range
from tvm.ir.expr import Call, TensorLoad
from tvm.ir.prim.expr import BinaryOpExpr, Cast, CmpExpr, LogicalExpr, Select
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

from .common import num_cores, static_extent, vector_lanes

# below this many elements a kernel is left unscheduled: nothing to gain
MIN_ELEMENTS = 256
# parallel above this much work (elements x (value operations + COPY_COST), summed over the
# blocks for RowReduction): ~40 us of serial work. On the 2-core test machine (quiet, 2 TVM
# threads, best of 7) a parallel launch cost 10-25 us: the tanh GELU of GPT-2 (128 x 3072, 17M
# units) went 78 -> 47-57 us in parallel, but its layer norm (128 x 768, 1.2M) 19 -> 28 us, a
# 128 x 2304 split copy 24 -> 39-56 us and dynamic_quantize (128 x 3072, 3.5M) 23 -> 17-30 us.
PARALLEL_MIN_UNITS = 1 << 22
COPY_COST = 4  # a load and a store, in the units of one vector arithmetic operation per element


class Elementwise(CPUScheduleRule):
    """Injective PrimFuncs: intermediates inlined, innermost contiguous axis vectorized, rows parallel."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(vectorizable_rounding(func))
        infos = normalize_prim_func(sch)
        if not infos or not all(info.is_injective() for info in infos):
            return None
        for info in infos:
            written = sch.get(info.block_rv).writes
            if len(written) != 1:
                return None
            if not is_param(func, written[0].source):
                try:
                    sch.compute_inline(info.block_rv)
                except Exception:  # pylint: disable=broad-except  (TVM refuses: leave the func alone)
                    return None
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if sum(_elements(sch, block) for block in blocks) < MIN_ELEMENTS:
            return None
        lanes = vector_lanes(target)
        for block in blocks:
            schedule_injective_block(sch, block, target, lanes)
        return sch


def vectorizable_rounding(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with ``nearbyint(x)`` written ``round(x)``: the same instruction on x86 (LLVM's
    nearbyint, ties to even, ``vrndscaleps $12``), but TVM's vectorizer only knows ``round``
    and scalarizes a whole loop around a ``nearbyint`` (``dynamic_quantize`` ran 5x slower
    "vectorized" than serial)."""

    def visit_call(call, mutator):
        if getattr(call.op, "name", None) != "tirx.nearbyint" or len(call.args) != 1:
            return mutator.default_mutate(call)
        return tirx.round(mutator.mutate(call.args[0]))

    return tvm_ffi.structural_mutate(func, [(Call, visit_call)])


def is_param(func: tirx.PrimFunc, buffer: tirx.Buffer) -> bool:
    """Whether ``buffer`` is one of ``func``'s arguments (TVM 0.27: the params are the buffers)."""
    return any(param.same_as(buffer) or param.data.same_as(buffer.data) for param in func.params)


def _elements(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int:
    elements = 1
    for loop in sch.get_loops(block):
        elements *= static_extent(sch, loop) or 64  # a symbolic extent (sequence length) counts as 64
    return elements


def schedule_injective_block(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, target: Target, lanes: int) -> None:
    """One injective block on its own loop nest: vectorize a contiguous tail, parallelize the rest."""
    loops = sch.get_loops(block)
    if not loops:
        return
    elements = _elements(sch, block)
    vector = None
    suffix, width = vector_suffix(sch, block, lanes)
    if suffix:
        tail = sch.fuse(*loops[-suffix:]) if suffix > 1 else loops[-1]
        loops = [*loops[:-suffix], tail]
        chunks, vector = sch.split(loops[-1], [None, width])
        loops = [*loops[:-1], chunks]
    work = elements * (operation_count(sch.get(block)) + COPY_COST)
    if num_cores(target) > 1 and work >= PARALLEL_MIN_UNITS:
        # the leading dims; the chunks of the row too when the rows are too few to share
        outer = loops[:-1]
        rows = 1
        for loop in outer:
            rows *= static_extent(sch, loop) or 64
        if rows < 4 * num_cores(target):
            outer = loops
        if outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    if vector is not None:
        sch.vectorize(vector)


def vector_suffix(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> tuple[int, int]:
    """(how many innermost loops to fuse, vector width) for ``block``; (0, 0) when none vectorizes.

    The fewest trailing loops whose fused extent a width of ``lanes``, ``lanes / 2`` or ``lanes /
    4`` (at least 4) divides, if every access is contiguous or constant along the fused loop.
    (A concat's ``if_then_else`` on the lane passes this check; TVM then scalarizes that loop,
    which is slower than a plain loop but exact.)
    """
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    iter_vars = list(stmt.iter_vars)
    if len(loops) != len(iter_vars) or has_bool_buffer(stmt):
        return 0, 0
    extents = [static_extent(sch, loop) for loop in loops]
    extent = 1
    for suffix in range(1, len(loops) + 1):
        if extents[-suffix] is None:
            return 0, 0
        extent *= extents[-suffix]
        width = dividing_width(extent, lanes)
        if width:
            # a wider fuse would not make a strided access contiguous
            return (suffix, width) if is_contiguous(stmt, iter_vars[-suffix:], width) else (0, 0)
    return 0, 0


def dividing_width(extent: int, lanes: int) -> int:
    """The widest of ``lanes``, ``lanes / 2``, ``lanes / 4`` (at least 4) dividing ``extent``; 0 if none."""
    width = lanes
    while width >= 4:
        if extent % width == 0:
            return width
        width //= 2
    return 0


def has_bool_buffer(stmt: s_tir.SBlock) -> bool:
    return any(str(region.source.dtype) == "bool" for region in (*stmt.reads, *stmt.writes))


def is_contiguous(stmt: s_tir.SBlock, iter_vars: list[tirx.IterVar], width: int) -> bool:
    """Whether every load and store of the block steps by one element across each ``width``-lane
    vector of the fused ``iter_vars`` (row-major, the last one fastest), or stays in place.

    The indices are flattened over the buffer's shape and simplified with the iterators' ranges,
    so a reshape's ``(v // 768 + row) % 64 * 768 + v % 768`` counts as ``row * 768 + v``, and a
    head merge ``q[v // 64, row, v % 64]`` as contiguous in vectors of 16 (not across 64).
    """
    analyzer = sym.Analyzer()
    for iv in stmt.iter_vars:
        analyzer.bind(iv.var, iv.dom)
    total = 1
    for iv in iter_vars:
        total *= int(iv.dom.extent)
    # the fused iterator f = chunk * width + lane; each v_i = f // stride_i % extent_i
    chunk, lane = tirx.Var("chunk", "int64"), tirx.Var("lane", "int64")
    analyzer.bind(chunk, Range(tirx.const(0, "int64"), tirx.const(total // width, "int64")))
    analyzer.bind(lane, Range(tirx.const(0, "int64"), tirx.const(width, "int64")))
    fused = chunk * tirx.const(width, "int64") + lane
    substitution = {}
    stride = 1
    for iv in reversed(iter_vars):
        extent = int(iv.dom.extent)
        value = fused if stride == 1 else tirx.floordiv(fused, tirx.const(stride, "int64"))
        if iv is not iter_vars[0]:
            value = tirx.floormod(value, tirx.const(extent, "int64"))
        substitution[iv.var] = value if str(iv.var.ty) == "int64" else tirx.Cast(str(iv.var.ty), value)
        stride *= extent
    accesses = []
    tvm_ffi.structural_walk(stmt.body, [((TensorLoad, tirx.BufferStore), accesses.append)])
    for access in accesses:
        flat = _flat_index(access)
        if flat is None:
            return False
        if not any(uses_var(flat, iv.var) for iv in iter_vars):
            continue  # a broadcast operand: one value for the whole vector
        offset = analyzer.simplify(_substitute(flat, substitution) - lane)
        if uses_var(offset, lane):
            return False
    return True


def _flat_index(access: TensorLoad | tirx.BufferStore) -> tirx.Expr | None:
    """The row-major element offset of a load or store (TVM 0.27: a load is a ``TensorLoad`` of a
    ``source`` buffer, a store a ``BufferStore`` of a ``buffer``)."""
    shape = (access.buffer if isinstance(access, tirx.BufferStore) else access.source).shape
    indices = list(access.indices)
    if len(indices) != len(shape) or any(isinstance(index, tirx.Ramp) for index in indices):
        return None
    if not indices:
        return tirx.const(0, "int64")
    flat = _int64(indices[0])
    for extent, index in zip(shape[1:], indices[1:]):
        flat = flat * _int64(extent) + _int64(index)
    return flat


def _int64(expr: tirx.Expr) -> tirx.Expr:
    return expr if str(expr.ty) == "int64" else tirx.Cast("int64", expr)


def uses_var(expr: tirx.Expr, var: tirx.Var) -> bool:
    """Whether ``var`` occurs in ``expr``."""
    found = []
    tvm_ffi.structural_walk(expr, [(tirx.Var, lambda seen: found.append(seen) if seen.same_as(var) else None)])
    return bool(found)


def _substitute(expr: tirx.Expr, substitution: dict) -> tirx.Expr:
    def visit_var(var, mutator):
        for old, new in substitution.items():
            if var.same_as(old):
                return new
        return var

    return tvm_ffi.structural_mutate(expr, [(tirx.Var, visit_var)])


def operation_count(stmt: s_tir.SBlock) -> int:
    """Value operations (arithmetic, compares, selects, casts, calls; not index arithmetic) per
    element: the work the rule weighs against a thread wake-up."""
    count = [0]
    operations = (BinaryOpExpr, CmpExpr, LogicalExpr, Select, Cast, Call)

    def visit(node):
        if isinstance(node, operations) and str(node.ty) not in ("int32", "int64"):
            count[0] += 1

    tvm_ffi.structural_walk(stmt.body, visit)
    return count[0]
