"""Safe loading of ONNX files that come from strangers.

``load_model_proto`` reads a model file and its external data without trusting either:

- the model file and every external data file must be regular files, not symlinks, not hard
  links, and inside the model's directory (after resolving every symlinked directory);
- external data ranges must lie inside their file and match the tensor's declared size;
- sizes, dims, element counts, node counts, subgraph nesting and opsets are bounded
  (``LoadLimits``) before any of it reaches the ONNX checker or optc;
- the ONNX checker runs with ``full_check=True``; its failure is an error, not a warning;
- opsets older than ``LoadLimits.min_opset`` are converted with ONNX's version converter.

Every failure is a ``ModelLoadError`` naming the file and what to do. ``check_model_proto`` runs
the same checks (minus the file system ones) on a ``ModelProto`` that is already in memory.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from ...errors import ModelLoadError

logger = logging.getLogger(__name__)

# Domains whose opsets a model may import. Ops of the ML and training domains load but have no
# converter, so they end up in an UnsupportedOpError that names them instead of a load failure.
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
KNOWN_DOMAINS = STANDARD_DOMAINS | {"ai.onnx.ml", "ai.onnx.preview.training"}

# Protobuf refuses to serialize messages of 2 GiB or more; the checker needs a serialized model.
PROTOBUF_LIMIT = (1 << 31) - 1


@dataclass(frozen=True)
class LoadLimits:
    """Bounds applied to an untrusted model before it is checked or converted."""

    max_file_bytes: int = PROTOBUF_LIMIT  # the .onnx file itself
    max_external_bytes: int = 1 << 36  # all external data together (64 GiB)
    max_dim: int = 1 << 31  # any single dim of a tensor or a declared shape
    max_elements: int = 1 << 31  # elements of any initializer, constant or graph input
    max_nodes: int = 1_000_000  # nodes over the main graph and every subgraph
    max_depth: int = 8  # nesting of subgraphs (If/Loop/Scan bodies)
    min_opset: int = 7  # older default-domain opsets are converted up to this one
    max_opset: int = onnx.defs.onnx_opset_version()


DEFAULT_LIMITS = LoadLimits()


def load_model_proto(path: str | os.PathLike[str], limits: LoadLimits = DEFAULT_LIMITS) -> onnx.ModelProto:
    """Read, bound, check and (for old opsets) convert the ONNX model at ``path``.

    External data is read only from regular files inside the model's directory. The returned
    model holds all tensor data inline.
    """
    path = os.fspath(path)
    source = os.path.basename(path) or path
    data = _read_regular_file(path, limits.max_file_bytes, what="model file", source=source)
    model = parse_model_bytes(data, source)
    check_bounds(model, limits, source)
    _load_external_data(model, os.path.dirname(os.path.abspath(path)), limits, source)
    return _check_and_convert(model, limits, source)


def check_model_proto(
    model: onnx.ModelProto, limits: LoadLimits = DEFAULT_LIMITS, source: str = "model"
) -> onnx.ModelProto:
    """Bound, check and convert an in-memory model; it must not reference external data.

    Returns a new model when the opset was converted, otherwise ``model`` itself.
    """
    if not isinstance(model, onnx.ModelProto):
        raise ModelLoadError(f"{source}: expected an onnx.ModelProto, got {type(model).__name__}")
    _require_graph(model, source)
    check_bounds(model, limits, source)
    for tensor, _ in _iter_tensors(model):
        if _is_external(tensor):
            raise ModelLoadError(
                f"{source}: tensor '{tensor.name}' keeps its data in an external file; load the model "
                "from its path with optc.frontends.onnx.load_onnx, which reads external data safely"
            )
    return _check_and_convert(model, limits, source)


def parse_model_bytes(data: bytes, source: str) -> onnx.ModelProto:
    """Parse serialized ModelProto bytes; garbage becomes a ModelLoadError."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelLoadError(
            f"{source} is not a readable ONNX model ({_one_line(error) or 'protobuf decode error'}); "
            "check that the file is a complete .onnx export and not truncated or another format"
        ) from None
    _require_graph(model, source)
    return model


def _require_graph(model: onnx.ModelProto, source: str) -> None:
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(
            f"{source} is not an ONNX model (no ir_version or no graph); "
            "check that the file is a complete .onnx export and not another format"
        )


# ---- file access ---------------------------------------------------------------------------------

def _open_checked(path: str, what: str, source: str) -> tuple[int, os.stat_result]:
    """Open ``path`` read-only without following a final symlink; refuse links and non-files."""
    try:
        link_stat = os.lstat(path)
    except OSError as error:
        raise ModelLoadError(f"{source}: cannot read {what} '{path}': {error.strerror}; check the path") from None
    if stat.S_ISLNK(link_stat.st_mode):
        raise ModelLoadError(
            f"{source}: {what} '{path}' is a symlink, which optc refuses for untrusted models; "
            "copy the real file into place"
        )
    if not stat.S_ISREG(link_stat.st_mode):
        raise ModelLoadError(f"{source}: {what} '{path}' is not a regular file")
    # O_NONBLOCK: a FIFO swapped in after the lstat must not block the open
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        raise ModelLoadError(f"{source}: cannot open {what} '{path}': {error.strerror}; check the path") from None
    file_stat = os.fstat(descriptor)
    problem = None
    if not stat.S_ISREG(file_stat.st_mode):
        problem = "is not a regular file"
    elif file_stat.st_nlink > 1:
        problem = f"has {file_stat.st_nlink} hard links, which optc refuses for untrusted models; copy the file"
    elif (file_stat.st_dev, file_stat.st_ino) != (link_stat.st_dev, link_stat.st_ino):
        problem = "changed while it was being opened"
    if problem:
        os.close(descriptor)
        raise ModelLoadError(f"{source}: {what} '{path}' {problem}")
    return descriptor, file_stat


def _read_exactly(descriptor: int, length: int, offset: int) -> bytes:
    chunks = []
    remaining = length
    while remaining > 0:
        chunk = os.pread(descriptor, min(remaining, 1 << 26), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_regular_file(path: str, max_bytes: int, what: str, source: str) -> bytes:
    descriptor, file_stat = _open_checked(path, what, source)
    try:
        if file_stat.st_size > max_bytes:
            raise ModelLoadError(
                f"{source}: {what} is {file_stat.st_size} bytes, over the limit of {max_bytes}; "
                "raise LoadLimits.max_file_bytes if the model is trusted"
            )
        data = _read_exactly(descriptor, file_stat.st_size, 0)
    finally:
        os.close(descriptor)
    if len(data) != file_stat.st_size:
        raise ModelLoadError(f"{source}: {what} '{path}' shrank while it was read; try again")
    return data


# ---- structure walk and bounds ---------------------------------------------------------------------

def _iter_graphs(model: onnx.ModelProto, max_depth: int, source: str) -> Iterator[tuple[onnx.GraphProto, int]]:
    """Every graph of the model (main, subgraphs, training graphs) with its nesting depth."""
    stack: list[tuple[onnx.GraphProto, int]] = [(model.graph, 0)]
    for info in model.training_info:
        stack.append((info.initialization, 0))
        stack.append((info.algorithm, 0))
    while stack:
        graph, depth = stack.pop()
        if depth > max_depth:
            raise ModelLoadError(
                f"{source}: subgraphs nest {depth} deep, over the limit of {max_depth}; "
                "raise LoadLimits.max_depth if the model is trusted"
            )
        yield graph, depth
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    stack.append((attribute.g, depth + 1))
                stack.extend((subgraph, depth + 1) for subgraph in attribute.graphs)


def _iter_nodes(model: onnx.ModelProto, max_depth: int, source: str) -> Iterator[onnx.NodeProto]:
    for graph, _ in _iter_graphs(model, max_depth, source):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _iter_tensors(model: onnx.ModelProto, max_depth: int = 1 << 30, source: str = "model") -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every TensorProto with a description of where it sits."""
    for graph, _ in _iter_graphs(model, max_depth, source):
        for tensor in graph.initializer:
            yield tensor, f"initializer '{tensor.name}'"
        for sparse in graph.sparse_initializer:
            yield sparse.values, f"sparse initializer '{sparse.values.name}'"
            yield sparse.indices, f"sparse initializer '{sparse.values.name}' indices"
    for node in _iter_nodes(model, max_depth, source):
        for attribute in node.attribute:
            where = f"attribute '{attribute.name}' of node '{node.name or node.op_type}'"
            if attribute.HasField("t"):
                yield attribute.t, where
            for tensor in attribute.tensors:
                yield tensor, where
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values, where
            for sparse in attribute.sparse_tensors:
                yield sparse.values, where


def _check_dims(dims: list[int], limits: LoadLimits, where: str, source: str) -> None:
    count = 1
    for dim in dims:
        if dim < 0 or dim > limits.max_dim:
            raise ModelLoadError(
                f"{source}: {where} has dim {dim} outside [0, {limits.max_dim}]; "
                "the model is malformed or needs LoadLimits.max_dim raised"
            )
        count *= dim
    if count > limits.max_elements:
        raise ModelLoadError(
            f"{source}: {where} has {count} elements, over the limit of {limits.max_elements}; "
            "raise LoadLimits.max_elements if the model is trusted"
        )


def _check_type(value_type: onnx.TypeProto, limits: LoadLimits, where: str, source: str, depth: int = 0) -> None:
    if depth > 16:
        raise ModelLoadError(f"{source}: {where} has a type nested more than 16 deep")
    kind = value_type.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tensor_type = getattr(value_type, kind)
        if tensor_type.HasField("shape"):
            dims = [dim.dim_value for dim in tensor_type.shape.dim if dim.HasField("dim_value")]
            _check_dims(dims, limits, where, source)
    elif kind == "sequence_type":
        _check_type(value_type.sequence_type.elem_type, limits, where, source, depth + 1)
    elif kind == "optional_type":
        _check_type(value_type.optional_type.elem_type, limits, where, source, depth + 1)
    elif kind == "map_type":
        _check_type(value_type.map_type.value_type, limits, where, source, depth + 1)


def check_bounds(model: onnx.ModelProto, limits: LoadLimits, source: str) -> None:
    """Refuse models over any bound of ``limits`` or importing opsets optc cannot handle."""
    if model.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(
            f"{source} has IR version {model.ir_version}, newer than this onnx package supports "
            f"({onnx.IR_VERSION}); upgrade onnx or re-export the model for an older IR version"
        )
    for opset in model.opset_import:
        if opset.domain not in KNOWN_DOMAINS:
            users = sorted({node.op_type for node in _iter_nodes(model, limits.max_depth, source) if node.domain == opset.domain})
            raise ModelLoadError(
                f"{source} imports opset domain '{opset.domain}' (ops: {', '.join(users) or 'none'}), which optc "
                "does not support; export the model with standard ONNX ops only (for ONNX Runtime "
                "optimized models, export before optimizing)"
            )
        if opset.domain in STANDARD_DOMAINS and not 1 <= opset.version <= limits.max_opset:
            raise ModelLoadError(
                f"{source} uses ONNX opset {opset.version}; optc supports opsets 1..{limits.max_opset} "
                "(re-export with a supported opset, or upgrade onnx)"
            )
    node_count = 0
    for graph, _ in _iter_graphs(model, limits.max_depth, source):
        node_count += len(graph.node)
        if node_count > limits.max_nodes:
            raise ModelLoadError(
                f"{source} has more than {limits.max_nodes} nodes; raise LoadLimits.max_nodes if the model is trusted"
            )
        for value_info in list(graph.input) + list(graph.output) + list(graph.value_info):
            _check_type(value_info.type, limits, f"value '{value_info.name}'", source)
    for tensor, where in _iter_tensors(model, limits.max_depth, source):
        _check_dims(list(tensor.dims), limits, where, source)


# ---- external data ----------------------------------------------------------------------------------

def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_fields(tensor: onnx.TensorProto, source: str) -> tuple[str, int, int | None]:
    fields = {entry.key: entry.value for entry in tensor.external_data}
    location = fields.get("location", "")
    if not location:
        raise ModelLoadError(f"{source}: tensor '{tensor.name}' is external but names no location; the model is malformed")
    try:
        offset = int(fields.get("offset", "0") or "0")
        length = int(fields["length"]) if fields.get("length") else None
    except ValueError:
        raise ModelLoadError(f"{source}: tensor '{tensor.name}' has a non-integer external data offset or length") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelLoadError(f"{source}: tensor '{tensor.name}' has a negative external data offset or length")
    return location, offset, length


def _resolve_inside(model_dir: str, location: str, tensor_name: str, source: str) -> str:
    """The path of an external data file, refusing anything that leaves the model's directory."""
    unsafe = (
        os.path.isabs(location)
        or location.startswith(("/", "\\"))
        or os.path.splitdrive(location)[0]
        or "\x00" in location
        or any(part == ".." for part in location.replace("\\", "/").split("/"))
    )
    if unsafe:
        raise ModelLoadError(
            f"{source}: external data '{location}' of tensor '{tensor_name}' is not a plain relative path "
            "inside the model's directory; optc refuses absolute paths and '..' (move the data next to the model)"
        )
    path = os.path.join(model_dir, location)
    real_dir = os.path.realpath(model_dir)
    real_path = os.path.realpath(path)
    if os.path.commonpath([real_dir, real_path]) != real_dir:
        raise ModelLoadError(
            f"{source}: external data '{location}' of tensor '{tensor_name}' resolves outside the model's "
            "directory (through a symlinked directory); move the data next to the model"
        )
    return path


# Packed sub-byte element types: (count * bits + 7) // 8 bytes.
_PACKED_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(onnx.TensorProto, name)
}


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    count = int(np.prod(list(tensor.dims), dtype=np.int64)) if tensor.dims else 1
    bits = _PACKED_BITS.get(tensor.data_type)
    if bits is not None:
        return (count * bits + 7) // 8
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    return count * itemsize


def _load_external_data(model: onnx.ModelProto, model_dir: str, limits: LoadLimits, source: str) -> None:
    total = 0
    for tensor, where in _iter_tensors(model, limits.max_depth, source):
        if not _is_external(tensor):
            continue
        location, offset, length = _external_fields(tensor, source)
        path = _resolve_inside(model_dir, location, tensor.name, source)
        descriptor, file_stat = _open_checked(path, f"external data of {where}", source)
        try:
            size = file_stat.st_size
            length = size - offset if length is None else length
            if offset + length > size or length < 0:
                raise ModelLoadError(
                    f"{source}: external data of {where} asks for bytes {offset}..{offset + length} of "
                    f"'{location}', which has {size}; the data file is truncated or does not belong to this model"
                )
            expected = _expected_bytes(tensor)
            if expected is not None and expected != length:
                raise ModelLoadError(
                    f"{source}: external data of {where} is {length} bytes but its shape {list(tensor.dims)} "
                    f"needs {expected}; the data file does not belong to this model"
                )
            total += length
            if total > limits.max_external_bytes:
                raise ModelLoadError(
                    f"{source}: external data exceeds {limits.max_external_bytes} bytes; "
                    "raise LoadLimits.max_external_bytes if the model is trusted"
                )
            raw = _read_exactly(descriptor, length, offset)
        finally:
            os.close(descriptor)
        if len(raw) != length:
            raise ModelLoadError(f"{source}: external data file '{location}' shrank while it was read; try again")
        tensor.raw_data = raw
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


# ---- checker and opset conversion ------------------------------------------------------------------------

def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version (1 when it imports none, as ONNX assumes)."""
    for opset in model.opset_import:
        if opset.domain in STANDARD_DOMAINS:
            return int(opset.version)
    return 1


def _checker_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model small enough to serialize: large initializers become graph inputs of the same type.

    Only used for models over 2 GiB, which protobuf cannot serialize for the checker; the moved
    tensors were already checked for shape and byte size while their data was read.
    """
    view = onnx.ModelProto()
    view.CopyFrom(model)
    graph = view.graph
    kept = []
    declared = {value.name for value in graph.input}
    for tensor in graph.initializer:
        if len(tensor.raw_data) < (1 << 20):
            kept.append(tensor)
            continue
        if tensor.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return view


def _check_and_convert(model: onnx.ModelProto, limits: LoadLimits, source: str) -> onnx.ModelProto:
    try:
        checked = model if model.ByteSize() < PROTOBUF_LIMIT else _checker_view(model)
        onnx.checker.check_model(checked, full_check=True)
    except Exception as error:  # the checker raises ValidationError, InferenceError, ValueError...
        raise ModelLoadError(
            f"{source} fails the ONNX checker (full_check): {_one_line(error)}; "
            "re-export the model or repair it so that onnx.checker.check_model(model, full_check=True) passes"
        ) from None
    version = default_opset(model)
    if version < limits.min_opset:
        logger.info("%s: converting ONNX opset %d to %d", source, version, limits.min_opset)
        try:
            model = onnx.version_converter.convert_version(model, limits.min_opset)
        except Exception as error:  # the converter raises RuntimeError/ConvertError on unsupported adapters
            raise ModelLoadError(
                f"{source} uses opset {version}, and ONNX cannot convert it to opset {limits.min_opset}: "
                f"{_one_line(error)}; re-export the model with opset {limits.min_opset} or newer"
            ) from None
    return model


def limits_with(limits: LoadLimits | None, **overrides: int | None) -> LoadLimits:
    """``limits`` (or the defaults) with the given fields replaced where not None."""
    chosen = {key: value for key, value in overrides.items() if value is not None}
    return replace(limits or DEFAULT_LIMITS, **chosen)
