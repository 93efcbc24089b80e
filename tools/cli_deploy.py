"""``optc deploy OUT --qemu`` and the ``--mcpu/--sram/--flash`` options of ``optc compile``.

    optc compile model.onnx --target mcu --mcpu cortex-m4 --sram 256 --flash 1024 -o out/m
    optc deploy out/m --qemu                # build for the core, run under QEMU, compare with the reference
    optc deploy out/m --copy DIR            # copy the C bundle (sources, Makefile, memory report) to DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError


def add_mcu_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("microcontroller target (--target mcu)")
    group.add_argument("--mcpu", help="cortex-m4 (default), cortex-m7 or cortex-m55")
    group.add_argument("--sram", type=int, help="SRAM budget in KB: compilation fails, saying by how much, above it")
    group.add_argument("--flash", type=int, help="flash budget in KB (weights + code)")


def target_options(args: argparse.Namespace) -> dict[str, Any]:
    """Target options from the command line (only the mcu target takes any today)."""
    given = {"mcpu": getattr(args, "mcpu", None), "sram_kb": getattr(args, "sram", None),
             "flash_kb": getattr(args, "flash", None)}
    given = {key: value for key, value in given.items() if value is not None}
    if given and args.target != "mcu":
        raise InputError(f"--mcpu/--sram/--flash are options of --target mcu, not of --target {args.target}")
    return given


def cmd_deploy(args: argparse.Namespace) -> int:
    from ..backends.artifact import load_artifact
    from ..ir.interpret import interpret, sample_inputs
    from ..passes.report import compare_outputs
    from .cli import load_feeds, summarize

    artifact = load_artifact(args.artifact)
    compiled = artifact.compiled
    if not hasattr(compiled, "run_qemu"):
        raise InputError(f"{args.artifact} was compiled for {artifact.target}; deploy needs a --target mcu artifact")
    if args.copy:
        destination = Path(args.copy)
        if destination.exists() and any(destination.iterdir()):
            raise InputError(f"{destination} exists and is not empty; choose an empty or new directory")
        shutil.copytree(compiled.bundle, destination, dirs_exist_ok=True)
        print(f"copied the C bundle to {destination} (make host | make mcu | make qemu)")
    if not args.qemu:
        return 0
    feeds = load_feeds(args.inputs) if args.inputs else sample_inputs(artifact.graph, seed=args.seed)
    outputs, stats = compiled.run_qemu(feeds)
    flash_kb = compiled.target.flash_kb
    if flash_kb is not None and stats["flash_bytes"] > flash_kb * 1024:
        from ..backends.aot.bundle import MemoryBudgetError

        raise MemoryBudgetError(
            f"the {compiled.target.mcpu} build needs {stats['flash_bytes'] / 1024:.1f} KB of flash (code + weights, "
            f"arm-none-eabi-size) but --flash gave {flash_kb} KB: {stats['flash_bytes'] / 1024 - flash_kb:.1f} KB over"
        )
    reference = interpret(artifact.graph, feeds)
    error, cosine = compare_outputs(reference, outputs)
    print(f"ran {args.artifact} on {compiled.target.mcpu} under qemu-system-arm -M {stats['board']}")
    for name, array in outputs.items():
        print(summarize(name, array))
    print(f"vs reference interpreter: max|err| {error:.3g}, cosine {cosine:.6f}")
    print(f"instructions (QEMU -icount, SysTick): {stats['instructions']:,}")
    memory = compiled.memory
    if memory:
        stack = stats.get("stack_bytes") or memory["stack_estimate_bytes"]
        source = "-fstack-usage" if stats.get("stack_bytes") else "fixed estimate"
        print(f"peak SRAM {(memory['arena_bytes'] + stack) / 1024:.1f} KB = arena {memory['arena_bytes'] / 1024:.1f} KB "
              f"(workspace included) + stack {stack / 1024:.1f} KB ({source})")
    print(f"flash {stats['flash_bytes'] / 1024:.1f} KB (arm-none-eabi-size: .text + .rodata + .ARM.exidx + .data), "
          f"static RAM {stats['static_ram_bytes'] / 1024:.1f} KB (.data + .bss: arena and I/O buffers)")
    if args.save:
        np.savez(args.save, **outputs)
    if args.json:
        Path(args.json).write_text(json.dumps({"max_abs_error": error, "cosine": cosine, **stats}, indent=1) + "\n")
    return 0


def register_deploy(sub: Any) -> None:
    parser = sub.add_parser("deploy", help="build an mcu artifact for its core and run it under QEMU")
    parser.add_argument("artifact")
    parser.add_argument("--qemu", action="store_true", help="build with arm-none-eabi-gcc and run under qemu-system-arm")
    parser.add_argument("--copy", help="copy the C bundle to this directory")
    parser.add_argument("--inputs", help=".npz keyed by input name (default: seeded random inputs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the outputs to this .npz")
    parser.add_argument("--json", help="write the run's numbers (error, instructions, sizes) to this JSON file")
    parser.set_defaults(func=cmd_deploy)
