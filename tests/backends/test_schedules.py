"""optc's default CPU schedules: each rule applies where it should and computes what the interpreter does.

Every case is a one-node graph (or two) compiled with the schedules on; the rule that must have
scheduled its kernel is checked by name, and the outputs are compared with ``optc.ir.interpret``
at rtol 1e-4, atol 1e-5. Shapes are small but ragged on purpose: rows and columns that no tile
divides, batch dims, strided and 1x1 convolutions, masked and causal attention.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from optc.backends import compile_graph, get_target
from optc.backends.schedules import rewrite_fast_math, scheduled_kernels
from optc.backends.schedules.matmul import MatmulConfig, _tile_shape
from optc.backends.targets.cpu import _cpuinfo_flags
from optc.ir import Graph, TensorType, interpret
from optc.ir.graph import Value

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _weight(graph: Graph, rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> Value:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return graph.add_param(name, (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))


def linear(rows: tuple[int, ...], k: int, n: int, activation: str = "none", bias: bool = True) -> Graph:
    rng = np.random.default_rng(k * 1000 + n)
    graph = Graph("linear")
    x = graph.add_input("x", TensorType((*rows, k), "float32"))
    inputs = [x, _weight(graph, rng, "w", (k, n))]
    if bias:
        inputs.append(graph.add_param("b", rng.standard_normal(n).astype(np.float32)))
    graph.outputs = [graph.op("nn.linear", *inputs, activation=activation)]
    return graph


def batched_matmul(batch: int, heads: int, m: int, k: int, n: int) -> Graph:
    """(b, h, m, k) @ (b, h, k, n): the right operand depends on the batch dims."""
    graph = Graph("batched_matmul")
    a = graph.add_input("a", TensorType((batch, heads, m, k), "float32"))
    b = graph.add_input("b", TensorType((batch, heads, k, n), "float32"))
    graph.outputs = [graph.op("math.relu", graph.op("linalg.matmul", a, b))]
    return graph


def conv(channels: int, size: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
         activation: str = "none", residual: bool = False, batch: int = 1) -> Graph:
    rng = np.random.default_rng(channels * 100 + out_channels + kernel)
    graph = Graph("conv")
    x = graph.add_input("x", TensorType((batch, channels, size, size), "float32"))
    weight = _weight(graph, rng, "w", (out_channels, channels // groups, kernel, kernel))
    bias = graph.add_param("b", rng.standard_normal(out_channels).astype(np.float32) * 0.1)
    pad = kernel // 2
    y = graph.op("nn.conv", x, weight, bias, strides=(stride, stride), pads=(pad, pad, pad, pad), groups=groups,
                 activation=activation if not residual else "none")
    if residual:
        skip = graph.add_input("skip", TensorType(tuple(graph.nodes[-1].output.shape), "float32"))
        y = graph.op("math.relu", graph.op("math.add", y, skip))
    graph.outputs = [y]
    return graph


def attention(batch: int, heads: int, tokens: int, depth: int, causal: bool = False, mask: str | None = None) -> Graph:
    graph = Graph("attention")
    shape = (batch, heads, tokens, depth)
    inputs = [graph.add_input(name, TensorType(shape, "float32")) for name in ("q", "k", "v")]
    if mask == "float":
        inputs.append(graph.add_input("mask", TensorType((batch, 1, tokens, tokens), "float32")))
    elif mask == "bool":
        inputs.append(graph.add_input("mask", TensorType((batch, 1, 1, tokens), "bool")))
    graph.outputs = [graph.op("nn.attention", *inputs, causal=causal, scale=None)]
    return graph


def _feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph.inputs:
        if value.dtype == "bool":
            array = rng.random(value.shape) < 0.8
            array[..., 0] = True
            if array.ndim == 4 and array.shape[0] > 1:
                array[1] = False  # a batch whose every key is masked: its queries attend to nothing
            feeds[value.name] = array
        else:
            feeds[value.name] = rng.standard_normal(value.shape).astype(np.float32)
    return feeds


def applied_rules(graph: Graph, **target_options: object) -> dict[str, str]:
    """Kernel name -> the rule that scheduled it, for the CPU pipeline on ``graph``."""
    return scheduled_kernels(graph, **target_options)[0]


def check(graph: Graph, rule: str, **target_options: object) -> None:
    rules = applied_rules(graph, **target_options)
    assert rule in rules.values(), f"{rule} scheduled nothing; applied: {rules}"
    feeds = _feeds(graph)
    expected = interpret(graph, feeds)
    actual = compile_graph(graph, "cpu", **target_options).run(feeds)
    for name, want in expected.items():
        np.testing.assert_allclose(actual[name], want, **TOLERANCE, err_msg=f"{graph.name} output {name}")


# ---- dense products -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "k", "n", "activation"),
    [
        ((37,), 24, 64, "none"),  # 37 rows: a ragged last row tile
        ((5, 13), 16, 40, "gelu"),  # batch dims kept outer, erf epilogue (fast math)
        ((1, 19), 32, 48, "gelu_tanh"),
        ((1,), 64, 200, "relu"),  # a vector-matrix product: a wide tile
        ((9,), 8, 12, "none"),  # N not a multiple of the vector width
        ((2, 7), 16, 21, "gelu"),  # ragged N: vector tiles + a scalar tail (loop_partition)
        ((1,), 32, 13, "none"),
    ],
)
def test_matmul_rule_matches_interpreter(rows: tuple[int, ...], k: int, n: int, activation: str) -> None:
    check(linear(rows, k, n, activation), "Matmul")


def test_matmul_without_bias_and_batched_right_operand() -> None:
    check(linear((6, 11), 32, 24, bias=False), "Matmul")
    check(batched_matmul(2, 3, 13, 8, 24), "Matmul")


def test_tile_shapes_fit_the_registers_and_divide_the_columns() -> None:
    for m, n in [(197, 768), (64, 1000), (1, 768), (2, 1000), (33, 1001), (5, 8)]:
        vectors, mr = _tile_shape(m, n, 8, MatmulConfig())
        assert 1 <= mr <= m and mr * vectors <= 12
        assert n % 8 != 0 or (n // 8) % vectors == 0


# ---- convolutions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "size", "out_channels", "kernel", "stride", "activation"),
    [
        (8, 11, 16, 3, 1, "relu"),  # 11 columns: ragged pixel tiles
        (3, 15, 8, 7, 2, "relu"),  # stem-like: 3 input channels, 7x7, stride 2
        (16, 9, 24, 1, 1, "relu6"),  # pointwise
        (16, 10, 32, 1, 2, "none"),  # strided 1x1 (downsample)
        (16, 16, 24, 1, 1, "relu6"),  # short reduction, rows of 16: vectorized along rows
        (4, 24, 8, 3, 1, "relu"),  # rows path with padding: 3 vectors per row, one per tile
    ],
)
def test_conv2d_rule_matches_interpreter(channels: int, size: int, out_channels: int, kernel: int, stride: int,
                                         activation: str) -> None:
    check(conv(channels, size, out_channels, kernel, stride, activation=activation), "Conv2d")


def test_conv2d_with_residual_epilogue_and_batches() -> None:
    check(conv(8, 7, 16, 3, residual=True), "Conv2d")
    check(conv(8, 6, 16, 3, 2, activation="relu", batch=3), "Conv2d")


@pytest.mark.parametrize(("size", "stride"), [(12, 1), (7, 1), (13, 2)])
def test_depthwise_rule_matches_interpreter(size: int, stride: int) -> None:
    check(conv(16, size, 16, 3, stride, groups=16, activation="relu6"), "DepthwiseConv2d")


def test_conv_with_channels_off_the_vector_width_is_left_alone() -> None:
    graph = conv(4, 6, 6, 3)
    assert "Conv2d" not in applied_rules(graph).values()
    feeds = _feeds(graph)
    name = graph.outputs[0].name
    np.testing.assert_allclose(compile_graph(graph, "cpu").run(feeds)[name], interpret(graph, feeds)[name], **TOLERANCE)


# ---- attention ----------------------------------------------------------------------------------


def test_attention_softmax_reductions_are_vectorized_by_lane() -> None:
    """The row max and sum accumulate KEY_LANES-wide vectors over key chunks (not one serial chain)."""
    graph = Graph("attention")
    shape = TensorType((1, 3, 197, 64), "float32")
    q, k, v = (graph.add_input(name, shape) for name in "qkv")
    graph.outputs = [graph.op("nn.attention", q, k, v)]
    applied, module = scheduled_kernels(graph)
    assert applied == {"attention": "Attention"}
    lines = module["attention"].script().splitlines()
    for block in ("row_max_part_update", "row_sum_part_update", "row_exp", "weights"):
        line = next(index for index, text in enumerate(lines) if f'T.sblock("{block}")' in text)
        assert "T.vectorized" in lines[line - 1], (block, lines[line - 1])


@pytest.mark.parametrize(
    ("batch", "heads", "tokens", "depth", "causal", "mask"),
    [
        (1, 3, 37, 16, False, None),  # 37 keys: padded to 48, the padding scores -inf
        (1, 2, 16, 8, True, None),  # one 16-key block: the lane split falls back to 8 lanes x 2 chunks
        (2, 2, 24, 8, True, "float"),
        (2, 2, 19, 8, False, "bool"),  # a fully masked batch: its rows must come out as zeros
    ],
)
def test_attention_rule_matches_interpreter(batch: int, heads: int, tokens: int, depth: int, causal: bool,
                                            mask: str | None) -> None:
    check(attention(batch, heads, tokens, depth, causal, mask), "Attention")


@pytest.mark.parametrize("keys", [37, 32])
def test_attention_rule_schedules_a_single_query(keys: int) -> None:
    """A decode step (KV cache): one query row against the cache, with a padding mask."""
    graph = Graph("decode_attention")
    query = graph.add_input("q", TensorType((1, 3, 1, 16), "float32"))
    cache = [graph.add_input(name, TensorType((1, 3, keys, 16), "float32")) for name in ("k", "v")]
    mask = graph.add_input("mask", TensorType((1, 1, 1, keys), "bool"))
    graph.outputs = [graph.op("nn.attention", query, *cache, mask)]
    check(graph, "Attention")


# ---- transposes --------------------------------------------------------------------------------


def test_transpose_rule_matches_interpreter() -> None:
    graph = Graph("transpose")
    x = graph.add_input("x", TensorType((1031, 1030), "float32"))  # > 1M elements, no tile divides
    graph.outputs = [graph.op("tensor.transpose", x, perm=(1, 0))]
    check(graph, "Transpose")


# ---- AVX-512 (16-lane vectors, where the host has them) ---------------------------------------------


@pytest.mark.skipif("avx512f" not in (_cpuinfo_flags() or ()), reason="needs AVX-512")
@pytest.mark.parametrize(
    ("graph", "rule"),
    [
        (lambda: linear((21,), 24, 40, "gelu"), "Matmul"),  # 40 columns: 8-lane vectors under AVX-512
        (lambda: linear((1,), 32, 48), "Matmul"),
        (lambda: conv(8, 9, 24, 3, activation="relu"), "Conv2d"),  # 24 channels
        (lambda: conv(16, 7, 32, 1, 2), "Conv2d"),
        (lambda: attention(1, 2, 37, 24, True), "Attention"),
    ],
)
def test_rules_with_avx512_vectors(graph, rule: str) -> None:
    check(graph(), rule, mcpu="x86-64-v4")


# ---- switches -----------------------------------------------------------------------------------


def test_schedules_can_be_switched_off() -> None:
    target = get_target("cpu", schedules=False)
    assert target.schedule_passes() == [] and len(target.relax_passes()) == len(target.fusion_passes())
    assert target.describe()["schedules"] is False
    graph = linear((5,), 8, 16)
    feeds = _feeds(graph)
    actual = compile_graph(graph, "cpu", schedules=False).run(feeds)
    np.testing.assert_allclose(actual[graph.outputs[0].name], interpret(graph, feeds)[graph.outputs[0].name], **TOLERANCE)


def test_fast_math_rewrites_only_float32_erf_tanh_and_exp() -> None:
    from tvm import te

    x = te.placeholder((16,), name="x")
    y = te.compute((16,), lambda i: te.erf(x[i]) + te.tanh(x[i]) + te.exp(x[i]) + te.log(x[i]), name="y")
    func, count = rewrite_fast_math(te.create_prim_func([x, y]))
    assert count == 3
    script = func.script()
    assert "T.erf(" not in script and "T.tanh(" not in script and "T.exp(" not in script and "T.log(" in script
    half = te.placeholder((16,), name="h", dtype="float16")
    _, count = rewrite_fast_math(te.create_prim_func([half, te.compute((16,), lambda i: te.erf(half[i]))]))
    assert count == 0


def test_fast_exp_against_float64_including_softmax_edge_cases() -> None:
    """Relative error under 2e-7 on normal floats; -inf (masked scores) gives 0, +inf inf, NaN NaN."""
    from tvm import te

    n = 4096
    x = te.placeholder((n,), name="x")
    func, _ = rewrite_fast_math(te.create_prim_func([x, te.compute((n,), lambda i: te.exp(x[i]), name="y")]))
    library = tvm.compile(tvm.IRModule({"main": func}), target=get_target("cpu").tvm_target()).jit()
    rng = np.random.default_rng(0)
    specials = [-np.inf, np.inf, np.nan, -100.0, 0.0, -1e-8, 80.0, -80.0]
    values = np.concatenate([rng.standard_normal(n - len(specials)) * 20, specials]).astype(np.float32)
    out = tvm.runtime.tensor(np.zeros(n, np.float32))
    library["main"](tvm.runtime.tensor(values), out)
    got, expected = out.numpy(), np.exp(values.astype(np.float64))
    normal = np.isfinite(expected) & (expected > np.finfo(np.float32).tiny) & (expected < np.finfo(np.float32).max)
    assert np.max(np.abs(got[normal] - expected[normal]) / expected[normal]) < 2e-7
    assert got[-8] == 0.0 and got[-7] == np.inf and np.isnan(got[-6]) and got[-5] == 0.0 and got[-4] == 1.0


def test_matmul_rule_with_a_symbolic_batch() -> None:
    graph = Graph("dynamic_linear")
    rng = np.random.default_rng(5)
    x = graph.add_input("x", TensorType(("batch", 7, 16), "float32"))
    w = _weight(graph, rng, "w", (16, 24))
    b = graph.add_param("b", rng.standard_normal(24).astype(np.float32))
    graph.outputs = [graph.op("nn.linear", x, w, b, activation="gelu")]
    assert "Matmul" in applied_rules(graph).values()
    compiled = compile_graph(graph, "cpu")
    for batch in (1, 3):
        feeds = {"x": rng.standard_normal((batch, 7, 16)).astype(np.float32)}
        np.testing.assert_allclose(compiled.run(feeds)[graph.outputs[0].name],
                                   interpret(graph, feeds)[graph.outputs[0].name], **TOLERANCE)


def test_an_epilogue_that_reshapes_the_product_is_left_alone() -> None:
    """reverse_compute_at would relax a flattened tile to a box and compute unreduced elements."""
    from tvm import te

    from optc.backends.schedules.common import find_anchor
    from optc.backends.schedules.matmul import Matmul

    a, b = te.placeholder((20, 16), name="a"), te.placeholder((16, 24), name="b")
    k = te.reduce_axis((0, 16), name="k")
    product = te.compute((20, 24), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="product")
    flat = te.compute((480,), lambda p: product[p // 24, p % 24] + 1.0, name="flat")
    assert find_anchor(te.create_prim_func([a, b, flat])) is None
    assert Matmul().apply(te.create_prim_func([a, b, flat]), get_target("cpu").tvm_target(), False) is None
    # a transposing epilogue maps a tile onto a tile: fine
    transposed = te.compute((24, 20), lambda j, i: product[i, j] + 1.0, name="transposed")
    assert find_anchor(te.create_prim_func([a, b, transposed])) is not None
