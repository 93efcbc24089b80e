"""The IR core: building, verifying, printing/parsing, serializing, cloning and interpreting."""

from __future__ import annotations

import numpy as np
import pytest

from optc.errors import InputError, ShapeError, VerificationError
from optc.ir import Builder, Graph, TensorType, interpret, parse, verify
from optc.ir import serialize


def small_cnn(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    graph = Graph("cnn")
    x = graph.add_input("x", TensorType((1, 3, 8, 8), "float32"))
    w = graph.add_param("w", rng.standard_normal((4, 3, 3, 3)).astype("float32"))
    b = graph.add_param("b", rng.standard_normal(4).astype("float32"))
    y = graph.op("nn.conv", x, w, b, pads=(1, 1, 1, 1), name="conv")
    y = graph.op("math.relu", y)
    y = graph.op("nn.max_pool", y, kernel=(2, 2), strides=(2, 2))
    y = graph.op("tensor.reshape", y, shape=(1, -1))
    fc = graph.add_param("fc", rng.standard_normal((64, 10)).astype("float32"))
    graph.outputs = [graph.op("linalg.matmul", y, fc, name="logits")]
    return graph


def torch_reference(graph: Graph, x: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    params = {v.name: torch.from_numpy(a) for v, a in graph.params.items()}
    y = F.conv2d(torch.from_numpy(x), params["w"], params["b"], padding=1)
    y = F.max_pool2d(torch.relu(y), 2)
    return (y.reshape(1, -1) @ params["fc"]).numpy()


def test_interpreter_matches_torch():
    graph = small_cnn()
    verify(graph)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype("float32")
    out = interpret(graph, {"x": x})["logits"]
    np.testing.assert_allclose(out, torch_reference(graph, x), rtol=1e-4, atol=1e-4)


def test_text_round_trip_keeps_structure_and_numerics():
    graph = small_cnn()
    text = str(graph)
    assert "nn.conv(%x, %w, %b) {pads=(1, 1, 1, 1)} @conv" in text
    params = {v.name: a for v, a in graph.params.items()}
    again = parse(text, params)
    verify(again)
    assert str(again) == text
    x = np.ones((1, 3, 8, 8), "float32")
    np.testing.assert_array_equal(interpret(again, {"x": x})["logits"], interpret(graph, {"x": x})["logits"])


def test_parse_rejects_wrong_declared_type():
    text = "graph g(%x: float32[2,3]) {\n  %y: float32[3,3] = math.relu(%x) @r\n  return %y\n}"
    with pytest.raises(VerificationError, match="inference gives float32\\[2,3\\]"):
        parse(text)


def test_serialize_round_trip(tmp_path):
    graph = small_cnn()
    serialize.save(graph, tmp_path)
    loaded = serialize.load(tmp_path)
    verify(loaded)
    assert str(loaded) == str(graph)
    assert not list(tmp_path.glob("*.pkl"))


def test_serialize_keeps_scalar_params_rank_zero(tmp_path):
    graph = Graph()
    x = graph.add_input("x", TensorType((2,), "float32"))
    graph.outputs = [graph.op("math.mul", x, graph.add_param("scale", np.array(0.5, "float32")))]
    serialize.save(graph, tmp_path)
    loaded = serialize.load(tmp_path)
    assert next(iter(loaded.params)).type == TensorType((), "float32")
    assert next(iter(loaded.params.values())).shape == ()


def test_serialize_refuses_weights_that_disagree_with_the_graph(tmp_path):
    from safetensors.numpy import save_file

    from optc.errors import ArtifactError

    graph = small_cnn()
    serialize.save(graph, tmp_path)
    weights = {v.name: a for v, a in graph.params.items()}
    weights["b"] = np.zeros(5, "float32")
    save_file(weights, str(tmp_path / "graph.safetensors"))
    with pytest.raises(ArtifactError, match="param b is float32\\[5\\]"):
        serialize.load(tmp_path)


def test_clone_is_independent():
    graph = small_cnn()
    copy = graph.clone()
    verify(copy)
    relu = next(node for node in copy.nodes if node.op == "math.relu")
    copy.replace_all_uses(relu.output, relu.inputs[0])
    copy.remove_node(relu)
    verify(copy)
    assert len(copy.nodes) == len(graph.nodes) - 1
    assert any(node.op == "math.relu" for node in graph.nodes)
    verify(graph)


def test_verify_names_the_node_with_a_wrong_type():
    graph = small_cnn()
    relu = next(node for node in graph.nodes if node.op == "math.relu")
    relu.outputs[0].type = TensorType((1, 4, 7, 7), "float32")
    with pytest.raises(VerificationError, match=f"node {relu.name} \\(math.relu\\)"):
        verify(graph)


def test_shape_errors_name_the_node():
    graph = Graph()
    a = graph.add_input("a", TensorType((2, 3), "float32"))
    b = graph.add_input("b", TensorType((4, 5), "float32"))
    with pytest.raises(ShapeError, match="mm.*inner dims differ"):
        graph.op("linalg.matmul", a, b, name="mm")


def test_unknown_attribute_is_rejected():
    graph = Graph()
    x = graph.add_input("x", TensorType((2,), "float32"))
    with pytest.raises(VerificationError, match="has no attribute"):
        graph.op("math.relu", x, alpha=1.0)


def test_symbolic_dims_flow_through_inference():
    graph = Graph()
    x = graph.add_input("x", TensorType(("batch", 16), "float32"))
    w = graph.add_param("w", np.zeros((16, 8), "float32"))
    y = graph.op("linalg.matmul", x, w)
    z = graph.op("tensor.reshape", y, shape=("batch", 2, -1))
    assert y.shape == ("batch", 8) and z.shape == ("batch", 2, 4)


def test_builder_folds_constant_subgraphs():
    builder = Builder()
    x = builder.graph.add_input("x", TensorType((2, 3), "float32"))
    shape = builder.const(np.array([3, 2], "int64"))
    doubled = builder.op("math.mul", shape, builder.const(np.array(2, "int64")))
    assert builder.value_of(doubled).tolist() == [6, 4]
    y = builder.op("math.relu", x)
    assert y.producer is not None and len(builder.graph.nodes) == 1


def test_interpreter_checks_inputs():
    graph = small_cnn()
    with pytest.raises(InputError, match="must have shape \\[1, 3, 8, 8\\]"):
        interpret(graph, {"x": np.zeros((1, 3, 4, 4), "float32")})
    with pytest.raises(InputError, match="must be float32"):
        interpret(graph, {"x": np.zeros((1, 3, 8, 8), "float64")})
    with pytest.raises(InputError, match="missing \\['x'\\]"):
        interpret(graph, {})


def test_flops_count_conv_and_matmul():
    graph = small_cnn()
    conv_flops = 2 * (1 * 4 * 8 * 8) * (3 * 3 * 3) + 4 * 8 * 8
    matmul_flops = 2 * 10 * 64
    relu, pool = 4 * 8 * 8, 4 * 4 * 4 * 4
    assert graph.flops() == conv_flops + matmul_flops + relu + pool


def test_text_form_round_trips_non_finite_attributes():
    graph = Graph()
    x = graph.add_input("x", TensorType((1, 1, 4, 4), "float32"))
    graph.outputs = [graph.op("tensor.pad", x, pads=(0, 0, 1, 1, 0, 0, 1, 1), value=float("-inf"), name="pad")]
    text = str(graph)
    assert "value=-inf" in text
    assert parse(text).nodes[0].attrs["value"] == float("-inf")
    with pytest.raises(VerificationError, match="cannot parse attributes"):
        parse(text.replace("value=-inf", "value=os.system"))


def test_interpreter_binds_symbolic_dims_for_expand_and_reshape():
    graph = Graph()
    x = graph.add_input("x", TensorType(("batch", 3), "float32"))
    token = graph.add_param("token", np.arange(3, dtype="float32").reshape(1, 3))
    expanded = graph.op("tensor.expand", token, shape=("batch", 3))
    joined = graph.op("math.add", x, expanded)
    graph.outputs = [graph.op("tensor.reshape", joined, shape=("batch", 3, 1))]
    out = interpret(graph, {"x": np.zeros((4, 3), "float32")})[graph.outputs[0].name]
    assert out.shape == (4, 3, 1)
    np.testing.assert_array_equal(out[:, :, 0], np.tile(np.arange(3, dtype="float32"), (4, 1)))


def test_rebuild_node_keeps_names_and_readers():
    graph = Graph("g")
    x = graph.add_input("x", TensorType((2, 6), "float32"))
    y = graph.add_input("y", TensorType((3, 4), "float32"))
    flat = graph.op("tensor.reshape", x, shape=(12,), name="flat")
    graph.outputs = [graph.op("math.relu", flat, name="act")]
    rebuilt = graph.rebuild_node(flat.producer, [y], {"shape": (12,)})
    verify(graph)
    assert rebuilt.name == "flat" and rebuilt.outputs[0].name == "flat"
    assert rebuilt.inputs[0] is y and graph.outputs[0].producer.inputs[0] is rebuilt.outputs[0]
    assert [node.name for node in graph.nodes] == ["flat", "act"]
    feeds = {"x": np.zeros((2, 6), np.float32), "y": np.arange(12, dtype=np.float32).reshape(3, 4) - 6}
    np.testing.assert_array_equal(interpret(graph, feeds)["act"], np.maximum(np.arange(12) - 6, 0))
