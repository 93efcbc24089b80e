"""Exporting optc graphs back out: to a trainable torch.fx GraphModule and to ONNX (opset 17).

Every registry op has an entry in both tables and a numerical case here, checked against the
reference interpreter; the zoo models (tiny) go through both exporters whole, train a step in
torch, and come back into optc through ``capture`` and ``load_onnx`` with the same outputs.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import onnx
import pytest
import torch

from optc.errors import OptcError
from optc.frontends.onnx import from_onnx_model, load_onnx
from optc.frontends.onnx.export import ONNX_EMITTERS, missing_onnx_emitters, to_onnx
from optc.frontends.torch import capture
from optc.frontends.torch.export import TORCH_FUNCTIONS, default_trainable, missing_torch_functions, to_torch, with_module_params
from optc.ir import Graph, TensorType, interpret, sample_inputs, verify
from optc.ir.ops import all_ops
from optc.passes import PassManager
from optc.tools import zoo

ort = pytest.importorskip("onnxruntime")

RTOL, ATOL = 1e-4, 1e-5


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype("float32")


def positive(*shape: int) -> np.ndarray:
    return np.abs(randn(*shape)) + 0.1


def ints(*shape: int, low: int = -5, high: int = 6) -> np.ndarray:
    return np.random.default_rng(sum(shape)).integers(low, high, shape).astype("int64")


def mask(*shape: int) -> np.ndarray:
    return np.random.default_rng(7).random(shape) > 0.4


X = randn(2, 3, 4)
IMAGE = randn(2, 4, 7, 8)
SEQ = randn(2, 5, 8)
Q, K, V = randn(1, 2, 5, 4, seed=1), randn(1, 2, 6, 4, seed=2), randn(1, 2, 6, 3, seed=3)
SQUARE = [randn(1, 2, 5, 4, seed=s) for s in (4, 5, 6)]
ATTENTION_MASK = mask(1, 1, 5, 6)
ATTENTION_MASK[..., 0, :] = False  # one query attends to nothing: zeros, as torch SDPA gives
WITH_NAN = np.where(X > 1.0, np.nan, X).astype("float32")

# (op, inputs, attrs): one or more numerical cases per registry op
CASES: list[tuple[str, list[np.ndarray], dict]] = [
    *[(f"math.{name}", [X], {}) for name in (
        "exp", "sin", "cos", "tanh", "erf", "sigmoid", "floor", "ceil", "round", "softplus", "softsign", "silu",
        "hard_swish", "neg", "abs", "sign", "relu", "hard_sigmoid", "leaky_relu", "elu", "selu", "shrink")],
    *[(f"math.{name}", [positive(2, 3, 4)], {}) for name in ("log", "sqrt", "rsqrt", "reciprocal")],
    ("math.round", [np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4], "float32")], {}),
    ("math.gelu", [X], {"approximate": "none"}),
    ("math.gelu", [X], {"approximate": "tanh"}),
    ("math.hard_sigmoid", [X], {"alpha": 0.3, "beta": 0.4}),
    ("math.leaky_relu", [X], {"alpha": 0.2}),
    ("math.elu", [X], {"alpha": 0.5}),
    ("math.shrink", [X], {"lambd": 0.3, "bias": 0.1}),
    ("math.relu", [ints(2, 3)], {}),
    ("math.clip", [X], {"min": -0.5, "max": 0.7}),
    ("math.clip", [X], {"max": 0.2}),
    ("math.clip", [ints(3, 4)], {"min": -1.5, "max": 2.5}),
    ("math.not", [mask(2, 3)], {}),
    ("math.not", [np.array([0.0, 1.0, -2.0], "float32")], {}),
    ("math.isnan", [WITH_NAN], {}),
    ("math.cast", [X * 3], {"dtype": "int32"}),
    ("math.cast", [ints(2, 3)], {"dtype": "float32"}),
    ("math.cast", [X], {"dtype": "bool"}),
    *[(f"math.{name}", [X, randn(3, 1)], {}) for name in (
        "add", "sub", "mul", "div", "maximum", "minimum", "equal", "less", "less_equal", "greater", "greater_equal")],
    ("math.div", [ints(3, 4), ints(4, low=1)], {}),
    ("math.div", [ints(4), -ints(4, low=1)], {}),
    ("math.pow", [positive(2, 3), randn(2, 3)], {}),
    ("math.mod", [X * 4, positive(3, 1)], {}),
    ("math.mod", [X * 4, -positive(3, 1)], {"fmod": True}),
    ("math.mod", [ints(3, 4), ints(4, low=1)], {}),
    ("math.mod", [ints(3, 4), -ints(4, low=1)], {"fmod": True}),
    *[(f"math.{name}", [mask(2, 3), mask(3)], {}) for name in ("and", "or", "xor")],
    ("math.and", [np.array([0.0, 1.0, 2.0], "float32"), np.array([1.0, 1.0, 0.0], "float32")], {}),
    ("math.prelu", [IMAGE, randn(4, 1, 1)], {}),
    ("math.where", [mask(2, 3, 4), X, randn(3, 4)], {}),
    ("linalg.matmul", [X, randn(4, 5)], {}),
    ("linalg.matmul", [randn(4), randn(3, 4, 2)], {}),
    ("linalg.matmul", [X, randn(4)], {}),
    *[(f"reduce.{name}", [X], {"axes": (1,)}) for name in (
        "sum", "mean", "max", "min", "prod", "sum_square", "l1", "l2", "log_sum_exp")],
    ("reduce.sum", [X], {"axes": None, "keepdims": False}),
    ("reduce.mean", [X], {"axes": (0, -1), "keepdims": False}),
    ("reduce.prod", [X], {"axes": (0, 2)}),
    ("reduce.max", [X], {"axes": ()}),
    ("reduce.sum", [ints(3, 4)], {"axes": (0,)}),
    ("reduce.argmax", [X], {"axis": -1, "keepdims": False}),
    ("reduce.argmin", [X], {"axis": 1}),
    ("tensor.reshape", [X], {"shape": (6, -1)}),
    ("tensor.transpose", [X], {"perm": (2, 0, 1)}),
    ("tensor.concat", [X, randn(2, 2, 4)], {"axis": 1}),
    ("tensor.split", [X], {"axis": 1, "sizes": (1, 2)}),
    ("tensor.slice", [X], {"starts": (1, 0), "ends": (100, -1), "axes": (1, 2)}),
    ("tensor.slice", [X], {"starts": (-1,), "ends": (-(2**63),), "axes": (2,), "steps": (-2,)}),
    ("tensor.slice", [X], {"starts": (0, 3), "ends": (2, 0), "steps": (1, -1)}),
    ("tensor.gather", [randn(5, 3), np.array([[0, -1], [4, 2]], "int64")], {}),
    ("tensor.gather", [X, np.array([2, 0, -1], "int32")], {"axis": 2}),
    ("tensor.expand", [randn(3, 1)], {"shape": (2, 3, 4)}),
    ("tensor.expand", [X], {"shape": (3, 1)}),
    ("tensor.tile", [X], {"repeats": (2, 1, 3)}),
    ("tensor.pad", [X], {"pads": (0, 1, 2, 0, 2, 1), "value": 1.5}),
    ("tensor.pad", [X], {"pads": (0, -1, 1, 0, 1, -2)}),
    ("tensor.pad", [IMAGE], {"pads": (0, 0, 2, 1, 0, 0, 1, 3), "mode": "reflect"}),
    ("tensor.pad", [X], {"pads": (0, 0, 2, 0, 1, 1), "mode": "edge"}),
    ("nn.conv", [IMAGE, randn(6, 2, 3, 3), randn(6)], {"groups": 2, "pads": (1, 0, 2, 1), "strides": (2, 1), "activation": "relu"}),
    ("nn.conv", [randn(2, 3, 11), randn(4, 3, 3)], {"dilations": (2,), "pads": (1, 1), "activation": "gelu_tanh"}),
    ("nn.conv", [randn(1, 2, 5, 6, 7), randn(3, 2, 2, 3, 2), randn(3)], {"strides": (1, 2, 1), "activation": "hard_swish"}),
    ("nn.conv_transpose", [IMAGE, randn(4, 3, 3, 3), randn(6)],
     {"groups": 2, "strides": (2, 2), "pads": (1, 0, 1, 2), "output_padding": (1, 0)}),
    ("nn.conv_transpose", [randn(2, 3, 6), randn(3, 2, 3)], {"dilations": (2,), "strides": (3,), "output_padding": (2,)}),
    ("nn.max_pool", [IMAGE], {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ("nn.max_pool", [IMAGE], {"kernel": (3, 2), "strides": (2, 2), "pads": (1, 0, 1, 1), "ceil_mode": True}),
    ("nn.max_pool", [IMAGE], {"kernel": (2, 2), "strides": (2, 3), "dilations": (2, 1), "pads": (1, 1, 1, 1),
                              "ceil_mode": True}),
    ("nn.max_pool", [randn(2, 3, 10)], {"kernel": (3,), "strides": (2,), "pads": (2, 1), "ceil_mode": True}),
    ("nn.avg_pool", [IMAGE], {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}),
    ("nn.avg_pool", [IMAGE], {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "count_include_pad": True}),
    ("nn.avg_pool", [IMAGE], {"kernel": (2, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "ceil_mode": True}),
    ("nn.avg_pool", [IMAGE], {"kernel": (2, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "ceil_mode": True,
                              "count_include_pad": True}),
    ("nn.avg_pool", [IMAGE], {"kernel": (2, 2), "strides": (1, 2), "dilations": (2, 2), "pads": (1, 0, 0, 1)}),
    ("nn.avg_pool", [randn(1, 2, 5)], {"kernel": (2,), "strides": (2,), "pads": (1, 1), "ceil_mode": True,
                                       "count_include_pad": True}),
    ("nn.batch_norm", [IMAGE, randn(4), randn(4), randn(4), positive(4)], {"epsilon": 1e-3}),
    ("nn.instance_norm", [IMAGE, randn(4), randn(4)], {}),
    ("nn.group_norm", [IMAGE, randn(4), randn(4)], {"num_groups": 2}),
    ("nn.layer_norm", [SEQ, randn(8), randn(8)], {}),
    ("nn.layer_norm", [SEQ, randn(5, 8)], {"axis": 1, "epsilon": 1e-3}),
    ("nn.rms_norm", [SEQ, randn(8)], {}),
    ("nn.lrn", [IMAGE], {"size": 3, "alpha": 1e-2, "bias": 2.0}),
    ("nn.lrn", [IMAGE], {"size": 4, "alpha": 1e-2, "beta": 0.5}),
    ("nn.softmax", [X], {"axis": 1}),
    ("nn.log_softmax", [X], {}),
    ("nn.linear", [SEQ, randn(8, 3), randn(3)], {}),
    ("nn.linear", [SEQ, randn(8, 3)], {"activation": "gelu"}),
    ("nn.linear", [randn(4, 8), randn(8, 3), randn(3)], {"activation": "relu6"}),
    ("nn.attention", [Q, K, V], {}),
    ("nn.attention", [Q, K, V, ATTENTION_MASK], {"scale": 0.3}),
    ("nn.attention", [Q, K, V, np.where(ATTENTION_MASK, 0.0, -np.inf).astype("float32")], {}),
    ("nn.attention", SQUARE, {"causal": True}),
    ("nn.attention", [*SQUARE, mask(1, 2, 5, 5)], {"causal": True}),
    # cache.update: a KV-cache append at a runtime position (the window inside and at the end)
    ("cache.update", [randn(1, 2, 6, 4), randn(1, 2, 1, 4), np.array([3], "int64")], {"axis": 2}),
    ("cache.update", [randn(1, 2, 6, 4), randn(1, 2, 2, 4), np.array(4, "int32")], {"axis": -2}),
    # quant.*: integer semantics, so the comparisons are exact
    ("quant.quantize", [X * 3, np.array(0.05, "float32"), np.array(120, "uint8")], {"dtype": "uint8"}),
    ("quant.quantize", [X, np.array([0.01, 0.02, 0.03], "float32")], {"axis": 1, "dtype": "int8"}),
    ("quant.dequantize", [ints(2, 3, 4, low=-128, high=128).astype("int8"), np.array([0.1, 0.2, 0.3], "float32"),
                          np.array([1, -2, 3], "int8")], {"axis": 1}),
    ("quant.requantize", [ints(2, 3, low=-40000, high=40000).astype("int32"), np.array([1 << 30, 3 << 28, 1 << 29], "int32"),
                          np.array([38, 37, 36], "int32")], {"axis": 1, "zero_point": -5, "min": -128, "max": 100}),
    ("quant.conv", [ints(1, 4, 5, 5, low=0, high=256).astype("uint8"), ints(3, 4, 3, 3, low=-127, high=128).astype("int8"),
                    ints(3, low=-999, high=999).astype("int32")], {"x_zero_point": 120, "pads": (1, 1, 1, 1)}),
    ("quant.linear", [ints(2, 5, 8, low=-128, high=128).astype("int8"), ints(8, 3, low=-127, high=128).astype("int8"),
                      ints(3, low=-99, high=99).astype("int32")], {"x_zero_point": 7}),
    ("quant.matmul", [ints(2, 3, 8, low=0, high=256).astype("uint8"), ints(2, 8, 4, low=0, high=256).astype("uint8")],
     {"a_zero_point": 128, "b_zero_point": 100}),
    ("quant.dynamic_quantize", [X], {}),
    ("quant.weight_matmul", [SEQ, ints(4, 3, low=0, high=256).astype("uint8"), positive(2, 3) / 10, randn(3)],
     {"bits": 4, "group_size": 4, "activation": "relu"}),
    ("quant.weight_matmul", [SEQ, ints(8, 3, low=-127, high=128).astype("int8"), positive(1, 3) / 10], {"bits": 8, "group_size": 8}),
]


def single_op_graph(op: str, arrays: list[np.ndarray], attrs: dict) -> Graph:
    graph = Graph("single")
    inputs = [graph.add_input(f"in{index}", TensorType.of(array)) for index, array in enumerate(arrays)]
    node = graph.add_node(op, inputs, attrs, name="node", output_names=["out"])
    graph.outputs = list(node.outputs)
    verify(graph)
    return graph


def case_id(case: tuple[str, list[np.ndarray], dict]) -> str:
    op, _, attrs = case
    return f"{op}-{','.join(f'{key}={value}' for key, value in attrs.items())}"[:80]


def feeds_of(graph: Graph, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {value.name: array for value, array in zip(graph.inputs, arrays)}


def assert_outputs_close(expected: list[np.ndarray], actual: list[np.ndarray], rtol: float = RTOL, atol: float = ATOL) -> None:
    assert len(expected) == len(actual)
    for index, (want, got) in enumerate(zip(expected, actual)):
        got = np.asarray(got)
        assert (got.dtype, got.shape) == (want.dtype, want.shape), f"output {index}"
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"output {index}")


def run_torch(module: torch.nn.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.array(array)) for array in arrays])
    return [item.detach().numpy() for item in (out if isinstance(out, tuple) else (out,))]


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# ---- coverage --------------------------------------------------------------------------------------------------------

def test_every_registry_op_has_a_torch_function_and_an_onnx_emitter():
    assert missing_torch_functions() == []
    assert missing_onnx_emitters() == []
    assert set(TORCH_FUNCTIONS) == set(all_ops()) == set(ONNX_EMITTERS)


def test_every_registry_op_has_a_numerical_case():
    assert set(all_ops()) <= {op for op, _, _ in CASES}


# ---- one op at a time --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_torch_function_matches_the_interpreter(case):
    op, arrays, attrs = case
    graph = single_op_graph(op, arrays, attrs)
    expected = list(interpret(graph, feeds_of(graph, arrays)).values())
    assert_outputs_close(expected, run_torch(to_torch(graph), arrays))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_onnx_emitter_matches_the_interpreter_in_onnxruntime(case):
    op, arrays, attrs = case
    graph = single_op_graph(op, arrays, attrs)
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    feeds = feeds_of(graph, arrays)
    expected = list(interpret(graph, feeds).values())
    assert_outputs_close(expected, run_onnxruntime(model, feeds))


# ---- whole models ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo_graphs() -> dict[str, tuple[Graph, dict[str, np.ndarray]]]:
    """Per zoo model (tiny): the captured graph (batch norms, decomposed attention, ...), the same
    graph after cleanup and fuse (fused linears, nn.attention, activations), and its feeds."""
    graphs = {}
    for name in zoo.names():
        model, inputs = zoo.build(name, size="tiny")
        graph = capture(model, inputs, input_names=zoo.input_names(name))
        feeds = {value.name: tensor.numpy() for value, tensor in zip(graph.inputs, inputs)}
        fused = graph.clone()
        PassManager("cleanup,fuse", check_numerics=False).run(fused)
        graphs[name] = (graph, feeds)
        graphs[f"{name}-fused"] = (fused, feeds)
    return graphs


ZOO = [f"{name}{variant}" for name in zoo.names() for variant in ("", "-fused")]


@pytest.mark.parametrize("key", ZOO)
def test_zoo_model_in_torch_matches_the_interpreter_and_trains(zoo_graphs, key):
    graph, feeds = zoo_graphs[key]
    expected = list(interpret(graph, feeds).values())
    module = to_torch(graph)
    inputs = [torch.from_numpy(feeds[value.name]) for value in graph.inputs]
    assert_outputs_close(expected, run_torch(module, list(feeds.values())), rtol=1e-4, atol=1e-4)
    parameters = list(module.parameters())
    assert parameters
    optimizer = torch.optim.SGD(parameters, lr=1e-2)
    out = module(*inputs)
    loss = sum(item.float().pow(2).mean() for item in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    for parameter in parameters:  # every weight gets a gradient: the whole graph is differentiable
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0
    optimizer.step()
    trained = with_module_params(graph, module)  # the stepped weights, back in the graph
    verify(trained)
    assert_outputs_close(run_torch(module, list(feeds.values())), list(interpret(trained, feeds).values()),
                         rtol=1e-4, atol=1e-4)
    assert not np.allclose(list(interpret(trained, feeds).values())[0], expected[0])


@pytest.mark.parametrize("key", ZOO)
def test_zoo_model_in_onnx_passes_the_checker_and_runs_like_the_interpreter(zoo_graphs, key, tmp_path):
    graph, feeds = zoo_graphs[key]
    expected = list(interpret(graph, feeds).values())
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert [value.name for value in model.graph.input] == [value.name for value in graph.inputs]
    assert [value.name for value in model.graph.output] == [value.name for value in graph.outputs]
    assert_outputs_close(expected, run_onnxruntime(model, feeds), rtol=1e-4, atol=1e-4)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    again = load_onnx(path)
    verify(again)
    assert [value.name for value in again.outputs] == [value.name for value in graph.outputs]
    assert_outputs_close(expected, list(interpret(again, feeds).values()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key", ["resnet18-fused", "vit-fused", "bert-fused"])
def test_exported_module_captures_back_into_the_same_graph_outputs(zoo_graphs, key):
    graph, feeds = zoo_graphs[key]
    module = to_torch(graph)
    again = capture(module, tuple(torch.from_numpy(feeds[value.name]) for value in graph.inputs),
                    input_names=[value.name for value in graph.inputs])
    PassManager("cleanup,fuse", check_numerics=False).run(again)
    assert_outputs_close(list(interpret(graph, feeds).values()), list(interpret(again, feeds).values()),
                         rtol=1e-4, atol=1e-4)
    assert again.op_counts().get("nn.attention", 0) == graph.op_counts().get("nn.attention", 0)


def test_exported_module_survives_deepcopy_and_pickle(zoo_graphs):
    graph, feeds = zoo_graphs["vit-fused"]
    module = to_torch(graph)
    arrays = [feeds[value.name] for value in graph.inputs]
    for duplicate in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert_outputs_close(run_torch(module, arrays), run_torch(duplicate, arrays), rtol=0, atol=0)
        verify(with_module_params(graph, duplicate))  # it still knows which param is which


def test_symbolic_batch_reaches_both_exports():
    model, inputs = zoo.build("vit", size="tiny", batch=2)
    graph = capture(model, inputs, dynamic=True)
    PassManager("cleanup,fuse", check_numerics=False).run(graph)
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype("float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(run_torch(to_torch(graph), [images])[0], expected, rtol=1e-4, atol=1e-5)
    exported = to_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    np.testing.assert_allclose(run_onnxruntime(exported, {graph.inputs[0].name: images})[0], expected, rtol=1e-4, atol=1e-5)


# ---- params, names, outputs ------------------------------------------------------------------------------------------------

def test_params_become_parameters_or_buffers_with_identifier_names():
    graph = Graph("names")
    x = graph.add_input("x.in", TensorType((2, 4), "float32"))
    dotted = graph.add_param("layer.0.weight", randn(4, 4))
    underscored = graph.add_param("layer_0_weight", randn(4, 4, seed=1))
    digit = graph.add_param("0bias", randn(4))
    clash = graph.add_param("graph", randn(4, seed=2))
    scalar = graph.add_param("scale", np.array(0.5, "float32"))
    index = graph.add_param("index", np.array([1, 0], "int64"))
    mean, var = graph.add_param("running_mean", randn(4, seed=3)), graph.add_param("running_var", positive(4))
    y = graph.op("nn.linear", x, dotted, digit)
    y = graph.op("math.add", graph.op("nn.linear", y, underscored, clash), scalar)
    y = graph.op("tensor.gather", y, index)
    y = graph.op("nn.batch_norm", graph.op("tensor.reshape", y, shape=(2, 4, 1)), digit, clash, mean, var)
    graph.outputs = [y]
    module = to_torch(graph)
    names = module.meta["optc_params"]
    assert set(names.values()) == {value.name for value in graph.params}
    assert all(attribute.isidentifier() for attribute in names)
    trained = {names[attribute] for attribute, _ in module.named_parameters()}
    assert trained == {"layer.0.weight", "layer_0_weight", "0bias", "graph"}
    assert isinstance(module.graph, torch.fx.Graph)  # a param never shadows the module's own attributes
    assert {names[attribute] for attribute, _ in module.named_buffers()} == {"scale", "index", "running_mean", "running_var"}
    assert not default_trainable(graph, scalar) and not default_trainable(graph, mean)
    everything = to_torch(graph, trainable=lambda graph, value: value.dtype == "float32")
    assert len(list(everything.parameters())) == 7
    feeds = {"x.in": randn(2, 4)}
    assert_outputs_close(list(interpret(graph, feeds).values()), run_torch(module, [feeds["x.in"]]))


def test_outputs_that_are_inputs_params_or_repeated_keep_their_order():
    graph = Graph("outputs")
    x = graph.add_input("x", TensorType((2, 3), "float32"))
    bias = graph.add_param("bias", randn(3))
    y = graph.op("math.add", x, bias, name="y")
    graph.outputs = [y, x, bias, y]
    arrays = [randn(2, 3, seed=9)]
    expected = list(interpret(graph, feeds_of(graph, arrays)).values())
    expected = [expected[0], arrays[0], graph.params[bias], expected[0]]
    assert_outputs_close(expected, run_torch(to_torch(graph), arrays))
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert len({value.name for value in model.graph.output}) == 4
    assert_outputs_close(expected, run_onnxruntime(model, {"x": arrays[0]}))


def test_copying_back_checks_the_module_still_fits():
    graph = single_op_graph("nn.linear", [randn(2, 4), randn(4, 3)], {})
    with pytest.raises(OptcError, match="not made by to_torch"):
        with_module_params(graph, torch.nn.Linear(4, 3))
    graph = Graph("fit")
    x = graph.add_input("x", TensorType((2, 4), "float32"))
    weight = graph.add_param("weight", randn(4, 3))
    graph.outputs = [graph.op("nn.linear", x, weight)]
    module = to_torch(graph)
    with torch.no_grad():
        module.weight.mul_(2.0)
    doubled = with_module_params(graph, module)
    np.testing.assert_array_equal(doubled.params[doubled.inputs[0].uses[0][0].inputs[1]], graph.params[weight] * 2)
    np.testing.assert_array_equal(graph.params[weight], randn(4, 3))  # the original graph is untouched
    module.weight = torch.nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(OptcError, match="no longer matches"):
        with_module_params(graph, module)
