"""The standalone aarch64 Linux bundle: the AOT C bundle plus a statically linked runner.

The bundle (``write_aot_bundle`` without a Cortex-M core) is cross-compiled with
``aarch64-linux-gnu-gcc -static`` into ``model_arm``: the stdio driver ``main.c`` reads
``input<i>.bin`` from its working directory, runs the model once and writes ``output<i>.bin``.
It needs no TVM runtime and no shared library on the board, and runs on this machine under
``qemu-aarch64``. ``selftest/`` holds seeded inputs and the reference interpreter's outputs so
that a copy of the bundle can check itself wherever it lands (``optc deploy``).

    core = ArmCore("cortex-a72", ("+neon",))
    add_arm_rules(directory, core); runner = build_runner(directory)
    result = run_runner(runner, feeds, signature)            # qemu-aarch64 unless this is aarch64
"""

from __future__ import annotations

import platform
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import LoweringError
from .build import TOOLS, RunResult, _parse, _read_outputs, _write_inputs, make, require

RUNNER = "model_arm"
SELFTEST = "selftest"
CORES = ("cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1", "generic")
FEATURES = {"+neon": "+simd", "+dotprod": "+dotprod", "+fp16": "+fp16", "+i8mm": "+i8mm", "+sve": "+sve"}

TOOLS.update({"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "qemu-aarch64": "qemu-user",
              "ssh": "openssh-client", "scp": "openssh-client"})


@dataclass(frozen=True)
class ArmCore:
    """An aarch64 core (``mcpu``) and LLVM-style features (``mattr``: +neon, +dotprod, ...)."""

    mcpu: str = "generic"
    mattr: tuple[str, ...] = ("+neon",)

    def __post_init__(self) -> None:
        if self.mcpu not in CORES:
            raise LoweringError(f"unknown aarch64 core '{self.mcpu}'; known: {', '.join(CORES)}")
        unknown = [feature for feature in self.mattr if feature not in FEATURES]
        if unknown:
            raise LoweringError(f"unknown aarch64 features {unknown}; known: {', '.join(FEATURES)}")

    def gcc_flags(self) -> str:
        """``-mcpu=cortex-a76+dotprod``-style flags for aarch64-linux-gnu-gcc."""
        features = "".join(FEATURES[feature] for feature in self.mattr)
        if self.mcpu == "generic":
            return f"-march=armv8-a{features}"
        return f"-mcpu={self.mcpu}{features}"

    def qemu_cpu(self) -> str:
        """The ``qemu-aarch64 -cpu`` model: the core itself where QEMU has it, else ``max``."""
        needs_more = any(feature in self.mattr for feature in ("+dotprod", "+i8mm", "+sve", "+fp16"))
        if self.mcpu in ("cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1") and not (
                needs_more and self.mcpu in ("cortex-a53", "cortex-a72")):
            return self.mcpu
        return "max"


def arm_makefile_rules(core: ArmCore, kernel_object: str | None = None) -> str:
    """``make arm``; with ``kernel_object`` (TVM's LLVM aarch64 kernels, ``aarch64_kernels``) it
    replaces ``kernels.c`` and ``tvm_hooks.c`` gives it the workspace allocator."""
    sources = f"model.c weights.c main.c tvm_hooks.c {kernel_object}" if kernel_object else "$(SOURCES)"
    kernels = f"LLVM aarch64 kernels ({kernel_object})" if kernel_object else "C kernels (kernels.c)"
    return "\n".join([
        f"# 'make arm' builds {RUNNER}: a static aarch64 Linux executable (no TVM runtime needed on the board),",
        f"# from {kernels}.",
        "ARM_CC ?= aarch64-linux-gnu-gcc",
        f"ARM_CFLAGS ?= -O2 -std=gnu11 {core.gcc_flags()}",
        f"ARM_SOURCES = {sources}",
        "",
        f"arm: {RUNNER}",
        f"{RUNNER}: $(ARM_SOURCES) model.h",
        "\t$(ARM_CC) $(ARM_CFLAGS) -static -Iinclude -o $@ $(ARM_SOURCES) -lm",
        "",
    ])


def add_arm_rules(directory: Path, core: ArmCore, kernel_object: str | None = None) -> None:
    makefile = Path(directory) / "Makefile"
    makefile.write_text(makefile.read_text() + "\n" + arm_makefile_rules(core, kernel_object))


def build_runner(directory: Path) -> Path:
    """Cross-compile ``model_arm`` in ``directory`` (aarch64-linux-gnu-gcc, static)."""
    require("aarch64-linux-gnu-gcc")
    make(Path(directory), "arm")
    return Path(directory) / RUNNER


def is_aarch64_host() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def runner_command(runner: Path, core: ArmCore | None = None, *, qemu: bool | None = None) -> list[str]:
    """How to start ``runner`` here: directly on an aarch64 machine, else under qemu-aarch64."""
    if qemu is None:
        qemu = not is_aarch64_host()
    if not qemu:
        return [str(Path(runner).resolve())]
    return [require("qemu-aarch64"), "-cpu", (core or ArmCore()).qemu_cpu(), str(Path(runner).resolve())]


def run_in(command: Sequence[str], work: Path, signature: Sequence[tuple[tuple[int, ...], str]],
           timeout: float = 600) -> RunResult:
    """Run the runner in ``work`` (which holds ``input<i>.bin``) and read its outputs."""
    try:
        result = subprocess.run(list(command), cwd=work, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LoweringError(f"{' '.join(command)} did not finish in {timeout:.0f} s") from None
    except OSError as error:
        raise LoweringError(f"cannot start {command[0]}: {error}") from error
    status, clock = _parse(result.stdout + result.stderr, result.returncode)
    if status != 0:
        raise LoweringError(f"model_run failed at step {-status - 1}")
    return RunResult(_read_outputs(work, signature), status, clock, result.stdout)


def run_runner(runner: Path, feeds: Sequence[np.ndarray], signature: Sequence[tuple[tuple[int, ...], str]],
               core: ArmCore | None = None, *, qemu: bool | None = None) -> RunResult:
    """Run ``model_arm`` once on ``feeds`` in a scratch directory."""
    command = runner_command(runner, core, qemu=qemu)
    with tempfile.TemporaryDirectory(prefix="optc-arm-") as scratch:
        _write_inputs(Path(scratch), feeds)
        return run_in(command, Path(scratch), signature)


def write_selftest(directory: Path, feeds: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> None:
    """``selftest/input<i>.bin`` and ``selftest/expected<i>.bin`` (the reference interpreter's outputs)."""
    selftest = Path(directory) / SELFTEST
    selftest.mkdir(parents=True, exist_ok=True)
    _write_inputs(selftest, feeds)
    for index, array in enumerate(expected):
        (selftest / f"expected{index}.bin").write_bytes(np.ascontiguousarray(array).tobytes())


def read_expected(selftest: Path, signature: Sequence[tuple[tuple[int, ...], str]]) -> list[np.ndarray]:
    return [np.frombuffer((Path(selftest) / f"expected{index}.bin").read_bytes(), dtype=dtype).reshape(shape)
            for index, (shape, dtype) in enumerate(signature)]


def selftest_error(outputs: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """Max absolute difference between a self-test run and the stored reference outputs."""
    return max((float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
                for got, want in zip(outputs, expected)), default=0.0)

