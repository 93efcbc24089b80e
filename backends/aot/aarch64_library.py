"""The arm target's second form: a Relax VM shared library for boards with TVM's runtime.

The graph is lowered like the cpu target's (``DecomposeOpsForInference`` + ``zero``, params
kept as inputs of ``main``: they travel in the artifact's ``graph.safetensors``), compiled by
TVM's LLVM backend for ``aarch64-linux-gnu`` and linked with ``aarch64-linux-gnu-gcc``:

    path = build_library(graph, tvm_target, directory / "model.so")

On the board: ``tvm.runtime.load_module("model.so")`` with apache-tvm's aarch64 wheel, then
``relax.VirtualMachine(module, tvm.cpu())["main"](*inputs, *params)``. Here it runs under
qemu-aarch64 through the small C++ loader of ``arm_so`` once ``python -m
optc.tools.fetch_arm_runtime`` has fetched TVM's aarch64 runtime libraries.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from ...errors import LoweringError
from ...ir.graph import Graph
from ..lower import lower_graph
from .build import require

CROSS_COMPILER = "aarch64-linux-gnu-gcc"


def build_library(graph: Graph, target: tvm.target.Target, path: Path) -> Path:
    """Compile ``graph`` for ``target`` (aarch64 LLVM) into the shared library ``path``."""
    from tvm.support.cc import cross_compiler  # noqa: PLC0415

    require(CROSS_COMPILER)
    module = lower_graph(graph)
    try:
        with target:
            module = tvm.transform.Sequential(
                [relax.transform.DecomposeOpsForInference(), relax.get_pipeline("zero")])(module)
        executable = tvm.compile(module, target, relax_pipeline="default_build")
        path.parent.mkdir(parents=True, exist_ok=True)
        executable.export_library(str(path), fcompile=cross_compiler(CROSS_COMPILER))
    except Exception as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise LoweringError(f"TVM could not build the aarch64 library for {graph.name}: "
                            f"{(lines[-1] if lines else type(error).__name__)[:500]}") from error
    return path
