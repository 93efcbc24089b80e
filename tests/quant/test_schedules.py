"""The integer CPU schedules match the kernels the quant ops lower to (else they run as naive loops)."""

from __future__ import annotations

import numpy as np

from optc.backends.schedules import scheduled_kernels
from optc.ir import Graph, TensorType
from optc.ir.ops.quant import pack_int4


def scheduled_rules(graph: Graph) -> set[str]:
    # without VNNI features: the VNNI rules (test_vnni.py) would win
    return set(scheduled_kernels(graph, mattr=())[0].values())


def test_integer_conv_matmul_and_weight_only_kernels_are_scheduled() -> None:
    rng = np.random.default_rng(0)
    graph = Graph("kernels")
    image = graph.add_input("image", TensorType((1, 16, 8, 8), "int8"))
    conv = graph.op("quant.conv", image, graph.add_param("w", rng.integers(-127, 128, (32, 16, 3, 3)).astype(np.int8)),
                    graph.add_param("b", np.zeros(32, np.int32)))
    rows = graph.add_input("rows", TensorType((8, 64), "int8"))
    linear = graph.op("quant.linear", rows, graph.add_param("wl", rng.integers(-127, 128, (64, 32)).astype(np.int8)))
    x = graph.add_input("x", TensorType((8, 64), "float32"))
    weight_only = graph.op("quant.weight_matmul", x, graph.add_param("w4", pack_int4(rng.integers(-8, 8, (64, 32)))),
                           graph.add_param("s4", np.ones((1, 32), np.float32)), bits=4, group_size=64)
    graph.outputs = [conv, linear, weight_only]
    assert {"IntegerConv2d", "IntegerMatmul", "WeightOnlyMatmul"} <= scheduled_rules(graph)
