"""The recognize pass on whole graphs: random chains of decomposed blocks, and the zoo models
(torch capture, ONNX export, ONNX opset 13) with every norm, GELU and attention recognized."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from optc.ir import Graph, TensorType, interpret
from optc.ir.graph import Value
from optc.passes.recognize import recognize
from optc.passes.testing import assert_same_outputs, check_rewrite

TOL = {"rtol": 1e-4, "atol": 1e-5}  # a fused op rounds differently from its decomposed form


# ---- random chains of decomposed blocks ------------------------------------------------------------------

BLOCKS: dict[str, Callable[[Any, Value, np.random.Generator], Value]] = {}


def block(function: Callable[[Any, Value, np.random.Generator], Value]) -> Callable[[Any, Value, np.random.Generator], Value]:
    BLOCKS[function.__name__] = function
    return function


def const(graph: Graph, number: float) -> Value:
    return graph.add_param("c", np.array(number, "float32"))


@block
def gelu_erf(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    inner = graph.op("math.erf", graph.op("math.div", x, const(graph, math.sqrt(2))))
    return graph.op("math.mul", graph.op("math.mul", x, const(graph, 0.5)), graph.op("math.add", inner, const(graph, 1.0)))


@block
def gelu_tanh(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    cubic = graph.op("math.mul", graph.op("math.pow", x, const(graph, 3.0)), const(graph, 0.044715))
    inner = graph.op("math.tanh", graph.op("math.mul", graph.op("math.add", x, cubic), const(graph, math.sqrt(2 / math.pi))))
    return graph.op("math.mul", graph.op("math.mul", x, const(graph, 0.5)), graph.op("math.add", inner, const(graph, 1.0)))


@block
def silu(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    return graph.op("math.mul", graph.op("math.sigmoid", x), x)


@block
def layer_norm(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    axes = (x.type.rank - 1,)
    centered = graph.op("math.sub", x, graph.op("reduce.mean", x, axes=axes))
    variance = graph.op("reduce.mean", graph.op("math.mul", centered, centered), axes=axes)
    inverse = graph.op("math.rsqrt", graph.op("math.add", variance, const(graph, 1e-5)))
    gamma = graph.add_param("gamma", rng.uniform(0.5, 1.5, x.shape[-1:]).astype("float32"))
    return graph.op("math.mul", graph.op("math.mul", centered, inverse), gamma)


@block
def softmax(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    axes = (int(rng.integers(x.type.rank)),)
    exp = graph.op("math.exp", graph.op("math.sub", x, graph.op("reduce.max", x, axes=axes)))
    return graph.op("math.div", exp, graph.op("reduce.sum", exp, axes=axes))


@block
def hard_swish(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    clipped = graph.op("math.clip", graph.op("math.add", x, const(graph, 3.0)), min=0.0, max=6.0)
    return graph.op("math.div", graph.op("math.mul", x, clipped), const(graph, 6.0))


@block
def relu(graph: Graph, x: Value, rng: np.random.Generator) -> Value:
    return graph.op("math.relu", x)


@pytest.mark.parametrize("seed", range(12))
def test_random_chains_of_decomposed_blocks(seed: int) -> None:
    """Property: any chain of decomposed forms is recognized, verifies, computes the same, settles."""
    rng = np.random.default_rng(seed)
    graph = Graph(f"chain{seed}")
    shape = tuple(int(dim) for dim in rng.integers(2, 6, size=int(rng.integers(2, 4))))
    x = graph.add_input("x", TensorType(shape, "float32"))
    names = [str(name) for name in rng.choice(sorted(BLOCKS), size=int(rng.integers(2, 6)))]
    value = x
    for name in names:
        value = BLOCKS[name](graph, value, rng)
        if rng.random() < 0.3:  # a block's result also read as a graph output
            graph.outputs.append(value)
    graph.outputs = list(dict.fromkeys(graph.outputs + [value]))
    # a chain of only relus has nothing to recognize; check_rewrite verifies the graph first
    check_rewrite(recognize(verify_each=True), graph, seed=seed, changes=None, **TOL)
    leftovers = {"math.erf", "math.tanh", "math.sigmoid", "reduce.mean", "reduce.sum", "math.clip"} & set(graph.op_counts())
    assert not leftovers, f"{names} left {leftovers}"


# ---- the zoo ----------------------------------------------------------------------------------------------

ZOO = ("vit", "gpt2", "bert")
LAYERS = {"vit": 2, "gpt2": 2, "bert": 2}  # the tiny sizes


@pytest.fixture(scope="module")
def zoo_graphs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], tuple[Graph, dict[str, np.ndarray]]]:
    """(graph, feeds) per zoo model and source ("torch" capture, "onnx" export, "onnx13"), built once."""
    pytest.importorskip("transformers")
    from optc.frontends.onnx import load_onnx
    from optc.frontends.torch import capture
    from optc.tools import zoo

    built: dict[tuple[str, str], tuple[Graph, dict[str, np.ndarray]]] = {}

    def get(name: str, source: str) -> tuple[Graph, dict[str, np.ndarray]]:
        if (name, source) not in built:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices
                if source == "torch":
                    model, inputs = zoo.build(name, size="tiny")
                    graph = capture(model, inputs, input_names=zoo.input_names(name), output_names=zoo.output_names(name))
                elif source == "onnx":
                    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
                    model, inputs = zoo.export_onnx(name, path, size="tiny")
                    graph = load_onnx(path)
                else:  # opset 13 has no LayerNormalization: the exporter writes layer norms out
                    import torch

                    path = tmp_path_factory.mktemp(name) / f"{name}13.onnx"
                    model, inputs = zoo.build(name, size="tiny")
                    with torch.no_grad():
                        torch.onnx.export(model, inputs, str(path), input_names=zoo.input_names(name),
                                          output_names=zoo.output_names(name), opset_version=13, dynamo=False)
                    graph = load_onnx(path)
            built[(name, source)] = (graph, {key: tensor.numpy() for key, tensor in zip(zoo.input_names(name), inputs)})
        graph, feeds = built[(name, source)]
        return graph.clone(), feeds

    return get


@pytest.mark.parametrize("source", ["torch", "onnx", "onnx13"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_have_every_norm_gelu_and_attention_recognized(zoo_graphs: Any, name: str, source: str) -> None:
    graph, feeds = zoo_graphs(name, source)
    nodes_before = len(graph.nodes)
    check_rewrite(recognize(verify_each=True), graph, feeds=feeds, **TOL)
    counts = graph.op_counts()
    layers = LAYERS[name]
    assert counts.get("nn.layer_norm") == 2 * layers + 1  # two per block and a final (BERT: the embeddings') one
    assert counts.get("nn.attention") == layers
    assert counts.get("math.gelu") == layers
    assert not {"math.erf", "math.tanh", "nn.softmax", "reduce.mean", "reduce.sum"} & set(counts)
    assert len(graph.nodes) < nodes_before


def test_a_recognized_vit_compiles_and_matches_the_interpreter(zoo_graphs: Any) -> None:
    backends = pytest.importorskip("optc.backends")
    graph, feeds = zoo_graphs("vit", "torch")
    recognize()(graph)
    assert graph.op_counts().get("nn.attention") == 2
    compiled = backends.compile_graph(graph)
    expected = interpret(graph, feeds)
    assert_same_outputs(expected, compiled.run(feeds), **TOL)
