"""Building and running an AOT bundle: on the host (gcc), for a Cortex-M (arm-none-eabi-gcc),
under QEMU (qemu-system-arm with semihosting), and its flash size (arm-none-eabi-size)."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import LoweringError
from .cortex_m import Core

logger = logging.getLogger(__name__)

TOOLS = {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi", "qemu-system-arm": "qemu-system-arm",
         "make": "make", "cc": "gcc"}


class ToolMissingError(LoweringError):
    """A compiler or emulator the build needs is not installed."""


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolMissingError(f"{tool} is not installed; install it with apt-get install {TOOLS.get(tool, tool)}")
    return path


def make(directory: Path, goal: str, timeout: float = 600) -> str:
    require("make")
    result = subprocess.run(["make", "-s", goal], cwd=directory, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise LoweringError(f"'make {goal}' failed in {directory}: {(result.stderr or result.stdout)[-1500:]}")
    return result.stdout


@dataclass(frozen=True)
class RunResult:
    outputs: list[np.ndarray]
    status: int
    clock: int
    log: str


def _write_inputs(directory: Path, feeds: Sequence[np.ndarray]) -> None:
    for index, array in enumerate(feeds):
        (directory / f"input{index}.bin").write_bytes(np.ascontiguousarray(array).tobytes())


def _read_outputs(directory: Path, signature: Sequence[tuple[tuple[int, ...], str]]) -> list[np.ndarray]:
    outputs = []
    for index, (shape, dtype) in enumerate(signature):
        data = (directory / f"output{index}.bin").read_bytes()
        outputs.append(np.frombuffer(data, dtype=dtype).reshape(shape).copy())
    return outputs


def _parse(log: str, returncode: int) -> tuple[int, int]:
    match = re.search(r"optc: model_run returned (-?\d+), clock (\d+)", log)
    if match is None:
        raise LoweringError(f"the model did not run to the end (exit code {returncode}): {log[-800:]}")
    return int(match.group(1)), int(match.group(2))


def run_host(directory: Path, feeds: Sequence[np.ndarray], signature: Sequence[tuple[tuple[int, ...], str]]) -> RunResult:
    """Build ``model_host`` once with the host compiler and run it on ``feeds``."""
    directory = Path(directory)
    if not (directory / "model_host").exists():
        require("cc")
        make(directory, "host")
    with tempfile.TemporaryDirectory(prefix="optc-run-") as scratch:
        work = Path(scratch)
        _write_inputs(work, feeds)
        result = subprocess.run([str(directory / "model_host")], cwd=work, capture_output=True, text=True, timeout=600)
        status, clock = _parse(result.stdout, result.returncode)
        if status != 0:
            raise LoweringError(f"model_run failed at step {-status - 1} (its workspace did not fit?)")
        return RunResult(_read_outputs(work, signature), status, clock, result.stdout)


def build_mcu(directory: Path) -> Path:
    require("arm-none-eabi-gcc")
    make(Path(directory), "mcu")
    return Path(directory) / "model.elf"


def elf_sizes(elf: Path) -> dict[str, int]:
    """Section sizes from ``arm-none-eabi-size -A``: flash (text, rodata, exidx, data init) and RAM."""
    result = subprocess.run([require("arm-none-eabi-size"), "-A", str(elf)], capture_output=True, text=True, check=True)
    sections = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    flash = sum(sections.get(name, 0) for name in (".text", ".rodata", ".ARM.exidx", ".data"))
    ram = sections.get(".data", 0) + sections.get(".bss", 0)
    return {"flash_bytes": flash, "static_ram_bytes": ram, **{f"section{k}": v for k, v in sections.items()}}


LIBRARY_STACK_MARGIN = 512  # bytes for libm and the workspace stub below the deepest kernel


def stack_estimate(directory: Path) -> int | None:
    """Bytes of stack ``model_run`` needs, from gcc's ``-fstack-usage`` files of the last build.

    The call chain is main -> model_run_buffers -> model_run -> run_steps -> one kernel at a
    time (kernels call only libm and the workspace stub), so the estimate is the sum of those
    frames, the deepest kernel frame and a margin. None when the build wrote no .su files.
    """
    frames: dict[str, int] = {}
    for path in Path(directory).glob("*.su"):
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].strip().isdigit():
                frames[parts[0].rsplit(":", 1)[-1]] = max(frames.get(parts[0].rsplit(":", 1)[-1], 0), int(parts[1]))
    if not frames:
        return None
    chain = sum(frames.get(name, 0) for name in ("main", "model_run_buffers", "model_run", "run_steps"))
    kernels = max((size for name, size in frames.items() if name.startswith("__tvm_ffi_")), default=0)
    return chain + kernels + LIBRARY_STACK_MARGIN


def run_qemu(directory: Path, core: Core, feeds: Sequence[np.ndarray],
             signature: Sequence[tuple[tuple[int, ...], str]], timeout: float = 600) -> RunResult:
    """Run ``model.elf`` on the core's QEMU board with semihosting; outputs come back as files."""
    elf = Path(directory) / "model.elf"
    if not elf.exists():
        build_mcu(directory)
    qemu = require("qemu-system-arm")
    with tempfile.TemporaryDirectory(prefix="optc-qemu-") as scratch:
        work = Path(scratch)
        _write_inputs(work, feeds)
        command = [qemu, "-M", core.board, "-nographic", "-monitor", "none", "-serial", "none", "-icount", "shift=0",
                   "-semihosting-config", "enable=on,target=native", "-kernel", str(elf.resolve())]
        try:
            result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LoweringError(f"QEMU ({core.board}) did not finish in {timeout:.0f} s") from None
        status, clock = _parse(result.stdout + result.stderr, result.returncode)
        if status != 0:
            raise LoweringError(f"model_run failed on {core.board} at step {-status - 1}")
        return RunResult(_read_outputs(work, signature), status, clock, result.stdout)


def as_feeds(names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(feeds[name]) for name in names]
