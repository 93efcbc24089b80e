"""quant.* ops: integer reference semantics, int4 packing, and compiled kernels bit-exact against them."""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import Graph, TensorType, interpret
from optc.ir.ops.quant import (dequantize_weight, fixed_point, pack_int4, quantize_reference,
                               requantize_reference, unpack_int4)

RNG_SEED = 7


def test_int4_packing_round_trips_and_is_two_per_byte() -> None:
    rng = np.random.default_rng(RNG_SEED)
    values = rng.integers(-8, 8, (64, 5)).astype(np.int8)
    packed = pack_int4(values)
    assert packed.dtype == np.uint8 and packed.shape == (32, 5)
    assert np.array_equal(unpack_int4(packed), values)
    # row 0 in the low nibble, row 1 in the high one
    assert packed[0, 0] == ((int(values[0, 0]) & 0xF) | ((int(values[1, 0]) & 0xF) << 4))


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0], dtype=np.float32)
    q = quantize_reference(x, np.float32(1.0), np.int8(0), axis=None, dtype="int8")
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]
    u = quantize_reference(x, np.float32(1.0), np.uint8(10), axis=None, dtype="uint8")
    assert u.tolist() == [10, 12, 12, 10, 8, 255, 0]


def test_fixed_point_requantize_matches_the_real_scale() -> None:
    rng = np.random.default_rng(RNG_SEED)
    scales = rng.uniform(1e-5, 0.9, 16)
    multiplier, shift = fixed_point(scales)
    acc = rng.integers(-50_000, 50_000, (3, 16)).astype(np.int32)
    out = requantize_reference(acc, multiplier, shift, axis=1, zero_point=3, min=-128, max=127, dtype="int8")
    expected = np.clip(np.floor(acc * scales + 0.5) + 3, -128, 127)
    # the fixed-point multiplier has 31 bits: off by one only where the real product is within 1e-6 of .5
    assert np.max(np.abs(out.astype(np.int64) - expected)) <= 1
    assert np.mean(out == expected) > 0.99


def build_op_graph() -> tuple[Graph, dict[str, np.ndarray]]:
    """Every quant op on seeded data, with independent outputs, to compile once."""
    rng = np.random.default_rng(RNG_SEED)
    graph = Graph("quant_ops")
    feeds: dict[str, np.ndarray] = {}

    def inp(name: str, array: np.ndarray):
        feeds[name] = array
        return graph.add_input(name, TensorType.of(array))

    x = inp("x", rng.standard_normal((2, 4, 6, 6)).astype(np.float32) * 3)
    outputs = []
    # per-tensor uint8 with a zero point, per-channel int8
    outputs.append(graph.op("quant.quantize", x, graph.add_param("s", np.float32(0.05)), graph.add_param("z", np.uint8(130)),
                            dtype="uint8"))
    per_channel_scale = graph.add_param("sc", rng.uniform(0.01, 0.1, 4).astype(np.float32))
    outputs.append(graph.op("quant.quantize", x, per_channel_scale, axis=1, dtype="int8"))
    # ties: x / scale lands exactly on .5
    ties = inp("ties", (np.arange(-8, 8, dtype=np.float32) + 0.5).reshape(2, 8))
    outputs.append(graph.op("quant.quantize", ties, graph.add_param("one", np.float32(1.0)), dtype="int8"))

    q8 = inp("q8", rng.integers(-128, 128, (2, 4, 6, 6)).astype(np.int8))
    outputs.append(graph.op("quant.dequantize", q8, per_channel_scale, graph.add_param("zc", np.array([1, -2, 0, 5], np.int8)),
                            axis=1))
    # convolution: uint8 activations with a zero point, padding and stride; depthwise int8
    xu = inp("xu", rng.integers(0, 256, (2, 4, 7, 7)).astype(np.uint8))
    w = graph.add_param("w", rng.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8))
    bias = graph.add_param("b", rng.integers(-5000, 5000, 8).astype(np.int32))
    conv = graph.op("quant.conv", xu, w, bias, x_zero_point=131, pads=(1, 1, 1, 1), strides=(2, 2))
    outputs.append(conv)
    xi = inp("xi", rng.integers(-128, 128, (1, 4, 5, 5)).astype(np.int8))
    depthwise_weight = graph.add_param("wd", rng.integers(-127, 128, (4, 1, 3, 3)).astype(np.int8))
    outputs.append(graph.op("quant.conv", xi, depthwise_weight, x_zero_point=-7, pads=(1, 1, 1, 1), groups=4))
    # requantize the conv per channel, relu folded into min
    multiplier, shift = fixed_point(rng.uniform(1e-4, 2e-3, 8))
    outputs.append(graph.op("quant.requantize", conv, graph.add_param("m", multiplier), graph.add_param("sh", shift), axis=1,
                            zero_point=-20, min=-20, max=127))
    # linear and matmul
    xl = inp("xl", rng.integers(-128, 128, (2, 3, 16)).astype(np.int8))
    wl = graph.add_param("wl", rng.integers(-127, 128, (16, 5)).astype(np.int8))
    outputs.append(graph.op("quant.linear", xl, wl, graph.add_param("bl", rng.integers(-999, 999, 5).astype(np.int32)),
                            x_zero_point=4))
    a = inp("a", rng.integers(0, 256, (2, 3, 16)).astype(np.uint8))
    b = inp("bm", rng.integers(0, 256, (2, 16, 4)).astype(np.uint8))
    outputs.append(graph.op("quant.matmul", a, b, a_zero_point=128, b_zero_point=120))
    # dynamic
    xd = inp("xd", rng.standard_normal((3, 10)).astype(np.float32))
    dynamic = graph.add_node("quant.dynamic_quantize", [xd])
    outputs.extend(dynamic.outputs)
    # weight-only int8 and packed int4
    xw = inp("xw", rng.standard_normal((2, 3, 64)).astype(np.float32))
    w4 = graph.add_param("w4", pack_int4(rng.integers(-8, 8, (64, 6))))
    s4 = graph.add_param("s4", rng.uniform(0.01, 0.1, (2, 6)).astype(np.float32))
    outputs.append(graph.op("quant.weight_matmul", xw, w4, s4, graph.add_param("b4", rng.standard_normal(6).astype(np.float32)),
                            bits=4, group_size=32, activation="relu"))
    w8 = graph.add_param("w8", rng.integers(-127, 128, (64, 6)).astype(np.int8))
    s8 = graph.add_param("s8", rng.uniform(0.01, 0.1, (4, 6)).astype(np.float32))
    outputs.append(graph.op("quant.weight_matmul", xw, w8, s8, bits=8, group_size=16))
    graph.outputs = outputs
    return graph, feeds


@pytest.fixture(scope="module")
def op_results(compile_quant):
    graph, feeds = build_op_graph()
    model = compile_quant("quant-ops", lambda: graph)
    return graph, model.run(feeds), interpret(graph, feeds)


def test_compiled_integer_ops_are_bit_exact(op_results) -> None:
    graph, compiled, reference = op_results
    for value in graph.outputs:
        if value.producer.op == "quant.weight_matmul":
            continue
        got, want = compiled[value.name], reference[value.name]
        assert got.dtype == want.dtype, value.name
        assert np.array_equal(got, want), f"{value.name} ({value.producer.op}) differs in {np.sum(got != want)} places"


def test_compiled_weight_only_matmul_unpacks_int4_in_the_kernel(op_results) -> None:
    graph, compiled, reference = op_results
    products = [value for value in graph.outputs if value.producer.op == "quant.weight_matmul"]
    assert len(products) == 2
    for value in products:
        np.testing.assert_allclose(compiled[value.name], reference[value.name], rtol=1e-5, atol=1e-5)


def test_reference_integer_conv_equals_float_conv_of_centered_values() -> None:
    rng = np.random.default_rng(RNG_SEED)
    from optc.ir.ops import get

    x = rng.integers(0, 256, (1, 3, 5, 5)).astype(np.uint8)
    w = rng.integers(-127, 128, (2, 3, 3, 3)).astype(np.int8)
    conv = get("quant.conv")
    got = conv.run([x, w], conv.check_attrs({"x_zero_point": 100, "pads": (1, 1, 1, 1)}))[0]
    fconv = get("nn.conv")
    want = fconv.run([x.astype(np.float64) - 100, w.astype(np.float64)], fconv.check_attrs({"pads": (1, 1, 1, 1)}))[0]
    assert got.dtype == np.int32 and np.array_equal(got, want.astype(np.int32))


def test_dequantize_weight_uses_group_scales() -> None:
    values = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    scales = np.array([[1, 2, 3, 4], [10, 20, 30, 40]], dtype=np.float32)
    weight = dequantize_weight(pack_int4(values), scales, bits=4, group_size=2)
    assert np.array_equal(weight[:2], values[:2] * scales[0]) and np.array_equal(weight[2:], values[2:] * scales[1])
