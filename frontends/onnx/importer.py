"""ONNX graph -> optc Graph: the conversion context and the converter table.

A converter is one function per ONNX op type, registered with ``@converter("OpType")``. It
receives the ``ImportContext`` and an ``OnnxNode`` and returns the node's outputs: one ``Value``,
or a list with one entry per ONNX output (``None`` where an optional output is not produced, a
``SequenceValue`` for sequence outputs). Everything is built through ``ir.Builder``, so nodes
whose inputs are all constants fold at import: exporter shape arithmetic
(Shape -> Gather -> Concat -> Reshape) arrives as constants.

Conversion does not stop at the first op it cannot handle: every node without a converter, or
whose converter refuses it (``ctx.refuse(reason)``), is recorded, the values it would have made
are marked unavailable, and one ``UnsupportedOpError`` listing all of them is raised at the end.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import InputError, ModelLoadError, OptcError, ShapeError, UnsupportedOpError, VerificationError
from ...ir.builder import DEFAULT_FOLD_LIMIT, Builder
from ...ir.graph import Graph, Value
from ...ir.ops import registry
from ...ir.types import TensorType
from ...ir.verify import verify
from .loader import DEFAULT_LIMITS, STANDARD_DOMAINS, LoadLimits, default_opset

logger = logging.getLogger(__name__)


# ---- values the importer tracks per ONNX name -----------------------------------------------------------

@dataclass(frozen=True)
class SequenceValue:
    """An ONNX sequence resolved at import time: the tensors it holds, in order."""

    items: tuple[Value, ...]


@dataclass(frozen=True)
class _Unavailable:
    """A name whose value could not be made; ``issue`` is the recorded cause, None if recorded upstream."""

    issue: tuple[str, str] | None = None


Entry = Union[Value, SequenceValue, _Unavailable]


class Refused(Exception):
    """Raised by a converter (through ``ctx.refuse``) for a variant of an op optc cannot convert."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Skip(Exception):
    """An input of the node is unavailable because of an issue recorded elsewhere."""


# ---- nodes ---------------------------------------------------------------------------------------------

def _attribute_value(attribute: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [item.decode("utf-8", errors="replace") for item in value]
    return value


@dataclass
class OnnxNode:
    """One ONNX node with its attributes decoded to Python values."""

    op_type: str
    domain: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    label: str

    @staticmethod
    def from_proto(proto: onnx.NodeProto, index: int) -> "OnnxNode":
        outputs = list(proto.output)
        label = proto.name or (f"{proto.op_type}->{outputs[0]}" if outputs and outputs[0] else f"{proto.op_type}#{index}")
        return OnnxNode(
            op_type=proto.op_type,
            domain=proto.domain if proto.domain not in STANDARD_DOMAINS else "",
            name=proto.name,
            inputs=list(proto.input),
            outputs=outputs,
            attrs={attribute.name: _attribute_value(attribute) for attribute in proto.attribute},
            label=label,
        )

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def has_input(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index] != ""

    def wants_output(self, index: int) -> bool:
        return index < len(self.outputs) and self.outputs[index] != ""


ConverterResult = Union[Value, SequenceValue, Sequence[Union[Value, SequenceValue, None]]]
Converter = Callable[["ImportContext", OnnxNode], ConverterResult]

CONVERTERS: dict[str, Converter] = {}


def converter(op_type: str, domain: str = "") -> Callable[[Converter], Converter]:
    """Register ``function`` as the converter of ``op_type`` (in ``domain``; '' is ONNX's default)."""

    def register(function: Converter) -> Converter:
        key = op_type if domain in STANDARD_DOMAINS else f"{domain}.{op_type}"
        if key in CONVERTERS:
            raise ValueError(f"ONNX op {key} has two converters")
        CONVERTERS[key] = function
        return function

    return register


def _converter_key(node: OnnxNode) -> str:
    return node.op_type if not node.domain else f"{node.domain}.{node.op_type}"


# ---- dtypes --------------------------------------------------------------------------------------------

_ONNX_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


def onnx_dtype(elem_type: int) -> str | None:
    """optc's dtype name for an ONNX element type, or None when optc has no such dtype."""
    return _ONNX_DTYPES.get(elem_type)


def onnx_dtype_name(elem_type: int) -> str:
    """ONNX's own name of an element type, for messages."""
    try:
        return onnx.helper.tensor_dtype_to_string(elem_type).replace("TensorProto.", "").lower()
    except (KeyError, ValueError):
        return f"element type {elem_type}"


def tensor_to_array(tensor: onnx.TensorProto, where: str) -> np.ndarray:
    """A TensorProto's data as a NumPy array in an optc dtype; refuses types optc lacks."""
    if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ModelLoadError(
            f"{where}: tensor '{tensor.name}' still references external data; load the model with "
            "optc.frontends.onnx.load_onnx, which reads external data safely"
        )
    dtype = onnx_dtype(tensor.data_type)
    if dtype is None:
        raise Refused(f"{onnx_dtype_name(tensor.data_type)} tensors")
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as error:  # malformed payloads (wrong byte count...) fail inside onnx
        raise ModelLoadError(f"{where}: tensor '{tensor.name}' cannot be decoded: {error}") from None
    # np.require keeps rank 0 (np.ascontiguousarray would turn a scalar into shape (1,))
    return np.require(array.astype(dtype, copy=False), requirements="C")


# ---- building ------------------------------------------------------------------------------------------

# ---- the context -----------------------------------------------------------------------------------------

@dataclass
class ImportContext:
    """What a converter sees: the builder, the ONNX names resolved so far, the opset."""

    builder: Builder
    opset: int
    limits: LoadLimits
    source: str
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    env: dict[str, Entry] = field(default_factory=dict)
    issues: dict[str, list[str]] = field(default_factory=dict)
    node: OnnxNode | None = None

    @property
    def graph(self) -> Graph:
        return self.builder.graph

    # -- reading inputs ---------------------------------------------------------------------------
    def entry(self, name: str) -> Entry:
        """The tensor or sequence behind an ONNX name; raises internally when it is unavailable."""
        entry = self.env.get(name)
        if entry is None:
            tensor = self.initializers.get(name)
            if tensor is None:
                raise ModelLoadError(f"{self.source}: value '{name}' is used but never defined")
            try:
                entry = self.builder.const(tensor_to_array(tensor, self.source), name=name)
            except Refused as refusal:
                entry = _Unavailable((f"initializer ({refusal.reason})", name))
            self.env[name] = entry
        if isinstance(entry, _Unavailable):
            if entry.issue is not None:
                self.record(*entry.issue)
            raise _Skip()
        return entry

    def value(self, name: str) -> Value:
        entry = self.entry(name)
        if isinstance(entry, SequenceValue):
            self.refuse(f"input '{name}' is a sequence where a tensor is expected")
        return entry  # type: ignore[return-value]

    def input(self, node: OnnxNode, index: int) -> Value:
        if not node.has_input(index):
            self.refuse(f"input {index} is required")
        return self.value(node.inputs[index])

    def optional_input(self, node: OnnxNode, index: int) -> Value | None:
        return self.value(node.inputs[index]) if node.has_input(index) else None

    def sequence(self, name: str) -> SequenceValue:
        entry = self.entry(name)
        if not isinstance(entry, SequenceValue):
            self.refuse(f"input '{name}' is a tensor where a sequence is expected")
        return entry  # type: ignore[return-value]

    def constant(self, value: Value | None) -> np.ndarray | None:
        """The array behind a value known at import time, else None."""
        return None if value is None else self.builder.value_of(value)

    def constant_input(self, node: OnnxNode, index: int, what: str) -> np.ndarray | None:
        """An optional input that must be a constant when present (shapes, axes, pads...)."""
        value = self.optional_input(node, index)
        if value is None:
            return None
        array = self.constant(value)
        if array is None:
            if any(value is graph_input for graph_input in self.graph.inputs):
                self.refuse(
                    f"{what} comes from graph input '{value.name}' at run time; give its value with "
                    f"constant_inputs={{'{value.name}': ...}}"
                )
            self.refuse(f"{what} must be a constant (it is computed at run time)")
        return array

    # -- building -------------------------------------------------------------------------------------
    def _hint(self, output: int) -> str:
        node = self.node
        if node is not None and output < len(node.outputs) and node.outputs[output]:
            return node.outputs[output]
        return node.label if node is not None else "v"

    def emit(self, op: str, *inputs: Value, output: int = 0, **attrs: Any) -> Value:
        """Add the op whose result is ONNX output ``output`` of the current node (named after it)."""
        return self.builder.ops(op, inputs, attrs, name=self._node_name(), output_names=[self._hint(output)])[0]

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Add an intermediate op; its value is named after the current node's output."""
        hint = f"{self._hint(0)}/{op.split('.')[-1]}"
        return self.builder.ops(op, inputs, attrs, name=self._node_name(), output_names=[hint])[0]

    def emit_many(self, op: str, inputs: Sequence[Value], **attrs: Any) -> list[Value]:
        """Add a multi-output op whose results are the current node's outputs in order."""
        node = self.node
        names = [name or f"{self._hint(0)}/{index}" for index, name in enumerate(node.outputs)] if node else None
        return self.builder.ops(op, inputs, attrs, name=self._node_name(), output_names=names)

    def op_many(self, op: str, inputs: Sequence[Value], **attrs: Any) -> list[Value]:
        """Add an intermediate multi-output op."""
        return self.builder.ops(op, inputs, attrs, name=self._node_name())

    def _node_name(self) -> str:
        if self.node is None:
            return "node"
        return self.node.name or self._hint(0)

    def const(self, array: Any, dtype: str | None = None, output: int | None = None) -> Value:
        """A new constant; named after ONNX output ``output`` when given."""
        name = self._hint(output) if output is not None else f"{self._hint(0)}/const"
        array = np.asarray(array, dtype=dtype) if dtype else np.asarray(array)
        return self.builder.const(array, name=name)

    def scalar_like(self, value: Value, number: float) -> Value:
        """A rank-0 constant of ``value``'s dtype."""
        return self.const(np.asarray(number, dtype=value.dtype))

    # -- refusing and recording -------------------------------------------------------------------------
    def refuse(self, reason: str) -> None:
        raise Refused(reason)

    def record(self, key: str, name: str) -> None:
        names = self.issues.setdefault(key, [])
        if name not in names:
            names.append(name)

    # -- running converters -------------------------------------------------------------------------------
    def convert_nodes(self, nodes: Iterable[onnx.NodeProto]) -> None:
        for index, proto in enumerate(nodes):
            self.convert(OnnxNode.from_proto(proto, index))

    def convert(self, node: OnnxNode) -> None:
        """Convert one node, recording instead of raising when it is unsupported."""
        key = _converter_key(node)
        function = CONVERTERS.get(key)
        if function is None:
            self._mark_unavailable(node, (key, node.label))
            return
        outer, self.node = self.node, node
        try:
            result = function(self, node)
        except _Skip:
            self._mark_unavailable(node, None)
            return
        except Refused as refusal:
            self._mark_unavailable(node, (f"{key} ({refusal.reason})", node.label))
            return
        except ModelLoadError:
            raise
        except (ShapeError, VerificationError) as error:
            raise ShapeError(f"{self.source}: ONNX node {node.label} ({key}) does not convert: {error}") from error
        except OptcError:
            raise
        except Exception as error:  # NumPy folding on malformed constants, converter bugs
            raise ModelLoadError(
                f"{self.source}: ONNX node {node.label} ({key}) failed to convert: {type(error).__name__}: {error}"
            ) from error
        finally:
            self.node = outer
        self._bind_outputs(node, key, result)

    def _mark_unavailable(self, node: OnnxNode, issue: tuple[str, str] | None) -> None:
        if issue is not None:
            self.record(*issue)
        for name in node.outputs:
            if name:
                self.env[name] = _Unavailable()

    def _bind_outputs(self, node: OnnxNode, key: str, result: ConverterResult) -> None:
        if isinstance(result, (Value, SequenceValue)):
            results: list[Any] = [result]
        else:
            results = list(result)
        for index, name in enumerate(node.outputs):
            if not name:
                continue
            produced = results[index] if index < len(results) else None
            if produced is None:
                self.env[name] = _Unavailable((f"{key} (output {index} '{name}')", node.label))
            else:
                self.env[name] = produced


# ---- the model ----------------------------------------------------------------------------------------------

def _declared_shape(value_info: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _bind_input_shape(
    name: str, declared: list[int | str | None] | None, given: Sequence[int] | None, source: str, limits: LoadLimits
) -> tuple[int, ...]:
    if given is not None:
        shape = tuple(given)
        if not all(isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
            raise InputError(f"input_shapes['{name}'] = {given!r} must be a tuple of non-negative ints")
        if declared is not None:
            if len(declared) != len(shape):
                raise InputError(
                    f"input_shapes['{name}'] = {tuple(shape)} has rank {len(shape)}, but {source} declares "
                    f"{name} with rank {len(declared)} ({declared})"
                )
            for axis, (want, got) in enumerate(zip(declared, shape)):
                if isinstance(want, int) and want != got:
                    raise InputError(
                        f"input_shapes['{name}'] = {tuple(shape)} sets dim {axis} to {got}, but {source} "
                        f"fixes it at {want}; pass {want} there"
                    )
        bound = tuple(int(dim) for dim in shape)
    else:
        if declared is None:
            raise InputError(
                f"{source}: input '{name}' has no declared shape; pass input_shapes={{'{name}': (...)}}"
            )
        symbolic = [dim for dim in declared if not isinstance(dim, int)]
        if symbolic:
            logger.warning(
                "%s: input '%s' has symbolic dims %s; binding them to 1 (pass input_shapes={'%s': (...)} to choose)",
                source, name, [dim if dim is not None else "?" for dim in symbolic], name,
            )
        bound = tuple(dim if isinstance(dim, int) else 1 for dim in declared)
    count = 1
    for dim in bound:
        if dim > limits.max_dim:
            raise ModelLoadError(f"{source}: input '{name}' dim {dim} is over the limit of {limits.max_dim}")
        count *= dim
    if count > limits.max_elements:
        raise ModelLoadError(
            f"{source}: input '{name}' of shape {bound} has {count} elements, over the limit of {limits.max_elements}"
        )
    return bound


def _frozen_input(context: ImportContext, value_info: onnx.ValueInfoProto, given: Any) -> Value:
    """A graph input given a value at import: checked against its declaration, then a param."""
    array = np.asarray(given)
    elem_type = value_info.type.tensor_type.elem_type
    dtype = onnx_dtype(elem_type)
    if dtype is None or array.dtype.name != dtype:
        raise InputError(
            f"constant_inputs['{value_info.name}'] is {array.dtype.name}, but {context.source} declares "
            f"{onnx_dtype_name(elem_type)}"
        )
    _bind_input_shape(value_info.name, _declared_shape(value_info), array.shape, context.source, context.limits)
    return context.builder.const(array, name=value_info.name)


def import_model(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    limits: LoadLimits = DEFAULT_LIMITS,
    source: str = "model",
    fold_limit: int = DEFAULT_FOLD_LIMIT,
    constant_inputs: Mapping[str, np.ndarray] | None = None,
) -> Graph:
    """Convert a checked ModelProto (see ``loader``) into a verified optc Graph.

    ``input_shapes`` binds input shapes (symbolic dims default to 1); ``constant_inputs`` gives
    inputs values known at import, which makes them params (needed when a model takes a shape,
    split sizes or positions as an input).
    """
    from . import converters  # noqa: F401  (registers the converters)

    onnx_graph = model.graph
    # the text form wants a word for the graph name; ONNX allows anything
    graph = Graph(re.sub(r"\W", "_", onnx_graph.name) or "main")
    context = ImportContext(
        builder=Builder(graph, fold_limit=fold_limit),
        opset=default_opset(model),
        limits=limits,
        source=source,
        initializers={tensor.name: tensor for tensor in onnx_graph.initializer},
    )
    if onnx_graph.sparse_initializer:
        context.record("sparse initializers", ", ".join(s.values.name for s in onnx_graph.sparse_initializer))

    runtime_inputs = [value for value in onnx_graph.input if value.name not in context.initializers]
    shapes = dict(input_shapes or {})
    frozen = dict(constant_inputs or {})
    for argument, names in (("input_shapes", shapes), ("constant_inputs", frozen)):
        unknown = sorted(set(names) - {value.name for value in runtime_inputs})
        if unknown:
            raise InputError(
                f"{argument} names {unknown}, which are not inputs of {source}; "
                f"its inputs are {[value.name for value in runtime_inputs]}"
            )
    for value_info in runtime_inputs:
        if value_info.name in frozen:
            context.env[value_info.name] = _frozen_input(context, value_info, frozen[value_info.name])
            continue
        kind = value_info.type.WhichOneof("value")
        elem_type = value_info.type.tensor_type.elem_type if kind == "tensor_type" else None
        dtype = onnx_dtype(elem_type) if elem_type is not None else None
        if dtype is None:
            # strings, bfloat16, sequences as inputs: consumers that need them become unsupported
            what = onnx_dtype_name(elem_type) if elem_type is not None else kind
            context.env[value_info.name] = _Unavailable((f"graph input of type {what}", value_info.name))
            continue
        shape = _bind_input_shape(value_info.name, _declared_shape(value_info), shapes.get(value_info.name), source, limits)
        context.env[value_info.name] = graph.add_input(value_info.name, TensorType(shape, dtype))

    context.convert_nodes(onnx_graph.node)

    outputs: list[Value] = []
    for value_info in onnx_graph.output:
        try:
            entry = context.value(value_info.name)
        except _Skip:
            continue
        except Refused as refusal:
            context.record(f"graph output ({refusal.reason})", value_info.name)
            continue
        outputs.append(entry)
    if context.issues:
        raise UnsupportedOpError(context.issues, source)
    graph.outputs = _named_outputs(context, outputs, [value.name for value in onnx_graph.output])
    graph.remove_dead_nodes()  # folded-away shape arithmetic, unused branches
    verify(graph)
    return graph


def _named_outputs(context: ImportContext, values: list[Value], names: list[str]) -> list[Value]:
    """Make each graph output carry its ONNX name, so result dicts are keyed as in ONNX."""
    graph = context.graph
    input_ids = {id(value) for value in graph.inputs}
    result: list[Value] = []
    for value, name in zip(values, names):
        repeated = any(value is seen for seen in result)
        if value.name == name or (not repeated and id(value) not in input_ids and graph.rename_value(value, name)):
            result.append(value)
        else:
            # an input output under another name, a value output twice, or a name clash:
            # a copy node carries the output name
            copy = graph.add_node("tensor.reshape", [value], {"shape": tuple(value.shape)}, name=name, output_names=[name])
            result.append(copy.output)
    return result
