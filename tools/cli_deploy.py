"""``optc deploy`` and the target options of ``optc compile`` (``--mcpu/--mattr/--sram/--flash``).

    optc compile model.onnx --target cpu --mcpu x86-64-v3 --mattr '' -o out/portable   # any AVX2 x86-64

    optc compile model.onnx --target mcu --mcpu cortex-m4 --sram 256 --flash 1024 -o out/m
    optc deploy out/m --qemu                # build for the core, run under QEMU, compare with the reference
    optc deploy out/m --copy DIR            # copy the C bundle (sources, Makefile, memory report) to DIR

    optc compile model.onnx --target arm --mcpu cortex-a72 --mattr +neon -o out/a
    optc deploy out/a --to DIR --qemu       # copy bundle + manifest, verify hashes there, self-test under qemu-aarch64
    optc deploy out/a --to user@host:DIR    # the same over scp/ssh on the board itself
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
    group = parser.add_argument_group("the CPU a target builds for (--target cpu, mcu, arm)")
    group.add_argument("--mcpu", help="cpu: an LLVM CPU or x86-64 level (default: this host's level, e.g. x86-64-v4); "
                                      "mcu: cortex-m4 (default), cortex-m7, cortex-m55; "
                                      "arm: cortex-a53 (default), cortex-a72, cortex-a76, neoverse-n1, generic")
    group.add_argument("--mattr", help="cpu: LLVM features on top of --mcpu, comma-separated (default: what this host "
                                       "adds, e.g. +avx512vnni; '' for none, a portable build); "
                                       "arm: aarch64 features (default +neon; +dotprod, +fp16, ...)")
    group.add_argument("--sram", type=int, help="mcu: SRAM budget in KB: compilation fails, saying by how much, above it")
    group.add_argument("--flash", type=int, help="mcu: flash budget in KB (weights + code)")


TARGET_OPTIONS = {"cpu": ("mcpu", "mattr"), "mcu": ("mcpu", "sram_kb", "flash_kb"), "arm": ("mcpu", "mattr")}
FLAGS = {"mcpu": "--mcpu", "mattr": "--mattr", "sram_kb": "--sram", "flash_kb": "--flash"}


def target_options(args: argparse.Namespace) -> dict[str, Any]:
    """Target options from the command line (the mcu and arm targets take some)."""
    given = {"mcpu": getattr(args, "mcpu", None), "mattr": getattr(args, "mattr", None),
             "sram_kb": getattr(args, "sram", None), "flash_kb": getattr(args, "flash", None)}
    given = {key: value for key, value in given.items() if value is not None}
    wrong = [FLAGS[key] for key in given if key not in TARGET_OPTIONS.get(args.target, ())]
    if wrong:
        takers = ", ".join(f"--target {name}: {'/'.join(FLAGS[key] for key in keys)}" for name, keys in TARGET_OPTIONS.items())
        raise InputError(f"{'/'.join(wrong)} not an option of --target {args.target} ({takers})")
    return given


def cmd_deploy(args: argparse.Namespace) -> int:
    from ..backends.artifact import load_artifact
    from ..ir.interpret import interpret, sample_inputs
    from ..passes.report import compare_outputs
    from .cli import load_feeds, summarize

    artifact = load_artifact(args.artifact)  # a modified artifact is refused here (sha256 in the manifest)
    compiled = artifact.compiled
    if artifact.target == "arm":
        return deploy_arm(args, artifact)
    if not hasattr(compiled, "run_qemu"):
        raise InputError(f"{args.artifact} was compiled for {artifact.target}; deploy needs a --target mcu or arm artifact")
    if args.to:
        from ..backends.aot.deploy import copy_artifact, is_remote

        if is_remote(args.to):
            raise InputError("an mcu artifact is flashed from this machine: --to takes a local directory here, not user@host:DIR")
        copy_artifact(Path(args.artifact), Path(args.to))
        print(f"copied {args.artifact} with its manifest to {args.to}; sha256 of every file verified there")
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


def deploy_arm(args: argparse.Namespace, artifact: Any) -> int:
    """Copy an arm artifact to ``--to`` (directory or user@host:DIR), verify it there, self-test it."""
    from ..backends.aot import aarch64
    from ..backends.aot.deploy import copy_artifact, deploy_remote, is_remote, run_selftest
    from ..backends.targets.arm import BUNDLE_DIRECTORY

    if args.copy or args.inputs or args.save:
        raise InputError("an arm artifact is deployed with --to DIR|user@host:DIR [--qemu]; "
                         "--copy/--inputs/--save are mcu options (the self-test uses the bundle's stored inputs)")
    compiled = artifact.compiled
    signature = compiled.signature()
    if not args.to:
        if not args.qemu:
            raise InputError("give --to DIR (or user@host:DIR) to deploy, and/or --qemu to self-test under qemu-aarch64")
        result = run_selftest(compiled.bundle, compiled.target.core, signature, qemu=True, in_place=False)
        where = f"{args.artifact}/{BUNDLE_DIRECTORY}"
    elif is_remote(args.to):
        result = deploy_remote(Path(args.artifact), args.to, BUNDLE_DIRECTORY, signature)
        where = args.to
        print(f"copied {args.artifact} to {args.to} (scp); sha256sum -c passed there")
    else:
        destination = copy_artifact(Path(args.artifact), Path(args.to))
        where = str(destination)
        print(f"copied {args.artifact} with its manifest to {destination}; sha256 of every file verified there")
        if not args.qemu and not aarch64.is_aarch64_host():
            print(f"self-test not run: this machine cannot run aarch64 code; add --qemu to run it under qemu-aarch64, "
                  f"or on the board: cd {BUNDLE_DIRECTORY}/{aarch64.SELFTEST} && ../{aarch64.RUNNER}")
            return 0
        result = run_selftest(destination / BUNDLE_DIRECTORY, compiled.target.core, signature, qemu=args.qemu)
    if Path(result.command[0]).name == "qemu-aarch64":
        how = f"under qemu-aarch64 -cpu {result.command[2]}"
    else:
        how = f"over ssh on {result.command[1]}" if result.command[0] == "ssh" else "natively"
    print(f"self-test of {where} ({compiled.target.mcpu}, {how}): max|err| {result.max_abs_error:.3g} "
          f"vs the reference interpreter's stored outputs (tolerance {args.tolerance:g})")
    if args.json:
        Path(args.json).write_text(json.dumps({"max_abs_error": result.max_abs_error, "destination": where}, indent=1) + "\n")
    if not result.max_abs_error <= args.tolerance:
        from ..backends.aot.deploy import DeployError

        raise DeployError(f"the self-test in {where} is off by {result.max_abs_error:.3g} (> {args.tolerance:g}); "
                          "the board's build does not match the reference, do not use it")
    return 0


def register_deploy(sub: Any) -> None:
    parser = sub.add_parser("deploy", help="copy an artifact to a directory or board and self-test it (mcu: QEMU)")
    parser.add_argument("artifact")
    parser.add_argument("--to", help="arm/mcu: copy the artifact with its manifest here (a new or empty directory, "
                                     "or user@host:DIR over scp/ssh), verify the hashes there, run the self-test (arm)")
    parser.add_argument("--qemu", action="store_true",
                        help="mcu: build with arm-none-eabi-gcc, run under qemu-system-arm; arm: run the self-test under qemu-aarch64")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="arm: max |error| the self-test accepts")
    parser.add_argument("--copy", help="mcu: copy the C bundle to this directory")
    parser.add_argument("--inputs", help=".npz keyed by input name (default: seeded random inputs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the outputs to this .npz")
    parser.add_argument("--json", help="write the run's numbers (error, instructions, sizes) to this JSON file")
    parser.set_defaults(func=cmd_deploy)
