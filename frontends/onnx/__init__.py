"""The ONNX frontend: a safe loader for untrusted files and an importer into optc's IR.

    from optc.frontends.onnx import load_onnx
    graph = load_onnx("model.onnx", input_shapes={"input_ids": (1, 128)})

``load_onnx`` reads only inside the model's directory, bounds the model (``LoadLimits``), runs
the ONNX checker with ``full_check`` and converts every node through the op registry, folding
constant subgraphs as it goes. Failures are ``OptcError``s: ``ModelLoadError`` for the file,
``UnsupportedOpError`` listing every op without a conversion, ``InputError`` for bad
``input_shapes``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from ...ir.builder import DEFAULT_FOLD_LIMIT
from ...ir.graph import Graph
from .importer import CONVERTERS, import_model
from .loader import DEFAULT_LIMITS, LoadLimits, check_model_proto, limits_with, load_model_proto

__all__ = ["DEFAULT_LIMITS", "LoadLimits", "from_onnx_model", "load_onnx", "supported_ops"]


def load_onnx(
    path: str | os.PathLike[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    max_elements: int | None = None,
    limits: LoadLimits | None = None,
    fold_limit: int = DEFAULT_FOLD_LIMIT,
    constant_inputs: Mapping[str, np.ndarray] | None = None,
) -> Graph:
    """Load an untrusted ONNX file into a verified optc Graph.

    ``input_shapes`` maps input names to full static shapes; symbolic dims not given there are
    bound to 1 (with a logged warning). ``max_elements`` overrides ``limits.max_elements``, the
    bound on elements of any tensor. Constant subexpressions up to ``fold_limit`` elements are
    folded into params during import. ``constant_inputs`` gives values to inputs that the model
    uses as shapes, split sizes or positions; they become params and leave the graph's inputs.
    """
    chosen = limits_with(limits, max_elements=max_elements)
    model = load_model_proto(path, chosen)
    source = os.path.basename(os.fspath(path)) or os.fspath(path)
    return import_model(model, input_shapes, limits=chosen, source=source, fold_limit=fold_limit,
                        constant_inputs=constant_inputs)


def from_onnx_model(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    max_elements: int | None = None,
    limits: LoadLimits | None = None,
    fold_limit: int = DEFAULT_FOLD_LIMIT,
    constant_inputs: Mapping[str, np.ndarray] | None = None,
    source: str = "model",
) -> Graph:
    """Import an in-memory ModelProto (same checks as ``load_onnx``; no external data allowed)."""
    chosen = limits_with(limits, max_elements=max_elements)
    checked = check_model_proto(model, chosen, source)
    return import_model(checked, input_shapes, limits=chosen, source=source, fold_limit=fold_limit,
                        constant_inputs=constant_inputs)


def supported_ops() -> list[str]:
    """The ONNX op types (domain-qualified outside the default domain) that have a converter."""
    from . import converters  # noqa: F401  (registers the converters)

    return sorted(CONVERTERS)
