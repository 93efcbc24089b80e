"""ONNX models quantized by ONNX Runtime's own quantizer import into quant.* ops and compute what
ONNX Runtime computes (QOperator: QLinearConv/QLinearMatMul; QDQ; dynamic: ConvInteger/MatMulInteger)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.frontends.onnx import load_onnx
from optc.ir import interpret

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")


def float_model(path: Path) -> None:
    """conv-relu -> conv-relu (stride 2) -> flatten -> matmul, seeded weights."""
    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Reshape", ["r2", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w3"], ["y"]),
    ]
    initializers = [weight("w1", (8, 3, 3, 3), 0.3), weight("b1", (8,), 0.1), weight("w2", (8, 8, 3, 3), 0.2),
                    weight("b2", (8,), 0.1), numpy_helper.from_array(np.array([1, 128], np.int64), "shape"),
                    weight("w3", (128, 10), 0.1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


class Reader(quantization.CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.feeds = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(16)])

    def get_next(self):
        return next(self.feeds, None)


@pytest.fixture(scope="module")
def quantized_models(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("ort_quant")
    source = directory / "float.onnx"
    float_model(source)
    paths = {name: directory / f"{name}.onnx" for name in ("qoperator", "qdq", "dynamic")}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's pre-processing advice
    try:
        quantization.quantize_static(str(source), str(paths["qoperator"]), Reader(),
                                     quant_format=quantization.QuantFormat.QOperator, per_channel=True)
        quantization.quantize_static(str(source), str(paths["qdq"]), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                     per_channel=True)
        quantization.quantize_dynamic(str(source), str(paths["dynamic"]))
    finally:
        root.setLevel(level)
    return {"float": source, **paths}


EXPECTED_OPS = {
    "qoperator": {"quant.conv": 2, "quant.matmul": 1, "quant.requantize": 3},
    "qdq": {"quant.quantize": 5, "quant.dequantize": 10},
    "dynamic": {"quant.conv": 2, "quant.matmul": 1},
}


@pytest.mark.parametrize("form", ["qoperator", "qdq", "dynamic"])
def test_ort_quantized_model_imports_into_quant_ops_and_matches_ort(quantized_models, form) -> None:
    graph = load_onnx(quantized_models[form])
    counts = graph.op_counts()
    for op, count in EXPECTED_OPS[form].items():
        assert counts.get(op) == count, counts
    session = ort.InferenceSession(str(quantized_models[form]), providers=["CPUExecutionProvider"])
    float_session = ort.InferenceSession(str(quantized_models["float"]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for _ in range(3):
        x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        ours = interpret(graph, {"x": x})[graph.outputs[0].name]
        theirs = session.run(None, {"x": x})[0]
        # ORT requantizes in float, optc in fixed point: a rounding tie may land one step apart
        step = np.abs(theirs).max() / 100
        assert np.abs(ours - theirs).max() <= step
        assert np.abs(theirs - float_session.run(None, {"x": x})[0]).max() < 0.1  # it is a real int8 model


def test_imported_qoperator_model_compiles_bit_exact(quantized_models, compile_quant) -> None:
    graph = load_onnx(quantized_models["qoperator"])
    x = np.random.default_rng(9).standard_normal((1, 3, 8, 8)).astype(np.float32)
    compiled = compile_quant("ort-qoperator", lambda: graph).run({"x": x})
    name = graph.outputs[0].name
    assert np.array_equal(compiled[name], interpret(graph, {"x": x})[name])


def test_fold_qdq_turns_the_qdq_model_into_integer_layers(quantized_models, compile_quant) -> None:
    from optc.passes import PassManager

    graph = load_onnx(quantized_models["qdq"])
    PassManager("fold_qdq,cleanup", check_numerics=False).run(graph)
    counts = graph.op_counts()
    assert counts.get("quant.conv") == 2 and counts.get("quant.linear") == 1 and counts.get("quant.requantize", 0) >= 2
    assert "nn.conv" not in counts and "linalg.matmul" not in counts
    session = ort.InferenceSession(str(quantized_models["qdq"]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(11).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ours = interpret(graph, {"x": x})[graph.outputs[0].name]
    theirs = session.run(None, {"x": x})[0]
    assert np.abs(ours - theirs).max() <= np.abs(theirs).max() / 50
    compiled = compile_quant("ort-qdq-folded", lambda: graph).run({"x": x})
    assert np.array_equal(compiled[graph.outputs[0].name], ours)
