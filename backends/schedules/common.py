"""Helpers the schedule rules share: block analysis, epilogue inlining, vector widths."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.target import Target, codegen


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """How many ``dtype_bits`` lanes one SIMD register of ``target`` holds (at least 4)."""
    bits = 128
    try:
        if codegen.target_has_features("avx512f", target):
            bits = 512
        elif codegen.target_has_features("avx", target):
            bits = 256
    except Exception:  # non-x86 LLVM targets: NEON and friends are 128 bits
        bits = 128
    return max(4, bits // dtype_bits)


def num_cores(target: Target) -> int:
    cores = target.attrs.get("num-cores")
    return int(cores) if cores is not None else 1


def static_extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


@dataclass
class Anchor:
    """A PrimFunc split into one reduction block and the injective blocks around it."""

    sch: s_tir.Schedule
    block: SBlockInfo  # the reduction ("anchor") block
    producers: list[SBlockInfo]  # injective blocks before it (padding), in order
    epilogue: SBlockInfo | None  # the one injective block left after it, writing the output


def find_anchor(func: tirx.PrimFunc) -> Anchor | None:
    """The func as producers -> one reduction -> an epilogue chain; inline the chain into its last block.

    Returns None when the func has another shape (two reductions, a reduction in the epilogue,
    an epilogue that reshapes or shifts the result, something normalize_prim_func cannot read);
    the caller then leaves the func alone.
    """
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos:
        return None
    reductions = [index for index, info in enumerate(infos) if info.is_reduction()]
    if len(reductions) != 1:
        return None
    position = reductions[0]
    block = infos[position]
    producers = infos[:position]
    consumers = infos[position + 1:]
    if not all(info.is_injective() for info in producers + consumers):
        return None
    # inline every consumer but the last (which writes the function output) into its readers
    for info in consumers[:-1]:
        try:
            sch.compute_inline(info.block_rv)
        except Exception:  # pylint: disable=broad-except
            return None
    epilogue = consumers[-1] if consumers else None
    # the normalized infos hold loop RVs that inlining may have invalidated; refresh them
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    names = {info.name: info for info in infos}
    block = names[block.name]
    producers = [names[info.name] for info in producers if info.name in names]
    epilogue = names.get(epilogue.name) if epilogue is not None else None
    if epilogue is not None and not epilogue_is_aligned(sch, block.block_rv, epilogue.block_rv):
        return None
    return Anchor(sch, block, producers, epilogue)


def anchor_for(func, available: bool, max_producers: int) -> Anchor | None:
    """``find_anchor(func)`` as the rules take it: None unless ``func`` is a PrimFunc, the rule's
    target takes it (``available``) and it has at most ``max_producers`` producer blocks."""
    if not isinstance(func, tirx.PrimFunc) or not available:
        return None
    anchor = find_anchor(func)
    if anchor is None or len(anchor.producers) > max_producers:
        return None
    return anchor


def epilogue_is_aligned(sch: s_tir.Schedule, block_rv, epilogue_rv) -> bool:
    """Whether the epilogue reads the reduction's result element for element (no reshape, no shift).

    Only then is ``reverse_compute_at`` of the epilogue into an output tile exact. With any other
    access TVM relaxes the tile to a bounding box, and the epilogue would compute elements of the
    box that other tiles have not reduced yet: wrong results, no error (seen with row tiles that
    straddled two batches).
    """
    block, epilogue = sch.get(block_rv), sch.get(epilogue_rv)
    if len(block.writes) != 1:
        return False
    written = block.writes[0]
    own_vars = [iv.var for iv in epilogue.iter_vars]
    reads = [region for region in epilogue.reads if region.source.same_as(written.source)]
    if not reads:
        return False
    for region in reads:
        if len(region.region) != len(written.region):
            return False
        seen = []
        for produced, consumed in zip(written.region, region.region):
            produced, consumed = produced.min, consumed.min
            if isinstance(produced, tirx.IntImm):
                if not (isinstance(consumed, tirx.IntImm) and int(consumed) == int(produced)):
                    return False
                continue
            if not any(consumed.same_as(var) for var in own_vars) or any(consumed.same_as(var) for var in seen):
                return False
            seen.append(consumed)
    return True


# below this many multiply-adds a kernel runs on one core: waking the thread pool costs more
PARALLEL_MIN_WORK = 1 << 17


def parallelize(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, target: Target, work: int) -> None:
    """Mark ``loop`` parallel when the target has several cores and the kernel is big enough."""
    if num_cores(target) > 1 and work >= PARALLEL_MIN_WORK and (static_extent(sch, loop) or 2) > 1:
        sch.parallel(loop)


def vectorize_registers(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, vectors: int, lanes: int) -> None:
    """The innermost loop of a register tile, ``vectors`` SIMD registers of ``lanes`` wide:
    one vectorized loop, or the registers unrolled around a vectorized loop of ``lanes``."""
    if vectors > 1:
        registers, within = sch.split(loop, [None, lanes])
        sch.unroll(registers)
        sch.vectorize(within)
    else:
        sch.vectorize(loop)


def fitting_lanes(extent: int, lanes: int) -> int:
    """The widest vector (``lanes``, half, quarter; at least 4) that divides ``extent``, else ``lanes``.

    With AVX-512 (16 lanes), 1000 classes or 24 channels still get 8-lane vectors instead of a
    ragged 16-lane tile (which TVM would scalarize).
    """
    width = lanes
    while width >= 4:
        if extent % width == 0:
            return width
        width //= 2
    return lanes
