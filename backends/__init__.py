"""optc backends: lower a Graph to TVM Relax, compile it for a target, run the result.

    model = compile_graph(graph, target="cpu")
    outputs = model.run({"x": array})          # {output name: array}
    model.export(directory)                    # writes the library (model.so), not the params
    again = load_compiled(directory, graph)    # the graph supplies signature and params

Names load lazily: importing ``optc.backends.artifact`` (manifest checks, no code loading)
does not import TVM, which takes over a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "LOWERINGS": "lower",
    "lower_graph": "lower",
    "lowers": "lower",
    "missing_lowerings": "lower",
    "CompiledModel": "runtime",
    "compile_graph": "runtime",
    "load_compiled": "runtime",
    "BuildTarget": "targets",
    "available_targets": "targets",
    "get_target": "targets",
    "register_target": "targets",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from .lower import LOWERINGS, lower_graph, lowers, missing_lowerings
    from .runtime import CompiledModel, compile_graph, load_compiled
    from .targets import BuildTarget, available_targets, get_target, register_target


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'optc.backends' has no attribute '{name}'")
