"""The CUDA GPU target: TVM's GPU pipeline with dlight default schedules, kernels compiled by nvcc.

Pipeline: ``DecomposeOpsForInference``, TVM's ``zero`` pipeline (legalize, fold constants, fuse
ops, fuse TIR), then dlight's default GPU schedules (``Matmul``, ``GEMV``, ``Reduction``,
``GeneralReduction``, and ``Fallback`` for everything else, which binds each kernel to blocks and
threads), then ``tvm.compile`` with ``default_build``. nvcc turns the CUDA source into a fatbin
for ``arch`` that is embedded in ``model.so``; the weights stay out of it (``main`` takes them as
parameters, as for the cpu target).

It builds on a machine without a GPU. TVM only packages device code when its CUDA runtime
(``libtvm_runtime_cuda.so``) is loaded, and that library needs the driver's ``libcuda.so.1``.
Where there is no driver, ``ensure_cuda_runtime`` builds a stand-in ``libcuda.so.1`` (every call
fails with CUDA_ERROR_NO_DEVICE) into a cache directory with gcc, loads it, then loads TVM's CUDA
runtime. Running needs a real GPU: ``CudaCompiledModel.run`` raises ``NoCudaDeviceError`` without one.

    optc compile --example resnet18 --target cuda --arch sm_90 -o out/r18
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
from tvm import relax

from ...errors import LoweringError, OptcError
from ...ir.graph import Graph
from ..library import copy_library_files, export_executable, last_line, load_library_file
from . import register_target

if TYPE_CHECKING:
    from ..runtime import CompiledModel

logger = logging.getLogger(__name__)

ARCHES = ("sm_80", "sm_86", "sm_89", "sm_90")
FATBIN_MAGIC = (0xBA55ED50).to_bytes(4, "little")  # the header of an nvcc fatbin

# The driver symbols libtvm_runtime_cuda.so (TVM 0.27) links against; all fail in the stand-in.
_STUB_SOURCE = """\
/* optc: a stand-in libcuda.so.1 for building CUDA artifacts on a machine without a GPU driver.
   Every call fails with CUDA_ERROR_NO_DEVICE (100); it only lets TVM's CUDA runtime load. */
typedef int CUresult;
static const char no_device[] = "no CUDA driver here (optc's build-time stand-in libcuda)";
CUresult cuGetErrorName(CUresult error, const char **text) { (void)error; *text = "CUDA_ERROR_NO_DEVICE"; return 0; }
CUresult cuGetErrorString(CUresult error, const char **text) { (void)error; *text = no_device; return 0; }
CUresult cuDeviceGetName(void) { return 100; }
CUresult cuFuncSetAttribute(void) { return 100; }
CUresult cuLaunchKernelEx(void) { return 100; }
CUresult cuModuleGetFunction(void) { return 100; }
CUresult cuModuleLoadData(void) { return 100; }
CUresult cuModuleUnload(void) { return 100; }
CUresult cuTensorMapEncodeTiled(void) { return 100; }
"""


class NoCudaDeviceError(OptcError):
    """A CUDA artifact was asked to run where there is no CUDA GPU."""


def cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "optc" / "cuda"


def _build_stub_driver() -> Path:
    """Build (once per source version) the stand-in ``libcuda.so.1``; returns its path."""
    digest = hashlib.sha256(_STUB_SOURCE.encode()).hexdigest()[:12]
    path = cache_directory() / f"stub-{digest}" / "libcuda.so.1"
    if path.is_file():
        return path
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise LoweringError(
            "building CUDA artifacts without a GPU driver needs gcc (for a stand-in libcuda); install gcc"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        source, library = Path(scratch) / "stub.c", Path(scratch) / "libcuda.so.1"
        source.write_text(_STUB_SOURCE)
        result = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(library), str(source)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise LoweringError(f"gcc failed to build the stand-in libcuda: {result.stderr.strip()[-300:]}")
        os.replace(library, path)  # atomic: concurrent builders agree on the result
    return path


def ensure_cuda_runtime() -> None:
    """Make sure TVM's CUDA runtime is loaded, with the real driver or the stand-in one.

    Uses ``tvm.base._LOADED_LIBS`` and ``tvm_ffi.libinfo.load_lib_ctypes``, which TVM's own
    ``tvm.backend.cuda.register_backend`` uses at import time (TVM 0.27).
    """
    from tvm.base import _LOADED_LIBS  # noqa: PLC0415
    from tvm_ffi.libinfo import load_lib_ctypes  # noqa: PLC0415

    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        logger.debug("using the CUDA driver's libcuda.so.1")
    except OSError:
        stub = _build_stub_driver()
        logger.info("no CUDA driver: loading the stand-in %s to build CUDA artifacts", stub)
        ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)  # its soname satisfies libtvm_runtime_cuda's NEEDED
    runtime_directory = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_directory], mode="RTLD_LOCAL"
        )
    except (OSError, FileNotFoundError, RuntimeError) as error:
        raise LoweringError(
            f"TVM's CUDA runtime (libtvm_runtime_cuda.so) does not load: {error}; it needs the CUDA "
            "toolkit's libcudart.so.13 on the library path (install the CUDA 13 toolkit)"
        ) from error


def gpu_present() -> bool:
    """Whether this process can see a CUDA GPU."""
    with contextlib.suppress(OptcError):
        ensure_cuda_runtime()
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - any driver failure means no usable GPU
        return False


@contextlib.contextmanager
def _nvcc_mode() -> Iterator[None]:
    """TVM compiles CUDA with NVRTC unless told otherwise; optc uses nvcc (fatbin, no cuda-python)."""
    previous = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)
        else:
            os.environ["TVM_CUDA_COMPILE_MODE"] = previous


def cuda_modules(library: tvm.runtime.Module) -> list[tvm.runtime.Module]:
    """The device-code modules (kind ``cuda``) imported anywhere under ``library``."""
    found, stack = [], [library]
    while stack:
        module = stack.pop()
        if module.kind == "cuda":
            found.append(module)
        stack.extend(module.imports)
    return found


def fatbin_arches(library: Path) -> list[tuple[str, int]]:
    """(``"cubin"`` or ``"ptx"``, compute capability such as 90) of each entry of each fatbin in ``library``.

    Reads nvcc's fatbin container: a 16-byte header (magic, version, header size, payload size)
    and entries whose 64-byte headers hold the kind (1 PTX, 2 ELF cubin) and, at byte 28, the arch.
    """
    data = Path(library).read_bytes()
    found: list[tuple[str, int]] = []
    start = data.find(FATBIN_MAGIC)
    while start >= 0 and start + 16 <= len(data):
        _, _, header_size, payload_size = struct.unpack_from("<IHHQ", data, start)
        offset, end = start + header_size, min(start + header_size + payload_size, len(data))
        while offset + 32 <= end:
            kind, _, entry_header_size, entry_size = struct.unpack_from("<HHIQ", data, offset)
            if entry_header_size < 32:
                break
            (arch,) = struct.unpack_from("<I", data, offset + 28)
            found.append(({1: "ptx", 2: "cubin"}.get(kind, f"kind{kind}"), arch))
            offset += entry_header_size + entry_size
        start = data.find(FATBIN_MAGIC, max(end, start + 4))
    return found


@register_target("cuda")
@dataclass(frozen=True)
class CudaTarget:
    """An NVIDIA GPU of compute capability ``arch`` (sm_80 A100, sm_86 A10/RTX 30, sm_89 L4/RTX 40, sm_90 H100)."""

    arch: str = "sm_90"
    library_name: str = "model.so"
    name: str = field(default="cuda", init=False)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise LoweringError(f"unknown CUDA arch '{self.arch}'; use one of {', '.join(ARCHES)}")

    def tvm_target(self) -> tvm.target.Target:
        # the limits every arch here shares (without them TVM warns and assumes the same values)
        device = {"kind": "cuda", "arch": self.arch, "max_shared_memory_per_block": 49152,
                  "max_threads_per_block": 1024, "thread_warp_size": 32}
        return tvm.target.Target(device, host={"kind": "llvm"})

    def relax_passes(self) -> list[tvm.transform.Pass]:
        from tvm.s_tir import dlight  # noqa: PLC0415

        gpu = dlight.gpu
        schedules = dlight.ApplyDefaultSchedule(
            gpu.Matmul(), gpu.GEMV(), gpu.Reduction(), gpu.GeneralReduction(), gpu.Fallback()
        )
        return [relax.transform.DecomposeOpsForInference(), relax.get_pipeline("zero"), schedules]

    def build(self, module: tvm.IRModule) -> relax.VMExecutable:
        ensure_cuda_runtime()
        if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
            raise LoweringError("--target cuda compiles kernels with nvcc; install the CUDA toolkit or set CUDA_HOME")
        target = self.tvm_target()
        logger.debug("building %d Relax function(s) for %s", len(module.functions), target)
        try:
            with target, _nvcc_mode():
                module = tvm.transform.Sequential(self.relax_passes())(module)
                executable = tvm.compile(module, target, relax_pipeline="default_build")
        except Exception as error:
            raise LoweringError(f"TVM failed to compile for {target}: {last_line(error)}") from error
        if not cuda_modules(executable.mod):
            raise LoweringError(f"TVM produced no CUDA device module for {self.arch}; is the CUDA runtime loaded?")
        return executable

    def compile_graph(self, graph: Graph) -> CudaCompiledModel:
        """Lower and build ``graph``; the result runs only where a CUDA GPU is present."""
        from ..lower import lower_graph  # noqa: PLC0415

        started = time.perf_counter()
        executable = self.build(lower_graph(graph))
        seconds = time.perf_counter() - started
        logger.info("compiled graph %s for cuda %s in %.2f s", graph.name, self.arch, seconds)
        return CudaCompiledModel(graph, self, executable, build_seconds=seconds)

    def export(self, executable: relax.VMExecutable, directory: Path) -> list[Path]:
        return export_executable(executable, directory, self.library_name)

    def library_files(self, directory: Path) -> list[Path]:
        return [Path(directory) / self.library_name]

    def load_library(self, directory: Path) -> tvm.runtime.Module:
        ensure_cuda_runtime()  # registers the loader of the embedded fatbin
        return load_library_file(directory, self.library_name)

    def load(self, directory: Path, graph: Graph, manifest: Mapping[str, Any] | None = None) -> CudaCompiledModel:
        described = (manifest or {}).get("target", {})
        target = CudaTarget(arch=described.get("arch", self.arch),
                            library_name=described.get("library", self.library_name))
        return CudaCompiledModel(graph, target, target.load_library(directory), source_directory=Path(directory))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tvm_target": str(self.tvm_target()),
            "arch": self.arch,
            "schedules": "dlight gpu: Matmul, GEMV, Reduction, GeneralReduction, Fallback",
            "compiler": "nvcc (fatbin)",
            "library": self.library_name,
        }

    def device(self) -> tvm.runtime.Device:
        return tvm.cuda(0)


class CudaCompiledModel:
    """A CUDA library with the graph's signature; it runs through a ``CompiledModel`` on a GPU.

    Building, exporting and loading work anywhere; ``run`` and friends raise ``NoCudaDeviceError``
    on a machine without a CUDA GPU.
    """

    def __init__(self, graph: Graph, target: CudaTarget, library: tvm.runtime.Module | relax.VMExecutable, *,
                 source_directory: Path | None = None, build_seconds: float | None = None) -> None:
        self.graph = graph.clone()
        self.target = target
        self.build_seconds = build_seconds
        self._library = library
        self._source_directory = source_directory
        self._model: CompiledModel | None = None

    @property
    def input_names(self) -> list[str]:
        return [value.name for value in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [value.name for value in self.graph.outputs]

    @property
    def library(self) -> tvm.runtime.Module:
        """The host module with the CUDA device module among its imports."""
        return self._library.mod if isinstance(self._library, relax.VMExecutable) else self._library

    @property
    def runnable(self) -> bool:
        """Whether ``run`` can work here (a CUDA GPU is present)."""
        return gpu_present()

    def device_modules(self) -> list[tvm.runtime.Module]:
        return cuda_modules(self.library)

    def on_gpu(self) -> CompiledModel:
        """The runnable ``CompiledModel`` (made on first use); ``NoCudaDeviceError`` without a GPU."""
        if self._model is None:
            if not gpu_present():
                raise NoCudaDeviceError(
                    f"no CUDA GPU here; the artifact was built for {self.target.arch}, run it on a machine with one"
                )
            from ..runtime import CompiledModel  # noqa: PLC0415  (the runtime imports the target registry)

            self._model = CompiledModel(self.graph, self.target, self._library, source_directory=self._source_directory,
                                        build_seconds=self.build_seconds)
        return self._model

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.on_gpu().run(feeds)

    def run_device(self, feeds: Mapping[str, Any]) -> dict[str, tvm.runtime.Tensor]:
        return self.on_gpu().run_device(feeds)

    def runner(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A zero-argument callable running the model once; it waits for the GPU so timings are real."""
        run_once = self.on_gpu().runner(feeds)
        device = self.target.device()

        def run_and_sync() -> Any:
            result = run_once()
            device.sync()
            return result

        return run_and_sync

    def export(self, directory: str | Path) -> list[Path]:
        """Write ``model.so`` (host code with the embedded fatbin) into ``directory``."""
        directory = Path(directory)
        if isinstance(self._library, relax.VMExecutable):
            return self.target.export(self._library, directory)
        assert self._source_directory is not None  # loaded from disk: copy the files
        return copy_library_files(self.target.library_files(self._source_directory), directory)

    def __repr__(self) -> str:
        signature = f"{self.input_names} -> {self.output_names}"
        return f"<CudaCompiledModel {self.graph.name} for {self.target.arch}: {signature}>"
