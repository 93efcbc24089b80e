"""The host CPU target: LLVM for this machine, the Relax VM, a shared library from export_library.

Pipeline: ``DecomposeOpsForInference`` (batch norm to scale and shift), then TVM's ``zero``
pipeline (legalize, fold constants, fuse ops, fuse TIR), then optc's default CPU schedules
(``optc.backends.schedules``: dense products and convolutions tiled, vectorized and parallel;
``schedules=False`` leaves every kernel naive), then ``tvm.compile`` with the ``default_build``
Relax pipeline, which lowers the fused module to VM code. Nothing is tuned, so it compiles in
seconds.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tvm
from tvm import relax
from tvm.target import codegen

from ...errors import ArtifactError, LoweringError
from ...ir.graph import Graph
from ..library import export_executable, last_line, load_library_file
from . import register_target

if TYPE_CHECKING:
    from ..runtime import CompiledModel

logger = logging.getLogger(__name__)

# x86-64 micro-architecture levels (psABI), as /proc/cpuinfo flag names, highest first.
# x86-64-v4 (AVX-512) is used where the CPU has it: optc's default schedules run 1.6-2x faster
# with it. (TVM_NOTES saw AVX-512 slow down *unscheduled* kernels; schedules=False is for debugging.)
X86_LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("x86-64-v4", frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx", "avx2", "fma"})),
    ("x86-64-v3", frozenset({"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "abm", "movbe", "xsave"})),
    ("x86-64-v2", frozenset({"cx16", "popcnt", "sse4_1", "sse4_2", "ssse3"})),
)


# Extensions beyond a psABI level that optc's kernels use, as (/proc/cpuinfo flag, LLVM feature,
# the level it needs). The int8 schedules tensorize on VNNI dot products (``vpdpbusd``), which no
# level includes; the rest are named so that the target description says what the CPU has.
X86_EXTENSIONS: tuple[tuple[str, str, str], ...] = (
    ("avx512_vnni", "+avx512vnni", "x86-64-v4"),
    ("avx512vbmi", "+avx512vbmi", "x86-64-v4"),
    ("avx512_bf16", "+avx512bf16", "x86-64-v4"),
    ("avx_vnni", "+avxvnni", "x86-64-v3"),
    ("amx_tile", "+amx-tile", "x86-64-v4"),
    ("amx_int8", "+amx-int8", "x86-64-v4"),
    ("amx_bf16", "+amx-bf16", "x86-64-v4"),
)


def _cpuinfo_flags() -> frozenset[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def detect_host_mcpu() -> str | None:
    """An LLVM ``mcpu`` for this host, or None to leave LLVM's generic default.

    On x86-64 it is the highest psABI level (up to v4: AVX-512) whose features the kernel
    reports, which is portable across the CPUs of that level.
    Elsewhere it is the CPU LLVM detects (e.g. ``neoverse-v1``), when LLVM knows its name.
    """
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        flags = _cpuinfo_flags()
        if flags is None:
            return None
        for level, needed in X86_LEVELS:
            if needed <= flags:
                return level
        return None
    cpu = codegen.llvm_get_system_cpu()
    if cpu and cpu != "generic" and codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
        return cpu
    return None


def detect_host_mattr(mcpu: str | None) -> tuple[str, ...]:
    """The LLVM features (``+avx512vnni``, ...) this x86-64 host has on top of the level ``mcpu``.

    Only for the psABI levels: a feature is added when the kernel reports it and ``mcpu`` is at
    least the level it builds on (no AVX-512 VNNI in an ``x86-64-v3`` build). Other CPUs: none.
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or mcpu is None:
        return ()
    levels = [level for level, _ in X86_LEVELS]
    if mcpu not in levels:
        return ()
    flags = _cpuinfo_flags() or frozenset()
    return tuple(feature for flag, feature, needs in X86_EXTENSIONS
                 if flag in flags and levels.index(mcpu) <= levels.index(needs))


def check_host_runs(described: Mapping[str, Any]) -> None:
    """Refuse a library built for x86 features this CPU lacks (it would die of an illegal
    instruction): ``described`` is an artifact's target description (``mcpu``, ``mattr``)."""
    flags = _cpuinfo_flags() if platform.machine().lower() in ("x86_64", "amd64") else None
    if flags is None:
        return
    needed = dict(X86_LEVELS).get(str(described.get("mcpu")), frozenset())
    by_feature = {feature: flag for flag, feature, _ in X86_EXTENSIONS}
    needed |= {by_feature[feature] for feature in described.get("mattr") or () if feature in by_feature}
    missing = sorted(needed - flags)
    if missing:
        raise ArtifactError(
            f"this artifact was built for a CPU with {', '.join(missing)} (mcpu {described.get('mcpu')}, mattr "
            f"{list(described.get('mattr') or [])}), which this CPU lacks; recompile it here, or build it for both "
            f"with get_target('cpu', mcpu='{detect_host_mcpu() or 'x86-64'}', mattr=())"
        )


def host_core_count() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings count once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:  # no sysfs topology (containers may hide it): every CPU a core
            return len(cpus)
    return max(1, len(cores))


# How often an idle worker of TVM's thread pool yields (one sched_yield, ~0.5 us here) before it
# sleeps. TVM's default, 300000, kept a core busy for ~150 ms after every parallel kernel (CPU
# time burnt after one call, this VM): a model run on a shared machine took the other core away
# from everything else for that long. 0 puts the worker to sleep at once, and each parallel
# kernel then wakes it through the OS: ~19 us per launch instead of ~3.5 us. This spins ~0.2 ms,
# longer than the gaps between the kernels of one inference, then sleeps.
SPIN_COUNT = 400


def use_every_core() -> None:
    """Let TVM's thread pool use every core, unless the user chose (``TVM_NUM_THREADS`` / ``OMP_NUM_THREADS``),
    and bound its spin-waiting (``SPIN_COUNT``) unless ``TVM_THREAD_POOL_SPIN_COUNT`` is set.

    TVM 0.27's default on x86 is half the logical CPUs ("ignore hyper-threading"): on a machine
    without SMT (this 2-core VM, most cloud vCPU slices) that is half the cores, and every optc
    kernel, and every MetaSchedule measurement, ran on one of two cores. The pool reads the
    variables when it starts (the first parallel kernel), so this runs before any model is loaded;
    MetaSchedule's runner processes inherit them.
    """
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(host_core_count())
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(SPIN_COUNT))


@register_target("cpu")
@dataclass(frozen=True)
class CpuTarget:
    """LLVM code for the host CPU, run by the Relax VM from a shared library (``model.so``).

    ``mcpu`` and ``num_cores`` default to what this machine has (see ``detect_host_mcpu``);
    ``mattr`` (LLVM features such as ``("+avx512vnni",)``) defaults to the extensions this host
    has beyond the level ``mcpu`` (``detect_host_mattr``); ``mattr=()`` builds for the bare level.
    ``schedules`` applies optc's default schedules to the fused kernels (``schedule_passes``);
    ``get_target("cpu", schedules=False)`` builds the naive kernels TVM gives without them.
    ``fast_math`` (with schedules) replaces float32 erf/tanh by vectorizable approximations
    (abs error < 1e-6; GELU epilogues were dominated by scalar libm calls).
    ``tuning_db`` (a MetaSchedule JSON database directory from ``optc tune``) replaces the kernels
    it has tuned schedules for before the default schedules run; ``export`` copies its files into
    the artifact (``tuning/``).
    """

    mcpu: str | None = field(default_factory=detect_host_mcpu)
    mattr: tuple[str, ...] | None = None  # None: detect_host_mattr(mcpu)
    num_cores: int = field(default_factory=host_core_count)
    library_name: str = "model.so"
    schedules: bool = True
    fast_math: bool = True
    tuning_db: str | None = None
    name: str = field(default="cpu", init=False)

    def tvm_target(self) -> tvm.target.Target:
        config: dict[str, object] = {"kind": "llvm", "num-cores": self.num_cores}
        if self.mcpu:
            # TVM accepts any name here and LLVM would only warn at build time, so check now
            triple = codegen.llvm_get_system_triple()
            if not codegen.llvm_is_valid_cpu(self.mcpu, triple):
                raise LoweringError(
                    f"LLVM does not know the CPU '{self.mcpu}' for {triple}; use a name such as "
                    f"'{detect_host_mcpu() or 'generic'}' (mcpu='native' is not accepted by TVM)"
                )
            config["mcpu"] = self.mcpu
        if self.features:
            config["mattr"] = list(self.features)
        try:
            return tvm.target.Target(config)
        except Exception as error:  # TVM rejects unknown CPUs with a TVMError/ValueError
            raise LoweringError(f"TVM rejects the CPU target {config}: {error}") from error

    @property
    def features(self) -> tuple[str, ...]:
        """The LLVM ``mattr`` the build uses: ``mattr`` as given, else what the host adds to ``mcpu``."""
        if self.mattr is None:
            return detect_host_mattr(self.mcpu)
        if isinstance(self.mattr, str):  # "+avx512vnni,+avxvnni", as the arm target takes it
            return tuple(part.strip() for part in self.mattr.split(",") if part.strip())
        return tuple(self.mattr)

    def relax_passes(self) -> list[tvm.transform.Pass]:
        return [*self.fusion_passes(), *self.tuning_passes(), *self.schedule_passes()]

    @staticmethod
    def fusion_passes() -> list[tvm.transform.Pass]:
        """Relax to fused PrimFuncs (TVM's ``zero`` pipeline), before any scheduling; ``optc tune``
        extracts its tasks after the same passes. ``WinogradRewrite`` turns the 3x3 stride-1 convs
        Winograd is faster on into its own kernels first (AVX-512 targets only)."""
        from ..schedules.winograd import WinogradRewrite  # noqa: PLC0415

        return [relax.transform.DecomposeOpsForInference(), WinogradRewrite(), relax.get_pipeline("zero")]

    def tuning_passes(self) -> list[tvm.transform.Pass]:
        """The tuned kernels of ``tuning_db`` (empty without one); they win over the default schedules."""
        if not self.tuning_db:
            return []
        from ..tuning import ApplyTuningDatabase  # noqa: PLC0415  (MetaSchedule only when used)

        return [ApplyTuningDatabase(self.tuning_db)]

    def schedule_passes(self) -> list[tvm.transform.Pass]:
        """The scheduling stage between ``zero`` and ``tvm.compile`` (empty with ``schedules=False``)."""
        if not self.schedules:
            return []
        from ..schedules import schedule_passes  # noqa: PLC0415  (imports the rules only when used)

        return schedule_passes(fast_math=self.fast_math)

    def build(self, module: tvm.IRModule) -> relax.VMExecutable:
        target = self.tvm_target()
        logger.debug("building %d Relax function(s) for %s", len(module.functions), target)
        try:
            with target:
                module = tvm.transform.Sequential(self.relax_passes())(module)
            return tvm.compile(module, target, relax_pipeline="default_build")
        except Exception as error:
            raise LoweringError(f"TVM failed to compile for {target}: {last_line(error)}") from error

    def export(self, executable: relax.VMExecutable, directory: Path) -> list[Path]:
        files = export_executable(executable, directory, self.library_name)
        if self.tuning_db:
            from ..tuning import copy_database  # noqa: PLC0415

            files += copy_database(self.tuning_db, Path(directory) / "tuning")
        return files

    def library_files(self, directory: Path) -> list[Path]:
        return [Path(directory) / self.library_name]

    def load_library(self, directory: Path) -> tvm.runtime.Module:
        return load_library_file(directory, self.library_name)

    def load(self, directory: Path, graph: Graph, manifest: Mapping[str, Any] | None = None) -> CompiledModel:
        from ..runtime import load_compiled  # the runtime imports the target registry

        check_host_runs((manifest or {}).get("target", {}))
        return load_compiled(directory, graph, self)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tvm_target": str(self.tvm_target()),
            "mcpu": self.mcpu,
            "mattr": list(self.features),
            "num_cores": self.num_cores,
            "schedules": self.schedules,
            "fast_math": self.fast_math,
            "library": self.library_name,
            **({"tuning_db": str(self.tuning_db), "tuning_files": "tuning/"} if self.tuning_db else {}),
        }

    def device(self) -> tvm.runtime.Device:
        return tvm.cpu(0)
