"""Running the arm target's TVM-runtime form (``arm/lib/model.so``) with TVM's aarch64 runtime.

The runtime is apache-tvm's aarch64 wheel (``libtvm_runtime.so``) and apache-tvm-ffi's
(``libtvm_ffi.so``), fetched once by ``python -m optc.tools.fetch_arm_runtime`` into
``$OPTC_ARM_RUNTIME`` or ``~/.cache/optc/aarch64-runtime``. ``model_so_loader``
(``arm_so_loader``) is cross-compiled against them with ``aarch64-linux-gnu-g++`` and cached
there; it calls ``main(inputs..., params...)`` and writes the outputs. Off ARM it runs under
``qemu-aarch64 -L /usr/aarch64-linux-gnu`` (the cross toolchain's glibc and libstdc++):

    outputs = run_library(bundle / "lib/model.so", arguments, signature, core)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import LoweringError
from .aarch64 import ArmCore, is_aarch64_host
from .arm_so_loader import LOADER_SOURCE
from .build import TOOLS, ToolMissingError, require

RUNTIME_ENV = "OPTC_ARM_RUNTIME"
RUNTIME_LIBRARIES = ("libtvm_ffi.so", "libtvm_runtime.so")
FETCH_COMMAND = "python -m optc.tools.fetch_arm_runtime"
LOADER_FILE = "loader.cc"
SYSROOT = Path("/usr/aarch64-linux-gnu")
CXX = "aarch64-linux-gnu-g++"

TOOLS.update({CXX: "g++-aarch64-linux-gnu"})


def runtime_directory() -> Path:
    """Where the aarch64 runtime libraries live: ``$OPTC_ARM_RUNTIME``, else the user cache."""
    configured = os.environ.get(RUNTIME_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "optc" / "aarch64-runtime"


def missing_libraries(directory: Path) -> list[str]:
    return [name for name in RUNTIME_LIBRARIES if not (Path(directory) / name).is_file()]


def require_runtime(directory: Path | None = None) -> Path:
    """The runtime directory, or a ToolMissingError that says how to fetch it."""
    directory = Path(directory) if directory is not None else runtime_directory()
    missing = missing_libraries(directory)
    if missing:
        raise ToolMissingError(f"TVM's aarch64 runtime is not in {directory} (missing {', '.join(missing)}); "
                               f"fetch it with '{FETCH_COMMAND}' (or set {RUNTIME_ENV} to a directory holding "
                               f"{' and '.join(RUNTIME_LIBRARIES)} from the aarch64 apache-tvm and "
                               "apache-tvm-ffi wheels)")
    return directory


def ffi_include() -> Path:
    """tvm-ffi's C++ headers, shipped in the host's ``tvm_ffi`` wheel (same version as the runtime)."""
    import tvm_ffi  # noqa: PLC0415

    return Path(tvm_ffi.__file__).parent / "include"


def write_loader_source(directory: Path) -> Path:
    """``loader.cc`` beside ``model.so``: the artifact carries what a board needs to rebuild the loader."""
    path = Path(directory) / LOADER_FILE
    path.write_text(LOADER_SOURCE)
    return path


def build_loader(runtime: Path) -> Path:
    """Cross-compile ``model_so_loader`` against ``runtime`` (cached there by source hash)."""
    digest = hashlib.sha256(LOADER_SOURCE.encode()).hexdigest()[:12]
    loader = Path(runtime) / f"model_so_loader-{digest}"
    if loader.is_file():
        return loader
    compiler = require(CXX)
    with tempfile.TemporaryDirectory(prefix="optc-arm-so-") as scratch:
        source = write_loader_source(Path(scratch))
        built = loader.with_name(f".{loader.name}.{os.getpid()}.tmp")  # renamed when complete
        command = [compiler, "-std=c++17", "-O2", f"-I{ffi_include()}", str(source), f"-L{runtime}",
                   "-Wl,--no-as-needed", "-ltvm_ffi", "-ltvm_runtime", "-o", str(built)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise LoweringError(f"building model_so_loader failed: {' '.join(command)}\n{result.stderr[-2000:]}")
        os.replace(built, loader)
    return loader


def loader_command(loader: Path, runtime: Path, core: ArmCore) -> list[str]:
    """Start ``loader`` with the runtime on its library path: directly on aarch64, else under qemu."""
    if is_aarch64_host():
        return ["env", f"LD_LIBRARY_PATH={runtime}", str(loader)]
    if not (SYSROOT / "lib" / "libstdc++.so.6").exists():
        raise ToolMissingError(f"{SYSROOT} has no aarch64 libstdc++; install it with apt-get install {TOOLS[CXX]}")
    return [require("qemu-aarch64"), "-cpu", core.qemu_cpu(), "-L", str(SYSROOT),
            "-E", f"LD_LIBRARY_PATH={runtime}", str(loader)]


def write_arguments(work: Path, arguments: Sequence[np.ndarray]) -> Path:
    """``arg<i>.bin`` (raw bytes) and ``spec.txt`` ("dtype ndim dims... file" per line, files relative
    to ``work``, the loader's working directory) for the loader."""
    lines = []
    for index, array in enumerate(arguments):
        array = np.ascontiguousarray(array)
        path = work / f"arg{index}.bin"
        path.write_bytes(array.tobytes())
        lines.append(" ".join([str(array.dtype), str(array.ndim), *map(str, array.shape), path.name]))
    spec = work / "spec.txt"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def run_library(library: Path, arguments: Sequence[np.ndarray], signature: Sequence[tuple[tuple[int, ...], str]],
                core: ArmCore, *, runtime: Path | None = None, timeout: float = 600) -> list[np.ndarray]:
    """Call ``library``'s ``main(*arguments)`` once and return its flattened outputs."""
    runtime = require_runtime(runtime)
    loader = build_loader(runtime)
    command = loader_command(loader, runtime, core)
    with tempfile.TemporaryDirectory(prefix="optc-arm-so-") as scratch:
        work = Path(scratch)
        full = [*command, str(Path(library).resolve()), write_arguments(work, arguments).name, "."]
        try:
            result = subprocess.run(full, cwd=work, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LoweringError(f"{' '.join(full)} did not finish in {timeout:.0f} s") from None
        if result.returncode != 0:
            log = (result.stderr or result.stdout)[-2000:]
            raise LoweringError(f"model_so_loader failed (exit {result.returncode}): {log}")
        outputs = []
        for index, (shape, dtype) in enumerate(signature):
            path = work / f"output{index}.bin"
            if not path.is_file():
                raise LoweringError(f"model_so_loader wrote no output{index}.bin: {result.stdout[-500:]}")
            outputs.append(np.frombuffer(path.read_bytes(), dtype=dtype).reshape(shape).copy())
        return outputs
