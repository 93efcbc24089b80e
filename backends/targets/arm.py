"""The aarch64 Linux target: a standalone, statically linked bundle for ARM boards.

``compile_graph`` writes optc's AOT C bundle (the microcontroller target's generator and
planner), builds the kernels with TVM's LLVM backend for aarch64 (``kernels="llvm"``, default;
``kernels="c"`` compiles TVM's C kernels with gcc instead), links everything with
``aarch64-linux-gnu-gcc -static`` into ``model_arm`` and stores seeded self-test inputs with the reference interpreter's outputs. The
artifact holds all of it in ``arm/``; ``run`` executes ``model_arm`` under ``qemu-aarch64`` on
this machine (directly on an aarch64 one). Nothing of TVM is needed on the board.

With ``library`` (default) the artifact also holds the second form, ``arm/lib/model.so``: TVM's
LLVM aarch64 code for the Relax VM, for boards with apache-tvm's aarch64 runtime
(``backends/aot/aarch64_library``), with ``lib/loader.cc``, the C++ loader that runs it. Here
``run(feeds, form="so")`` runs it under qemu-aarch64 with TVM's aarch64 runtime, fetched once by
``python -m optc.tools.fetch_arm_runtime`` (``backends/aot/arm_so``).

    optc compile model.onnx --target arm --mcpu cortex-a72 --mattr +neon -o out/a
    optc run out/a                              # under qemu-aarch64
    optc run out/a --form so                    # lib/model.so with TVM's aarch64 runtime
    optc deploy out/a --to /mnt/board/model --qemu
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from ...errors import ArtifactError, LoweringError
from ...ir.graph import Graph
from ...ir.interpret import check_inputs, interpret, sample_inputs
from ..aot import aarch64
from ..aot.aarch64_kernels import KERNEL_OBJECT, write_kernel_object
from ..aot.aarch64_library import build_library
from ..aot.arm_so import run_library, write_loader_source
from ..aot.build import ToolMissingError
from ..aot.bundle import write_aot_bundle
from ..lower import function_params
from . import register_target

BUNDLE_DIRECTORY = "arm"
TRIPLE = "aarch64-linux-gnu"
LIBRARY = "lib/model.so"
FORMS = ("bundle", "so")


def _features(mattr: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if mattr is None:
        return ("+neon",)
    if isinstance(mattr, str):
        return tuple(part.strip() for part in mattr.split(",") if part.strip())
    return tuple(mattr)


@register_target("arm")
@dataclass(frozen=True)
class ArmTarget:
    """An aarch64 Linux core (``mcpu``: cortex-a53, cortex-a72, cortex-a76, neoverse-n1, generic)
    with features ``mattr`` ("+neon", "+dotprod", ...; a comma-separated string is accepted);
    ``kernels``: "llvm" (TVM's LLVM aarch64 object) or "c" (TVM's C, compiled by gcc);
    ``library`` adds the TVM-runtime shared library form beside the standalone bundle."""

    mcpu: str = "cortex-a53"
    mattr: Any = ("+neon",)
    kernels: str = "llvm"
    library: bool = True
    name: str = field(default="arm", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mattr", _features(self.mattr))
        aarch64.ArmCore(self.mcpu, self.mattr)  # unknown cores and features fail here, with the known ones
        if self.kernels not in ("llvm", "c"):
            raise LoweringError(f"kernels='{self.kernels}' is not known; use 'llvm' (TVM's LLVM aarch64 object) or 'c'")

    @property
    def core(self) -> aarch64.ArmCore:
        return aarch64.ArmCore(self.mcpu, self.mattr)

    def tvm_target(self) -> tvm.target.Target:
        """TVM's LLVM target for this core (the TVM-runtime ``.so`` form; the bundle uses C kernels)."""
        target: dict[str, Any] = {"kind": "llvm", "mtriple": TRIPLE, "mattr": list(self.mattr)}
        if self.mcpu != "generic":
            target["mcpu"] = self.mcpu
        return tvm.target.Target(target)

    def compile_graph(self, graph: Graph) -> ArmCompiledModel:
        staging = Path(tempfile.mkdtemp(prefix="optc-arm-"))
        try:
            info = write_aot_bundle(graph, staging)
            if self.kernels == "llvm":
                write_kernel_object(graph, self.tvm_target(), staging / KERNEL_OBJECT)
            aarch64.add_arm_rules(staging, self.core, KERNEL_OBJECT if self.kernels == "llvm" else None)
            aarch64.build_runner(staging)
            feeds = sample_inputs(graph, seed=0)
            ordered = [np.ascontiguousarray(feeds[value.name], dtype=value.dtype) for value in graph.inputs]
            reference = interpret(graph, feeds)
            aarch64.write_selftest(staging, ordered, [reference[value.name] for value in graph.outputs])
            if self.library:
                build_library(graph, self.tvm_target(), staging / LIBRARY)
                write_loader_source((staging / LIBRARY).parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ArmCompiledModel(graph, self, staging, info.memory, owns_bundle=True)

    def load(self, directory: Path, graph: Graph, manifest: Mapping[str, Any] | None = None) -> ArmCompiledModel:
        bundle = Path(directory) / BUNDLE_DIRECTORY
        if not (bundle / aarch64.RUNNER).is_file():
            raise ArtifactError(f"{directory} has no {BUNDLE_DIRECTORY}/{aarch64.RUNNER}; recompile with --target arm")
        described = (manifest or {}).get("target", {})
        target = ArmTarget(mcpu=described.get("mcpu", self.mcpu), mattr=tuple(described.get("mattr", self.mattr)),
                           kernels=described.get("kernels_from", "c"), library=bool(described.get("library")))
        return ArmCompiledModel(graph, target, bundle, (manifest or {}).get("memory") or {})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mcpu": self.mcpu, "mattr": list(self.mattr), "triple": TRIPLE,
                "kernels_from": self.kernels, "cflags": self.core.gcc_flags(),
                "bundle": BUNDLE_DIRECTORY, "runner": f"{BUNDLE_DIRECTORY}/{aarch64.RUNNER}",
                "library": f"{BUNDLE_DIRECTORY}/{LIBRARY}" if self.library else None,
                "tvm_target": str(self.tvm_target()) if self.library else None}

    def library_files(self, directory: Path) -> list[Path]:
        return sorted(path for path in (Path(directory) / BUNDLE_DIRECTORY).rglob("*") if path.is_file())


class ArmCompiledModel:
    """A standalone aarch64 bundle; ``run`` executes ``model_arm`` (under qemu-aarch64 off ARM)."""

    def __init__(self, graph: Graph, target: ArmTarget, bundle: Path, memory: dict[str, Any], *,
                 owns_bundle: bool = False) -> None:
        self.graph = graph.clone()
        self.target = target
        self.bundle = Path(bundle)
        self.memory = memory
        if owns_bundle:  # a staging directory of compile_graph: gone with this object
            weakref.finalize(self, shutil.rmtree, str(self.bundle), True)

    @property
    def runner(self) -> Path:
        return self.bundle / aarch64.RUNNER

    def signature(self) -> list[tuple[tuple[int, ...], str]]:
        return [(tuple(int(d) for d in value.shape), value.dtype) for value in self.graph.outputs]

    def run(self, feeds: Mapping[str, np.ndarray], form: str = "bundle") -> dict[str, np.ndarray]:
        """Run ``model_arm`` once (qemu-aarch64 on a non-ARM machine: install qemu-user, or copy
        ``arm/`` to the board with ``optc deploy`` and run ``./model_arm`` there); ``form="so"``
        runs ``lib/model.so`` with TVM's aarch64 runtime instead (``run_library``)."""
        if form not in FORMS:
            raise ArtifactError(f"form '{form}' is not known; the arm target's forms are {', '.join(FORMS)}")
        if form == "so":
            return self.run_library(feeds)
        checked = check_inputs(self.graph, feeds)
        ordered = [np.ascontiguousarray(checked[value.name], dtype=value.dtype) for value in self.graph.inputs]
        try:
            result = aarch64.run_runner(self.runner, ordered, self.signature(), self.target.core)
        except ToolMissingError as error:
            raise ToolMissingError(f"{error} to run this aarch64 model here, or run it on the board: "
                                   f"'optc deploy ARTIFACT --to user@host:DIR' (or copy {BUNDLE_DIRECTORY}/ there "
                                   f"and run ./{aarch64.RUNNER} in a directory holding input<i>.bin); "
                                   "'optc compile --no-check' skips the check that runs it") from error
        return {value.name: array for value, array in zip(self.graph.outputs, result.outputs)}

    def run_library(self, feeds: Mapping[str, np.ndarray], runtime: Path | None = None) -> dict[str, np.ndarray]:
        """Run ``lib/model.so`` once: ``main(inputs..., params...)`` under qemu-aarch64 (directly on
        aarch64) with TVM's aarch64 runtime from ``runtime`` (default: ``$OPTC_ARM_RUNTIME`` or
        ``~/.cache/optc/aarch64-runtime``, filled by ``python -m optc.tools.fetch_arm_runtime``)."""
        library = self.bundle / LIBRARY
        if not library.is_file():
            raise ArtifactError(f"{self.bundle} has no {LIBRARY}; recompile with --target arm (library=True)")
        checked = check_inputs(self.graph, feeds)
        arguments = [np.ascontiguousarray(checked[value.name], dtype=value.dtype) for value in self.graph.inputs]
        arguments += [np.ascontiguousarray(self.graph.params[value])
                      for value in function_params(self.graph)[len(self.graph.inputs):]]
        outputs = run_library(library, arguments, self.signature(), self.target.core, runtime=runtime)
        return {value.name: array for value, array in zip(self.graph.outputs, outputs)}

    def export(self, directory: str | Path) -> list[Path]:
        destination = Path(directory) / BUNDLE_DIRECTORY
        shutil.copytree(self.bundle, destination, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("model_host", "output*.bin"))
        return sorted(path for path in destination.rglob("*") if path.is_file())

    def __repr__(self) -> str:
        return f"<ArmCompiledModel {self.graph.name} for {self.target.mcpu}: {self.bundle}>"
