"""The safe ONNX loader: what it refuses from untrusted files, and that it says why."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.errors import ModelLoadError, OptcError
from optc.frontends.onnx import LoadLimits, from_onnx_model, load_onnx
from optc.ir import interpret

WEIGHT = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def matmul_model(opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y], [numpy_helper.from_array(WEIGHT, "w")]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def save_external(model: onnx.ModelProto, directory: Path, location: str = "weights.bin") -> Path:
    path = directory / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=location, size_threshold=0)
    return path


def set_location(path: Path, location: str, offset: int | None = None, length: int | None = None) -> None:
    """Rewrite the external data reference of the (only) initializer."""
    model = onnx.load(str(path), load_external_data=False)
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    tensor = model.graph.initializer[0]
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    path.write_bytes(model.SerializeToString())


def assert_refused(path: Path, *fragments: str, **kwargs) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as caught:
        load_onnx(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return caught.value


# ---- what loads ------------------------------------------------------------------------------------------

def test_external_data_inside_the_directory_loads(tmp_path):
    path = save_external(matmul_model(), tmp_path)
    graph = load_onnx(path)
    x = np.ones((2, 3), dtype=np.float32)
    np.testing.assert_allclose(interpret(graph, {"x": x})["y"], x @ WEIGHT, rtol=1e-6)


def test_external_data_in_a_subdirectory_loads(tmp_path):
    (tmp_path / "data").mkdir()
    path = save_external(matmul_model(), tmp_path, location="data/w.bin")
    graph = load_onnx(path)
    assert [value.name for value in graph.inputs] == ["x"]


def test_old_opset_is_converted(tmp_path):
    # opset 6 Add with the legacy broadcast attribute; the version converter rewrites it
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    bias = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], dtype=np.float32), "b")
    node = helper.make_node("Add", ["a", "b"], ["y"], broadcast=1)
    declared_bias = helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])  # IR 3 lists initializers as inputs
    model = helper.make_model(
        helper.make_graph([node], "g", [a, declared_bias], [y], [bias]), opset_imports=[helper.make_opsetid("", 6)]
    )
    model.ir_version = 3
    path = tmp_path / "old.onnx"
    path.write_bytes(model.SerializeToString())
    graph = load_onnx(path)
    out = interpret(graph, {"a": np.zeros((2, 3), dtype=np.float32)})["y"]
    np.testing.assert_array_equal(out, np.tile([1.0, 2.0, 3.0], (2, 1)))


# ---- links ------------------------------------------------------------------------------------------------

def test_refuses_symlinked_model(tmp_path):
    real = tmp_path / "real.onnx"
    real.write_bytes(matmul_model().SerializeToString())
    link = tmp_path / "link.onnx"
    link.symlink_to(real)
    assert_refused(link, "symlink", "link.onnx")


def test_refuses_hard_linked_model(tmp_path):
    real = tmp_path / "real.onnx"
    real.write_bytes(matmul_model().SerializeToString())
    os.link(real, tmp_path / "other.onnx")
    assert_refused(real, "hard link")


def test_refuses_symlinked_external_data(tmp_path):
    path = save_external(matmul_model(), tmp_path, location="real.bin")
    (tmp_path / "link.bin").symlink_to(tmp_path / "real.bin")
    set_location(path, "link.bin")
    assert_refused(path, "symlink", "external data")


def test_refuses_hard_linked_external_data(tmp_path):
    path = save_external(matmul_model(), tmp_path)
    os.link(tmp_path / "weights.bin", tmp_path / "copy.bin")
    assert_refused(path, "hard link")


# ---- external data outside the directory or out of range -------------------------------------------------------

def test_refuses_external_data_escaping_with_dotdot(tmp_path):
    inner = tmp_path / "model"
    inner.mkdir()
    path = save_external(matmul_model(), inner)
    os.replace(inner / "weights.bin", tmp_path / "weights.bin")
    set_location(path, "../weights.bin")
    assert_refused(path, "'..'", "weights.bin")


def test_refuses_absolute_external_path(tmp_path):
    path = save_external(matmul_model(), tmp_path)
    set_location(path, str(tmp_path / "weights.bin"))
    assert_refused(path, "absolute")


def test_refuses_external_data_through_a_symlinked_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    inner = tmp_path / "model"
    inner.mkdir()
    path = save_external(matmul_model(), inner)
    os.replace(inner / "weights.bin", outside / "weights.bin")
    (inner / "data").symlink_to(outside, target_is_directory=True)
    set_location(path, "data/weights.bin")
    assert_refused(path, "outside the model's directory")


def test_refuses_truncated_external_data(tmp_path):
    path = save_external(matmul_model(), tmp_path)
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[:20])
    set_location(path, "weights.bin", offset=0, length=WEIGHT.nbytes)
    assert_refused(path, "truncated")


def test_refuses_external_range_past_the_end(tmp_path):
    path = save_external(matmul_model(), tmp_path)
    set_location(path, "weights.bin", offset=8, length=WEIGHT.nbytes)
    assert_refused(path, "truncated")


def test_refuses_external_length_that_does_not_fit_the_shape(tmp_path):
    path = save_external(matmul_model(), tmp_path)
    with open(tmp_path / "weights.bin", "ab") as handle:
        handle.write(b"\0" * 16)
    set_location(path, "weights.bin", offset=0, length=WEIGHT.nbytes + 16)
    assert_refused(path, "needs 48")


def test_refuses_missing_external_file(tmp_path):
    path = save_external(matmul_model(), tmp_path)
    (tmp_path / "weights.bin").unlink()
    assert_refused(path, "cannot read")


# ---- malformed files --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "content", [b"", b"\x00\x01garbage\xff" * 10, b"PK\x03\x04 this is a zip, not a model", b"\x0a\xff\xff\xff\xff\x0f"]
)
def test_refuses_garbage(tmp_path, content):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    error = assert_refused(path, "garbage.onnx")
    assert "ONNX model" in str(error)


def test_refuses_missing_file(tmp_path):
    assert_refused(tmp_path / "absent.onnx", "cannot read", "check the path")


def test_refuses_a_directory(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    assert_refused(tmp_path / "dir.onnx", "not a regular file")


def test_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.onnx")
    assert_refused(tmp_path / "pipe.onnx", "not a regular file")


def test_refuses_model_failing_full_check(tmp_path):
    # Add of float and int64: the structural check passes, full_check's type inference does not
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model)  # without full_check it passes
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(path, "ONNX checker", "full_check", "bad.onnx")


def test_refuses_undefined_value(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Add", ["x", "nowhere"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = tmp_path / "undefined.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(path, "ONNX checker")


# ---- bounds -------------------------------------------------------------------------------------------------------

def test_refuses_oversized_input_dim(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1 << 40])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1 << 40])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    path = tmp_path / "huge.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(path, "dim 1099511627776", "LoadLimits.max_dim")


def test_refuses_initializer_over_element_limit(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(matmul_model().SerializeToString())
    assert_refused(path, "12 elements", "max_elements", max_elements=10)


def test_refuses_initializer_with_lying_dims_before_reading_it(tmp_path):
    model = matmul_model()
    tensor = model.graph.initializer[0]
    tensor.dims[:] = [1 << 20, 1 << 20]  # 2**40 elements declared, 48 bytes present
    path = tmp_path / "liar.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(path, "elements, over the limit")


def test_refuses_file_over_size_limit(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(matmul_model().SerializeToString())
    assert_refused(path, "over the limit", "max_file_bytes", limits=LoadLimits(max_file_bytes=16))


def test_refuses_too_many_nodes(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(matmul_model().SerializeToString())
    limits = LoadLimits(max_nodes=0)
    assert_refused(path, "more than 0 nodes", limits=limits)


def _nested_if(depth: int, prefix: str = "") -> onnx.GraphProto:
    """A graph whose If nests ``depth`` levels of subgraphs (names unique, as SSA requires)."""
    output_name = f"{prefix}y" if prefix else "y"
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1])
    if depth == 0:
        constant = helper.make_node("Constant", [], [output_name], value=numpy_helper.from_array(np.ones(1, np.float32)))
        return helper.make_graph([constant], f"{prefix}leaf", [], [out])
    condition = helper.make_node("Constant", [], [f"{prefix}c"], value=numpy_helper.from_array(np.array(True)))
    node = helper.make_node(
        "If", [f"{prefix}c"], [output_name],
        then_branch=_nested_if(depth - 1, f"{prefix}t{depth}_"), else_branch=_nested_if(depth - 1, f"{prefix}e{depth}_"),
    )
    return helper.make_graph([condition, node], f"{prefix}level", [], [out])


def test_refuses_deep_subgraph_nesting(tmp_path):
    model = helper.make_model(_nested_if(4), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "nested.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(path, "nest", "max_depth", limits=LoadLimits(max_depth=2))
    # within the default bound the constant condition is inlined
    graph = load_onnx(path)
    assert interpret(graph, {})["y"].tolist() == [1.0]


def test_refuses_unknown_domain(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    node = helper.make_node("FusedGelu", ["x"], ["y"], domain="com.example")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    path = tmp_path / "custom.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(path, "com.example", "FusedGelu", "standard ONNX ops")


def test_refuses_opset_newer_than_onnx_knows(tmp_path):
    model = matmul_model(opset=17)
    model.opset_import[0].version = 999
    path = tmp_path / "future.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(path, "opset 999")


# ---- in-memory models -----------------------------------------------------------------------------------------------

def test_from_onnx_model_refuses_external_references(tmp_path):
    path = save_external(matmul_model(), tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ModelLoadError, match="load_onnx"):
        from_onnx_model(model)


def test_from_onnx_model_refuses_non_models():
    with pytest.raises(ModelLoadError, match="ModelProto"):
        from_onnx_model(b"not a proto")  # type: ignore[arg-type]


def test_every_refusal_is_an_optc_error(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(OptcError):
        load_onnx(path)
