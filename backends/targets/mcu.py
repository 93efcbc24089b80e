"""The microcontroller target: C kernels from TVM, optc's AOT generator and planner, Cortex-M.

There is no Relax VM here: ``compile_graph`` writes a C bundle (``backends/aot``) and returns an
``McuCompiledModel``; ``run`` builds the same C for the host (gcc) so the compiled model can be
checked against the reference interpreter anywhere, and ``run_qemu`` runs the Cortex-M build
under QEMU. The artifact holds the bundle in ``mcu/`` (sources, Makefile, memory report).

    optc compile model.onnx --target mcu --mcpu cortex-m4 --sram 256 --flash 1024 -o out/m
    optc deploy out/m --qemu
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArtifactError
from ...ir.graph import Graph
from ...ir.interpret import check_inputs
from ..aot import build
from ..aot.bundle import write_fitting_bundle
from ..aot.cortex_m import CORES, core
from . import register_target

BUNDLE_DIRECTORY = "mcu"


@register_target("mcu")
@dataclass(frozen=True)
class McuTarget:
    """A Cortex-M core (``mcpu``: cortex-m4, cortex-m7, cortex-m55) with SRAM and flash budgets in KB."""

    mcpu: str = "cortex-m4"
    sram_kb: int | None = None
    flash_kb: int | None = None
    planner: str = "search"
    inplace: bool = True
    patches: str = "auto"  # "auto": patch-based first stage when layer by layer exceeds sram_kb; "off"
    name: str = field(default="mcu", init=False)

    def __post_init__(self) -> None:
        core(self.mcpu)  # unknown cores fail here, with the list of known ones

    def compile_graph(self, graph: Graph) -> McuCompiledModel:
        staging = Path(tempfile.mkdtemp(prefix="optc-mcu-"))
        try:
            info = write_fitting_bundle(
                graph, staging, core=core(self.mcpu), patches=self.patches,
                sram=self.sram_kb * 1024 if self.sram_kb is not None else None,
                flash=self.flash_kb * 1024 if self.flash_kb is not None else None,
                strategy=self.planner, inplace=self.inplace,
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return McuCompiledModel(graph, self, staging, info.memory, owns_bundle=True)

    def load(self, directory: Path, graph: Graph, manifest: Mapping[str, Any] | None = None) -> McuCompiledModel:
        bundle = Path(directory) / BUNDLE_DIRECTORY
        if not (bundle / "model.c").is_file():
            raise ArtifactError(f"{directory} has no {BUNDLE_DIRECTORY}/model.c; recompile with --target mcu")
        described = (manifest or {}).get("target", {})
        target = McuTarget(mcpu=described.get("mcpu", self.mcpu), sram_kb=described.get("sram_kb"),
                           flash_kb=described.get("flash_kb"), planner=described.get("planner", self.planner),
                           inplace=described.get("inplace", self.inplace), patches=described.get("patches", self.patches))
        memory = (manifest or {}).get("memory") or _bundle_memory(bundle)  # entry points: only in the bundle
        return McuCompiledModel(graph, target, bundle, memory)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mcpu": self.mcpu, "board": CORES[self.mcpu].board, "sram_kb": self.sram_kb,
                "flash_kb": self.flash_kb, "planner": self.planner, "inplace": self.inplace, "patches": self.patches,
                "kernels": "TVM c target", "bundle": BUNDLE_DIRECTORY}

    def library_files(self, directory: Path) -> list[Path]:
        return sorted(path for path in (Path(directory) / BUNDLE_DIRECTORY).rglob("*") if path.is_file())


def _bundle_memory(bundle: Path) -> dict[str, Any]:
    report = bundle / "memory.json"
    return json.loads(report.read_text()) if report.is_file() else {}


class McuCompiledModel:
    """A C bundle for a microcontroller; ``run`` executes its host build, ``run_qemu`` the Cortex-M one."""

    def __init__(self, graph: Graph, target: McuTarget, bundle: Path, memory: dict[str, Any], *,
                 owns_bundle: bool = False) -> None:
        self.graph = graph.clone()
        self.target = target
        self.bundle = Path(bundle)
        self.memory = memory
        self._host_directory: Path | None = None
        if owns_bundle:  # a staging directory of compile_graph: gone with this object
            weakref.finalize(self, shutil.rmtree, str(self.bundle), True)

    @property
    def core(self):
        return core(self.target.mcpu)

    def _feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        checked = check_inputs(self.graph, feeds)
        return [np.ascontiguousarray(checked[value.name], dtype=value.dtype) for value in self.graph.inputs]

    def _signature(self) -> list[tuple[tuple[int, ...], str]]:
        return [(tuple(int(d) for d in value.shape), value.dtype) for value in self.graph.outputs]

    def _outputs(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {value.name: array for value, array in zip(self.graph.outputs, arrays)}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the generated C once on this machine (built with the host compiler on first use)."""
        if self._host_directory is None:
            # build out of the artifact: an artifact's files are hashed and must stay unchanged
            self._host_directory = Path(tempfile.mkdtemp(prefix="optc-mcu-host-"))
            weakref.finalize(self, shutil.rmtree, str(self._host_directory), True)
            shutil.copytree(self.bundle, self._host_directory, dirs_exist_ok=True)
        result = build.run_host(self._host_directory, self._feeds(feeds), self._signature())
        return self._outputs(result.outputs)

    def run_qemu(self, feeds: Mapping[str, np.ndarray], *, work: Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Build for the core and run under QEMU; returns outputs and {instructions, flash_bytes, ...}.

        The build happens in a scratch directory, or in ``work`` (kept, with ``model.elf``) when given.
        """
        with tempfile.TemporaryDirectory(prefix="optc-mcu-elf-") as scratch:
            directory = Path(work) if work is not None else Path(scratch)
            shutil.copytree(self.bundle, directory, dirs_exist_ok=True)
            elf = build.build_mcu(directory)
            sizes = build.elf_sizes(elf)
            result = build.run_qemu(directory, self.core, self._feeds(feeds), self._signature())
            stats = {
                "board": self.core.board, "systick_ticks": result.clock,
                "instructions": int(round(result.clock * 1e9 / self.core.clock_hz)), **sizes,
                "stack_bytes": build.stack_estimate(directory),
            }
            if work is not None:
                stats["elf"] = str(elf)
        return self._outputs(result.outputs), stats

    def export(self, directory: str | Path) -> list[Path]:
        destination = Path(directory) / BUNDLE_DIRECTORY
        shutil.copytree(self.bundle, destination, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model_host", "*.elf", "*.o"))
        return sorted(path for path in destination.rglob("*") if path.is_file())

    def __repr__(self) -> str:
        return f"<McuCompiledModel {self.graph.name} for {self.target.mcpu}: {self.bundle}>"


class QemuEntry:
    """One mcu entry point whose ``run`` executes its Cortex-M build under QEMU.

    The ELF is built once in ``work`` and reused by later calls; ``stats`` holds the last run's
    instructions, flash and stack (``McuCompiledModel.run_qemu``).
    """

    def __init__(self, model: McuCompiledModel, work: Path) -> None:
        self.model = model
        self.work = Path(work)
        self.stats: dict[str, Any] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, self.stats = self.model.run_qemu(feeds, work=self.work)
        return outputs


def qemu_session(entries: Any, work: Path) -> Any:
    """A state-threading session (``backends.entries.Session``) whose entry points run under QEMU.

    ``entries`` is an ``EntryModel`` of mcu entry points (``artifact.entries``); each entry's ELF
    is built in ``work/<entry>``. The caches stay NumPy arrays on the host between calls, as in
    ``artifact.session()`` on the host build: each call copies them in and out by semihosting.

        session = qemu_session(artifact.entries, Path("out/qemu"))
        logits = session.run("prefill", {"input_ids": prompt, "position": zero})["logits"]
        session.model.entry("prefill").stats["instructions"]
    """
    from ..entries import EntryModel  # noqa: PLC0415

    runners = {}
    for name in entries.names:
        model = entries.entry(name)
        if not isinstance(model, McuCompiledModel):
            raise ArtifactError(f"entry point '{name}' is not compiled for the mcu target; recompile with --target mcu")
        runners[name] = QemuEntry(model, Path(work) / name)
    return EntryModel(runners, entries.state).session()
