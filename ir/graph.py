"""Values, nodes and graphs: optc's SSA IR.

A ``Value`` is produced by at most one node (or is a graph input or a param) and knows its uses.
Values compare by identity. Every mutation goes through ``Graph`` methods so use-lists stay true.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import VerificationError
from .ops import registry
from .types import TensorType


class Value:
    """One SSA value: a graph input, a param (a constant tensor), or a node's output."""

    __slots__ = ("name", "type", "producer", "output_index", "uses", "__weakref__")

    def __init__(self, name: str, type: TensorType) -> None:
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.output_index = 0
        # (node, input position) pairs; one entry per use, so a node using a value twice has two.
        self.uses: list[tuple[Node, int]] = []

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def users(self) -> list["Node"]:
        """The distinct nodes that read this value, in use order."""
        seen: dict[int, Node] = {}
        for node, _ in self.uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation: a registry op name, input values, attributes, and the outputs it owns."""

    __slots__ = ("op", "name", "inputs", "attrs", "outputs", "__weakref__")

    def __init__(self, op: str, name: str, inputs: list[Value], attrs: dict[str, Any]) -> None:
        self.op = op
        self.name = name
        self.inputs = inputs
        self.attrs = attrs
        self.outputs: list[Value] = []

    @property
    def output(self) -> Value:
        """The single output; raises when the node has several."""
        if len(self.outputs) != 1:
            raise VerificationError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    @property
    def opdef(self) -> registry.OpDef:
        return registry.get(self.op)

    def __repr__(self) -> str:
        return f"<Node {self.name}: {self.op}>"


class Graph:
    """Inputs, params, nodes in topological order, and outputs."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.params: dict[Value, np.ndarray] = {}
        self._names: set[str] = set()  # value names
        self._node_names: set[str] = set()
        self._counter = itertools.count()

    # ---- naming -------------------------------------------------------------------------------
    def unique_name(self, hint: str) -> str:
        """A value name not used yet in this graph, close to ``hint``."""
        return self._claim(hint or "v", self._names)

    def unique_node_name(self, hint: str) -> str:
        return self._claim(hint or "node", self._node_names)

    def _claim(self, hint: str, taken: set[str]) -> str:
        base = hint.replace(" ", "_")
        name = base
        while name in taken:
            name = f"{base}_{next(self._counter)}"
        taken.add(name)
        return name

    # ---- construction ---------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.unique_name(name), type)
        self.inputs.append(value)
        return value

    def add_param(self, name: str, array: np.ndarray) -> Value:
        """A constant tensor (weight or small constant) owned by the graph."""
        array = np.require(np.asarray(array), requirements="C")  # keeps 0-d arrays 0-d
        value = Value(self.unique_name(name), TensorType.of(array))
        self.params[value] = array
        return value

    def add_node(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: dict[str, Any] | None = None,
        name: str | None = None,
        before: Node | None = None,
        output_names: Sequence[str] | None = None,
    ) -> Node:
        """Create a node, infer its output types from the registry and insert it.

        The node is appended, or inserted just before ``before`` (use this from passes that
        replace a node, so topological order holds without a re-sort).
        """
        opdef = registry.get(op)
        checked_attrs = opdef.check_attrs(attrs or {}, where=name or op)
        for value in inputs:
            if not isinstance(value, Value):
                raise VerificationError(f"input of {op} is not a Value: {value!r}")
        out_types = opdef.infer([value.type for value in inputs], checked_attrs, where=name or op)
        node = Node(op, self.unique_node_name(name or op.split(".")[-1]), list(inputs), checked_attrs)
        for position, value in enumerate(node.inputs):
            value.uses.append((node, position))
        for index, out_type in enumerate(out_types):
            hint = output_names[index] if output_names and index < len(output_names) else None
            value = Value(self.unique_name(hint or (node.name if len(out_types) == 1 else f"{node.name}_{index}")), out_type)
            value.producer = node
            value.output_index = index
            node.outputs.append(value)
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self._index_of(before), node)
        return node

    def op(self, op: str, *inputs: Value, name: str | None = None, **attrs: Any) -> Value:
        """Shorthand: add a single-output node and return its output value."""
        return self.add_node(op, inputs, attrs, name=name).output

    # ---- mutation ---------------------------------------------------------------------------------
    def _index_of(self, node: Node) -> int:
        for index, candidate in enumerate(self.nodes):
            if candidate is node:
                return index
        raise VerificationError(f"node {node.name} is not in graph {self.name}")

    def set_input(self, node: Node, position: int, value: Value) -> None:
        old = node.inputs[position]
        old.uses.remove((node, position))
        node.inputs[position] = value
        value.uses.append((node, position))

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Make every reader of ``old`` (nodes and graph outputs) read ``new`` instead."""
        if old is new:
            return
        for node, position in list(old.uses):
            node.inputs[position] = new
            new.uses.append((node, position))
        old.uses.clear()
        self.outputs = [new if value is old else value for value in self.outputs]

    def rename_value(self, value: Value, name: str) -> bool:
        """Give ``value`` the name ``name`` if no other value has it; returns whether it did."""
        if value.name == name:
            return True
        if name in self._names:
            return False
        self._names.discard(value.name)
        self._names.add(name)
        value.name = name
        return True

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused."""
        for value in node.outputs:
            if value.uses or any(value is out for out in self.outputs):
                raise VerificationError(f"cannot remove {node.name}: output {value.name} is still used")
        for position, value in enumerate(node.inputs):
            value.uses.remove((node, position))
        self.nodes.pop(self._index_of(node))
        self._node_names.discard(node.name)
        for value in node.outputs:
            self._names.discard(value.name)

    def rebuild_node(self, node: Node, inputs: Sequence[Value], attrs: dict[str, Any]) -> Node:
        """Replace ``node`` by the same op on ``inputs`` with ``attrs`` (types inferred again),
        keeping its node and output names; returns the new node."""
        name, output_names = node.name, [value.name for value in node.outputs]
        temporary = self.add_node(node.op, inputs, attrs, name=name + ".rebuilt", before=node)
        for old, new in zip(node.outputs, temporary.outputs):
            self.replace_all_uses(old, new)
        self.remove_node(node)
        final = self.add_node(node.op, inputs, attrs, name=name, before=temporary, output_names=output_names)
        for old, new in zip(temporary.outputs, final.outputs):
            self.replace_all_uses(old, new)
        self.remove_node(temporary)
        return final

    def remove_dead_nodes(self) -> int:
        """Remove the nodes and params nothing reads (outputs count as read); returns how many."""
        removed = 0
        outputs = {id(value) for value in self.outputs}
        for node in reversed(list(self.nodes)):  # users before producers, so chains go in one sweep
            if all(not value.uses and id(value) not in outputs for value in node.outputs):
                self.remove_node(node)
                removed += 1
        return removed + self.remove_unused_params()

    def remove_unused_params(self) -> int:
        unused = [value for value in self.params if not value.uses and not any(value is out for out in self.outputs)]
        for value in unused:
            del self.params[value]
            self._names.discard(value.name)
        return len(unused)

    def sort(self) -> None:
        """Re-establish topological order (stable: keeps the current order where it is legal)."""
        ready = set(map(id, self.inputs)) | set(map(id, self.params))
        pending = list(self.nodes)
        ordered: list[Node] = []
        while pending:
            rest = []
            for node in pending:
                if all(id(value) in ready for value in node.inputs):
                    ordered.append(node)
                    ready.update(id(value) for value in node.outputs)
                else:
                    rest.append(node)
            if len(rest) == len(pending):
                raise VerificationError(f"graph {self.name} has a cycle through {rest[0].name}")
            pending = rest
        self.nodes = ordered

    # ---- queries --------------------------------------------------------------------------------
    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.params
        for node in self.nodes:
            yield from node.outputs

    def is_param(self, value: Value) -> bool:
        return value in self.params

    def param_array(self, value: Value) -> np.ndarray | None:
        return self.params.get(value)

    def find(self, name: str) -> Value:
        for value in self.values():
            if value.name == name:
                return value
        raise KeyError(name)

    def input_signature(self) -> list[dict[str, Any]]:
        return [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in self.inputs]

    def output_signature(self) -> list[dict[str, Any]]:
        return [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in self.outputs]

    # ---- copying --------------------------------------------------------------------------------
    def clone(self) -> "Graph":
        """A structural copy that shares (read-only) param arrays; cheap enough per experiment."""
        copy = Graph(self.name)
        mapping: dict[int, Value] = {}

        def twin(value: Value) -> Value:
            new = Value(value.name, value.type)
            copy._names.add(value.name)
            mapping[id(value)] = new
            return new

        copy.inputs = [twin(value) for value in self.inputs]
        for value, array in self.params.items():
            copy.params[twin(value)] = array
        for node in self.nodes:
            new_node = Node(node.op, node.name, [mapping[id(v)] for v in node.inputs], dict(node.attrs))
            copy._node_names.add(node.name)
            for position, value in enumerate(new_node.inputs):
                value.uses.append((new_node, position))
            for value in node.outputs:
                new_value = twin(value)
                new_value.producer = new_node
                new_value.output_index = value.output_index
                new_node.outputs.append(new_value)
            copy.nodes.append(new_node)
        copy.outputs = [mapping[id(value)] for value in self.outputs]
        return copy

    # ---- statistics -----------------------------------------------------------------------------
    def param_count(self) -> int:
        return int(sum(array.size for array in self.params.values()))

    def param_bytes(self) -> int:
        return int(sum(array.nbytes for array in self.params.values()))

    def flops(self) -> int:
        total = 0
        for node in self.nodes:
            total += node.opdef.count_flops([v.type for v in node.inputs], [v.type for v in node.outputs], node.attrs)
        return int(total)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def __str__(self) -> str:
        from .text import print_graph

        return print_graph(self)
