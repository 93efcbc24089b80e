"""``optc compile --calib``: calibration data reaches the quant pass and the artifact is int8."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optc.tools.cli import main


def write_model(path) -> None:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1])]
    weights = [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
               numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32), "w2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_compile_with_calib_writes_an_int8_artifact(tmp_path, capsys) -> None:
    write_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((6, 1, 3, 8, 8)).astype(np.float32))
    code = main(["compile", str(tmp_path / "m.onnx"), "--passes", "cleanup,quant(int8)", "--calib", str(tmp_path / "calib.npz"),
                 "-o", str(tmp_path / "art")])
    assert code == 0
    graph = json.loads((tmp_path / "art" / "graph.json").read_text())
    ops = [node["op"] for node in graph["nodes"]]
    assert ops.count("quant.conv") == 2 and "quant.requantize" in ops
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["check"]["cosine"] > 0.999
    assert "calibrating" in capsys.readouterr().err


def test_calib_without_a_quant_pass_is_an_error(tmp_path, capsys) -> None:
    write_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.zeros((2, 1, 3, 8, 8), np.float32))
    code = main(["compile", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "art")])
    assert code == 2 and "no quant(...) pass" in capsys.readouterr().err
