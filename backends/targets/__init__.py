"""The target registry: each target is a small object named in one table, looked up by name.

A target says which TVM target it compiles for, which Relax passes run before ``tvm.compile``
(its pipeline stages), how the compiled executable is packaged into files, and which device
runs it. Adding a target is one module with one ``@register_target`` class; nothing else
dispatches on target names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import tvm
from tvm import relax

from ...errors import LoweringError
from ...ir.graph import Graph

if TYPE_CHECKING:
    from ..runtime import CompiledModel


class BuildTarget(Protocol):
    """What compile_graph needs from a target."""

    name: str

    def tvm_target(self) -> tvm.target.Target:
        """The TVM target (dict form: TVM 0.27 rejects target strings)."""
        ...

    def relax_passes(self) -> list[tvm.transform.Pass]:
        """Relax passes run (under the TVM target) before ``tvm.compile``."""
        ...

    def build(self, module: tvm.IRModule) -> relax.VMExecutable:
        """Run the pipeline and compile ``module`` into an executable for the Relax VM."""
        ...

    def export(self, executable: relax.VMExecutable, directory: Path) -> list[Path]:
        """Write the compiled library file(s) into ``directory``; returns their paths."""
        ...

    def library_files(self, directory: Path) -> list[Path]:
        """The files ``export`` writes, as ``load`` expects to find them."""
        ...

    def load_library(self, directory: Path) -> tvm.runtime.Module:
        """Load the library ``export`` wrote."""
        ...

    def load(self, directory: Path, graph: Graph, manifest: Mapping[str, Any] | None = None) -> CompiledModel:
        """A CompiledModel over the library in ``directory``; ``graph`` gives signature and params."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for the artifact manifest; ``name`` is what ``get_target`` takes."""
        ...

    def device(self) -> tvm.runtime.Device:
        """The device the compiled model runs on."""
        ...


TargetFactory = Callable[..., BuildTarget]
TARGETS: dict[str, TargetFactory] = {}


def register_target(name: str) -> Callable[[TargetFactory], TargetFactory]:
    """Register a target class (or factory) under ``name``."""

    def register(factory: TargetFactory) -> TargetFactory:
        if name in TARGETS:
            raise ValueError(f"target '{name}' is registered twice")
        TARGETS[name] = factory
        return factory

    return register


def get_target(target: str | BuildTarget, **options: Any) -> BuildTarget:
    """The target named ``target`` built with ``options``, or ``target`` itself when it is one."""
    if not isinstance(target, str):
        if options:
            raise LoweringError(f"options {sorted(options)} given with a target object; set them on the object")
        return target
    try:
        factory = TARGETS[target]
    except KeyError:
        raise LoweringError(f"unknown target '{target}'; known targets: {', '.join(sorted(TARGETS))}") from None
    try:
        return factory(**options)
    except TypeError as error:
        raise LoweringError(f"bad options for target '{target}': {error}") from error


def available_targets() -> list[str]:
    return sorted(TARGETS)


from . import cpu  # noqa: E402,F401  (registers "cpu")
from . import mcu  # noqa: E402,F401  (registers "mcu")
from . import arm  # noqa: E402,F401  (registers "arm")
from . import cuda  # noqa: E402,F401  (registers "cuda")

__all__ = ["TARGETS", "BuildTarget", "available_targets", "get_target", "register_target"]
