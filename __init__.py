"""optc: a compiler-style graph rewriting toolkit for deep learning models.

    import optc
    graph = optc.load("model.onnx")                      # or optc.capture(module, example_inputs)
    artifact = optc.compile(graph, target="cpu", passes="cleanup", output="out/model")
    outputs = optc.load_artifact("out/model").run({"input": x})

Heavy dependencies (torch, TVM, onnx) load only when the function that needs them is called.
"""

from __future__ import annotations

from typing import Any

from .errors import OptcError

__version__ = "0.1.0"

_LAZY = {
    "load": ("compiler", "load"),
    "compile": ("compiler", "compile"),
    "compile_entries": ("compiler", "compile_entries"),
    "capture": ("frontends.torch", "capture"),
    "load_onnx": ("frontends.onnx", "load_onnx"),
    "load_artifact": ("backends.artifact", "load_artifact"),
    "PassManager": ("passes", "PassManager"),
    "Graph": ("ir", "Graph"),
    "verify": ("ir", "verify"),
    "interpret": ("ir", "interpret"),
}

__all__ = ["OptcError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module_name}", __name__), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'optc' has no attribute '{name}'")
