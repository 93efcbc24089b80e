"""A graph builder that folds constants as it goes.

Frontends build through it: when every input of a new node is a param, the node is evaluated with
its NumPy reference right away and becomes a param, so exporter shape arithmetic
(Shape -> Gather -> Concat -> Reshape) collapses to constants during import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .graph import Graph, Value
from .ops import registry

DEFAULT_FOLD_LIMIT = 1 << 22  # elements; larger results stay as nodes


class Builder:
    def __init__(self, graph: Graph | None = None, fold_limit: int = DEFAULT_FOLD_LIMIT) -> None:
        self.graph = graph if graph is not None else Graph()
        self.fold_limit = fold_limit

    def const(self, array: Any, name: str = "const", dtype: str | None = None) -> Value:
        array = np.asarray(array, dtype=dtype) if dtype else np.asarray(array)
        return self.graph.add_param(name, array)

    def value_of(self, value: Value) -> np.ndarray | None:
        """The constant array behind ``value``, or None when it is computed at run time."""
        return self.graph.params.get(value)

    def ops(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None, name: str | None = None,
            output_names: Sequence[str] | None = None) -> list[Value]:
        opdef = registry.get(op)
        checked = opdef.check_attrs(attrs or {}, where=name or op)
        arrays = [self.graph.params.get(value) for value in inputs]
        if inputs and all(array is not None for array in arrays):
            out_types = opdef.infer([v.type for v in inputs], checked, where=name or op)
            if sum(t.numel for t in out_types) <= self.fold_limit and all(t.is_static for t in out_types):
                results = opdef.run(arrays, checked)  # type: ignore[arg-type]
                folded = []
                for index, (result, out_type) in enumerate(zip(results, out_types)):
                    hint = (output_names[index] if output_names and index < len(output_names) else None) or name or op.split(".")[-1]
                    folded.append(self.graph.add_param(hint, np.asarray(result, dtype=out_type.dtype).reshape(out_type.static_shape())))
                return folded
        node = self.graph.add_node(op, inputs, checked, name=name, output_names=output_names)
        return node.outputs

    def op(self, op: str, *inputs: Value, name: str | None = None, **attrs: Any) -> Value:
        outputs = self.ops(op, inputs, attrs, name=name)
        if len(outputs) != 1:
            raise ValueError(f"{op} has {len(outputs)} outputs; use Builder.ops")
        return outputs[0]
