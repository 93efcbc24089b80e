"""One call from an optc graph to a complete AOT bundle directory with its memory report.

    info = write_aot_bundle(graph, directory, core=CORES["cortex-m4"], sram=256 * 1024)

Writes ``model.c``, ``weights.c``, ``kernels.c``, ``model.h``, ``include/``, ``main.c`` (the
test driver), ``Makefile``, and for a Cortex-M core ``startup.c`` + ``board.ld``; then
``memory.json``, ``memory.txt`` and ``memory.png``. A budget the model cannot meet raises
``MemoryBudgetError`` saying by how much. ``write_fitting_bundle`` first tries patch-based
execution of the first stage (MCUNetV2) when the layer-by-layer plan exceeds the SRAM budget.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import LoweringError
from ...ir.graph import Graph
from . import build, report
from .codegen import write_bundle
from .cortex_m import STARTUP_C, Core, linker_script, makefile_rules
from .driver import driver_source, host_makefile
from .from_graph import program_from_graph
from .kernels import build_kernels
from .patch_graph import patch_graph
from .patching import search_patches
from .planner import caller_aliases, plan_memory

logger = logging.getLogger(__name__)

STACK_ESTIMATE = 4096  # bytes: driver + deepest kernel frame; unscheduled TVM kernels keep scratch in workspace


class MemoryBudgetError(LoweringError):
    """The model does not fit the SRAM or flash budget; the message says by how much."""

    def __init__(self, message: str, needed: int = 0, resource: str = "sram") -> None:
        super().__init__(message)
        self.needed = needed
        self.resource = resource  # "sram" or "flash"


@dataclass
class BundleInfo:
    directory: Path
    memory: dict[str, Any] = field(default_factory=dict)
    inputs: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    outputs: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)


def write_fitting_bundle(graph: Graph, directory: Path, *, core: Core | None = None, sram: int | None = None,
                         flash: int | None = None, strategy: str = "search", inplace: bool = True,
                         patches: str = "auto", tries: int = 3) -> BundleInfo:
    """``write_aot_bundle``; when the SRAM budget is not met and ``patches`` is "auto", the best
    patch-based plans (``search_patches`` on the graph) are emitted in turn until one fits."""
    options = dict(core=core, sram=sram, flash=flash, strategy=strategy, inplace=inplace)
    try:
        return write_aot_bundle(graph, directory, **options)
    except MemoryBudgetError as error:
        if patches != "auto" or sram is None or error.resource != "sram":
            raise
        failure = error
    # the graph-level estimate ranks the plans; the compiled plan decides whether one fits
    candidates = search_patches(program_from_graph(graph), sram)[:tries]
    tried = []
    for candidate in candidates:
        try:
            patched = patch_graph(graph, candidate.split_tensor, candidate.grid)
        except LoweringError as error:
            tried.append(f"{candidate.split_tensor} {candidate.grid}x{candidate.grid}: {error}")
            continue
        plan = {"description": candidate.describe(), "split_tensor": candidate.split_tensor, "grid": candidate.grid,
                "extra_macs": (patched.flops() - graph.flops()) // 2, "macs": graph.flops() // 2, "emitted": True}
        shutil.rmtree(directory, ignore_errors=True)
        try:
            return write_aot_bundle(patched, directory, patch_plan=plan, **options)
        except MemoryBudgetError as error:
            tried.append(f"{candidate.grid}x{candidate.grid} up to {candidate.split_tensor}: {error.needed / 1024:.1f} KB")
    detail = (f"; patch-based plans need: {', '.join(tried)}" if tried
              else "; the patch search (first stage in patches) finds no plan under the budget either")
    raise MemoryBudgetError(f"{failure}{detail}", failure.needed, failure.resource) from failure


def write_aot_bundle(graph: Graph, directory: Path, *, core: Core | None = None, sram: int | None = None,
                     flash: int | None = None, strategy: str = "search", inplace: bool = True,
                     patch_plan: dict[str, Any] | None = None) -> BundleInfo:
    directory = Path(directory)
    kernels = build_kernels(graph)
    program = kernels.program
    plans = {"greedy-by-size": plan_memory(program, strategy="greedy", inplace=False),
             "optc": plan_memory(program, strategy=strategy, inplace=inplace)}
    plan = plans["optc"]
    aliases = caller_aliases(program) if inplace else {}
    bundle = write_bundle(kernels, plan, directory, aliases)
    (directory / "main.c").write_text(driver_source(program, aliases))
    makefile = host_makefile()
    if core is not None:
        (directory / "startup.c").write_text(STARTUP_C)
        (directory / "board.ld").write_text(linker_script(core))
        makefile += "\n" + makefile_rules(core)
    (directory / "Makefile").write_text(makefile)

    workspace = max((b.size for b in plan.buffers if b.kind == "workspace"), default=0)
    measured = _measure_elf(directory) if core is not None else {}
    stack = measured.get("stack_bytes") or STACK_ESTIMATE
    memory: dict[str, Any] = {
        "core": core.name if core else None,
        "board": core.board if core else None,
        "planner": plan.algorithm,
        "arena_bytes": plan.arena_size,
        "largest_workspace_bytes": workspace,
        "live_lower_bound_bytes": plan.lower_bound,
        "greedy_arena_bytes": plans["greedy-by-size"].arena_size,
        "stack_estimate_bytes": stack,
        "stack_source": "-fstack-usage" if measured.get("stack_bytes") else "fixed estimate",
        "peak_sram_bytes": plan.arena_size + stack,
        "flash_bytes": measured.get("flash_bytes"),
        "weight_bytes": bundle.weight_bytes,
        "output_aliases": aliases,
        "aliased_output_bytes": sum(program.tensors[name].nbytes for name in aliases),
        "sram_budget_bytes": sram,
        "flash_budget_bytes": flash,
        "steps": report.step_table(program, plan),
        "patch_plan": patch_plan if patch_plan is not None else _patch_summary(graph, sram),
    }
    table = report.format_table(memory["steps"])
    (directory / "memory.txt").write_text(summary(memory) + "\n\n" + table + "\n")
    report.plot_memory(program, plans, directory / "memory.png", budget=sram)
    (directory / "memory.json").write_text(json.dumps(memory, indent=1) + "\n")
    check_budget(memory)
    info = BundleInfo(directory, memory)
    info.inputs = [(n, program.tensors[n].shape, program.tensors[n].dtype) for n in program.inputs]
    info.outputs = [(n, program.tensors[n].shape, program.tensors[n].dtype) for n in program.outputs]
    return info


def _measure_elf(directory: Path) -> dict[str, Any]:
    """Flash (``arm-none-eabi-size``) and stack (``-fstack-usage``) of the Cortex-M build, made in a
    scratch copy; empty when the cross compiler is not installed (then the 4 KB estimate is used)."""
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("make") is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="optc-mcu-size-") as scratch:
        work = Path(scratch) / "bundle"
        shutil.copytree(directory, work)
        elf = build.build_mcu(work)
        return {"flash_bytes": build.elf_sizes(elf)["flash_bytes"], "stack_bytes": build.stack_estimate(work)}


def _patch_summary(graph: Graph, sram: int | None) -> dict[str, Any] | None:
    """MCUNetV2 patch plan of the graph's first stage (planned on the graph; not yet emitted as C)."""
    try:
        candidates = search_patches(program_from_graph(graph), sram)
    except Exception as error:  # analysis only: never fail a build for it
        logger.info("patch search skipped: %s", error)
        return None
    if not candidates:
        return None
    best = candidates[0]
    return {"description": best.describe(), "peak_bytes": best.peak, "extra_macs": best.extra_macs,
            "split_tensor": best.split_tensor, "grid": best.grid, "emitted": False}


def summary(memory: dict[str, Any]) -> str:
    kb = 1024
    lines = [
        f"peak SRAM {memory['peak_sram_bytes'] / kb:.1f} KB = arena {memory['arena_bytes'] / kb:.1f} KB "
        f"(planner: {memory['planner']}; TFLM greedy-by-size {memory['greedy_arena_bytes'] / kb:.1f} KB; "
        f"live-tensor lower bound {memory['live_lower_bound_bytes'] / kb:.1f} KB) + stack "
        f"{memory['stack_estimate_bytes'] / kb:.1f} KB ({memory.get('stack_source', 'fixed estimate')})",
        f"weights {memory['weight_bytes'] / kb:.1f} KB (flash)",
    ]
    if memory.get("output_aliases"):
        lines.append(f"{len(memory['output_aliases'])} outputs may be written over their inputs (model_output_alias): "
                     f"{memory['aliased_output_bytes'] / kb:.1f} KB of caller buffers saved "
                     f"({', '.join(f'{out} over {source}' for out, source in memory['output_aliases'].items())})")
    if memory.get("flash_bytes") is not None:
        lines.append(f"flash {memory['flash_bytes'] / kb:.1f} KB (arm-none-eabi-size: code + weights + data)")
    patches = memory.get("patch_plan")
    if patches and patches.get("emitted"):
        lines.append(f"patch-based first stage (emitted): split at {patches['split_tensor']}, "
                     f"{patches['grid']}x{patches['grid']} patches, +{patches['extra_macs']:,} MACs "
                     f"({100 * patches['extra_macs'] / max(patches['macs'], 1):.1f}%)")
    elif patches:
        lines.append(f"patch-based first stage (graph-level estimate, not emitted): {patches['description']}")
    return "\n".join(lines)


def check_budget(memory: dict[str, Any]) -> None:
    kb = 1024
    sram, flash = memory.get("sram_budget_bytes"), memory.get("flash_budget_bytes")
    if sram is not None and memory["peak_sram_bytes"] > sram:
        over = memory["peak_sram_bytes"] - sram
        raise MemoryBudgetError(
            f"the model needs {memory['peak_sram_bytes'] / kb:.1f} KB of SRAM (arena {memory['arena_bytes'] / kb:.1f} KB "
            f"+ stack {memory['stack_estimate_bytes'] / kb:.1f} KB) but --sram gives {sram / kb:.0f} KB: "
            f"{over / kb:.1f} KB over; use a smaller model or input, or a core with more SRAM",
            memory["peak_sram_bytes"],
        )
    needed_flash = memory.get("flash_bytes") or memory["weight_bytes"]
    if flash is not None and needed_flash > flash:
        raise MemoryBudgetError(
            f"the model needs {needed_flash / kb:.1f} KB of flash but --flash gives {flash / kb:.0f} KB: "
            f"{(needed_flash - flash) / kb:.1f} KB over; prune or quantize the weights",
            needed_flash, "flash",
        )
