"""Checks every IR invariant and names the node that breaks one."""

from __future__ import annotations

from ..errors import VerificationError
from .graph import Graph
from .ops import registry


def verify(graph: Graph) -> None:
    """Raise ``VerificationError`` naming the first broken invariant; return None when sound.

    Checked: every op is registered and its attributes fit the schema; each value is defined once,
    before use (topological order); use-lists match the inputs; node outputs are owned by their
    producer; stored types equal freshly inferred ones; params match their arrays.
    """
    defined: set[int] = set()
    names: set[str] = set()

    def define(value, where: str) -> None:
        if id(value) in defined:
            raise VerificationError(f"{where}: value %{value.name} is defined twice")
        if value.name in names:
            raise VerificationError(f"{where}: two values are named %{value.name}")
        defined.add(id(value))
        names.add(value.name)

    for value in graph.inputs:
        if value.producer is not None:
            raise VerificationError(f"graph input %{value.name} has a producer")
        define(value, "inputs")
    for value, array in graph.params.items():
        if value.producer is not None:
            raise VerificationError(f"param %{value.name} has a producer")
        if tuple(array.shape) != tuple(value.shape) or array.dtype.name != value.dtype:
            raise VerificationError(
                f"param %{value.name} is typed {value.type} but holds {array.dtype.name}{list(array.shape)}"
            )
        define(value, "params")

    node_names: set[str] = set()
    for node in graph.nodes:
        where = f"node {node.name} ({node.op})"
        if node.name in node_names:
            raise VerificationError(f"{where}: node name used twice")
        node_names.add(node.name)
        if not registry.is_registered(node.op):
            raise VerificationError(f"{where}: op is not in the registry")
        opdef = registry.get(node.op)
        opdef.check_attrs(node.attrs, where=where)
        for position, value in enumerate(node.inputs):
            if id(value) not in defined:
                raise VerificationError(f"{where}: input {position} %{value.name} is used before it is defined")
            if sum(1 for user, index in value.uses if user is node and index == position) != 1:
                raise VerificationError(f"{where}: use-list of %{value.name} does not record input {position}")
        inferred = opdef.infer([v.type for v in node.inputs], node.attrs, where=where)
        if len(inferred) != len(node.outputs):
            raise VerificationError(f"{where}: has {len(node.outputs)} outputs, the op makes {len(inferred)}")
        for index, (value, expected) in enumerate(zip(node.outputs, inferred)):
            if value.producer is not node or value.output_index != index:
                raise VerificationError(f"{where}: output %{value.name} is not owned by this node")
            if value.type != expected:
                raise VerificationError(f"{where}: output %{value.name} is typed {value.type}, inference gives {expected}")
            define(value, where)

    members = {id(node) for node in graph.nodes}
    for value in graph.values():
        for user, position in value.uses:
            if id(user) not in members:
                raise VerificationError(f"%{value.name}: used by {user.name}, which is not in the graph")
            if position >= len(user.inputs) or user.inputs[position] is not value:
                raise VerificationError(f"%{value.name}: stale use by {user.name} at input {position}")
    for value in graph.outputs:
        if id(value) not in defined:
            raise VerificationError(f"graph output %{value.name} is not defined in the graph")
    if not graph.outputs:
        raise VerificationError(f"graph {graph.name} has no outputs")
