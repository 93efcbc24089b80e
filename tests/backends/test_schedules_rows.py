"""The row-reduction, elementwise and pooling CPU schedules: which kernels they take, and that they compute
what the reference interpreter does.

Each case is a one- or two-node graph compiled for the CPU with the schedules on. The rule that
must have scheduled the kernel is checked by name (``ApplySchedules.applied``), and the outputs
are compared with ``optc.ir.interpret``:

* float32 at rtol 1e-5, atol 1e-5: the vectorized reductions add 16 partial sums lane by lane
  instead of one serial chain, which moves a 768-wide sum by rounding only (~1e-7 relative);
  fast math's tanh / erf / exp approximations are within 3e-7 absolute;
* int8 exactly: ``dynamic_quantize`` must round ties to even exactly as the reference does.

Widths are ragged on purpose (7, 37, 100: partly or not at all vectorizable) next to the
transformer sizes (768).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from optc.backends import compile_graph
from optc.backends.schedules import scheduled_kernels
from optc.ir import Graph, TensorType, interpret

FLOAT_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def scheduled(graph: Graph, **target_options: object) -> tuple[dict[str, str], tvm.IRModule]:
    """(kernel name -> rule that scheduled it, the scheduled module) for the CPU pipeline on ``graph``."""
    return scheduled_kernels(graph, **target_options)


def feeds_for(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {value.name: (rng.standard_normal(value.shape) * 2 + 0.5).astype(np.float32) for value in graph.inputs}


def check(graph: Graph, kernel_rule: str, feeds: dict[str, np.ndarray] | None = None,
          **target_options: object) -> dict[str, str]:
    """Compile ``graph``, assert ``kernel_rule`` scheduled a kernel and the outputs match the interpreter."""
    applied, _ = scheduled(graph, **target_options)
    assert kernel_rule in applied.values(), f"{kernel_rule} scheduled nothing; applied: {applied}"
    feeds = feeds or feeds_for(graph)
    expected = interpret(graph, feeds)
    actual = compile_graph(graph, "cpu", **target_options).run(feeds)
    for name, want in expected.items():
        if want.dtype.kind == "f":
            np.testing.assert_allclose(actual[name], want, **FLOAT_TOLERANCE, err_msg=f"{graph.name} output {name}")
        else:
            np.testing.assert_array_equal(actual[name], want, err_msg=f"{graph.name} output {name}")
    return applied


def vectorized_blocks(module: tvm.IRModule, kernel: str) -> set[str]:
    """The names of the blocks of ``kernel`` that sit directly in a vectorized loop."""
    lines = module[kernel].script().splitlines()
    return {line.split('"')[1] for previous, line in zip(lines, lines[1:])
            if "T.vectorized" in previous and 'T.sblock("' in line}


# ---- row reductions -----------------------------------------------------------------------------


def layer_norm(rows: tuple[int, ...], width: int) -> Graph:
    rng = np.random.default_rng(width)
    graph = Graph("layer_norm")
    x = graph.add_input("x", TensorType((*rows, width), "float32"))
    scale = graph.add_param("scale", rng.standard_normal(width).astype(np.float32))
    bias = graph.add_param("bias", rng.standard_normal(width).astype(np.float32))
    graph.outputs = [graph.op("nn.layer_norm", x, scale, bias, axis=-1, epsilon=1e-5)]
    return graph


@pytest.mark.parametrize(("rows", "width"), [((1, 9), 768), ((2, 5), 100), ((13,), 7), ((3, 4), 48)])
def test_layer_norm_rule_matches_interpreter(rows: tuple[int, ...], width: int) -> None:
    check(layer_norm(rows, width), "RowReduction")


def test_layer_norm_reductions_and_normalize_are_vectorized() -> None:
    """768 = 48 x 16: both sums accumulate vectors of partial sums and the normalize loop is a vector loop."""
    applied, module = scheduled(layer_norm((1, 9), 768))
    kernel = next(name for name, rule in applied.items() if rule == "RowReduction")
    blocks = vectorized_blocks(module, kernel)
    assert {"x_sum_rf_update", "x_var_sum_rf_update", "T_layer_norm"} <= blocks, blocks


def test_layer_norm_with_a_fused_activation_and_symbolic_rows() -> None:
    """FuseOps puts a GELU after a layer norm into its kernel: still one row at a time, for any row count."""
    graph = layer_norm(("tokens",), 96)
    graph.outputs = [graph.op("math.gelu", graph.outputs[0], approximate="tanh")]
    applied, module = scheduled(graph)
    kernel = next(name for name, rule in applied.items() if rule == "RowReduction")
    assert "gelu" in kernel and "T.vectorized" in module[kernel].script()
    compiled = compile_graph(graph, "cpu")
    for tokens in (3, 17):
        feeds = {"x": np.random.default_rng(tokens).standard_normal((tokens, 96)).astype(np.float32)}
        name = graph.outputs[0].name
        np.testing.assert_allclose(compiled.run(feeds)[name], interpret(graph, feeds)[name], **FLOAT_TOLERANCE)


@pytest.mark.parametrize("width", [64, 37])
def test_standalone_softmax_is_a_row_reduction(width: int) -> None:
    graph = Graph("softmax")
    x = graph.add_input("x", TensorType((3, 5, width), "float32"))
    graph.outputs = [graph.op("nn.softmax", x, axis=-1)]
    check(graph, "RowReduction")


def test_rms_norm_and_row_mean() -> None:
    rng = np.random.default_rng(3)
    graph = Graph("rms_norm")
    x = graph.add_input("x", TensorType((6, 48), "float32"))
    scale = graph.add_param("scale", rng.standard_normal(48).astype(np.float32))
    graph.outputs = [graph.op("nn.rms_norm", x, scale, axis=-1, epsilon=1e-6)]
    check(graph, "RowReduction")

    graph = Graph("row_mean")
    x = graph.add_input("x", TensorType((2, 7, 64), "float32"))
    graph.outputs = [graph.op("reduce.mean", x, axes=(-1,), keepdims=True)]
    check(graph, "RowReduction")


def test_reduction_over_a_leading_axis_is_left_to_other_rules() -> None:
    """A sum over axis 0 reads the reduced axis with a stride: not a row reduction."""
    graph = Graph("column_sum")
    x = graph.add_input("x", TensorType((32, 48), "float32"))
    graph.outputs = [graph.op("reduce.sum", x, axes=(0,), keepdims=False)]
    applied, _ = scheduled(graph)
    assert "RowReduction" not in applied.values(), applied
    feeds = feeds_for(graph)
    name = graph.outputs[0].name
    np.testing.assert_allclose(compile_graph(graph, "cpu").run(feeds)[name], interpret(graph, feeds)[name],
                               **FLOAT_TOLERANCE)


# ---- elementwise --------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "approximate"), [((5, 7, 9), "tanh"), ((4, 96), "none"), ((3, 1000), "tanh")])
def test_gelu_rule_matches_interpreter(shape: tuple[int, ...], approximate: str) -> None:
    graph = Graph("gelu")
    x = graph.add_input("x", TensorType(shape, "float32"))
    graph.outputs = [graph.op("math.gelu", x, approximate=approximate)]
    applied = check(graph, "Elementwise")
    _, module = scheduled(graph)
    kernel = next(name for name, rule in applied.items() if rule == "Elementwise")
    if shape[-1] % 4 == 0:
        assert vectorized_blocks(module, kernel), module[kernel].script()


def test_residual_add_after_reshape() -> None:
    graph = Graph("residual")
    x = graph.add_input("x", TensorType((12, 80), "float32"))
    skip = graph.add_input("skip", TensorType((1, 12, 80), "float32"))
    graph.outputs = [graph.op("math.add", graph.op("tensor.reshape", x, shape=(1, 12, 80)), skip)]
    check(graph, "Elementwise")


def test_head_split_and_merge_copies() -> None:
    """(S, H*D) -> (H, S, D) and back: contiguous in vectors of 16 within each head's D."""
    graph = Graph("heads")
    x = graph.add_input("x", TensorType((1, 11, 64), "float32"))
    heads = graph.op("tensor.transpose", graph.op("tensor.reshape", x, shape=(1, 11, 2, 32)), perm=(0, 2, 1, 3))
    merged = graph.op("tensor.reshape", graph.op("tensor.transpose", graph.op("math.tanh", heads), perm=(0, 2, 1, 3)),
                      shape=(11, 64))
    graph.outputs = [merged]
    applied = check(graph, "Elementwise")
    _, module = scheduled(graph)
    for kernel, rule in applied.items():
        if rule == "Elementwise":
            assert vectorized_blocks(module, kernel), module[kernel].script()


def test_split_into_three_outputs() -> None:
    graph = Graph("split")
    x = graph.add_input("x", TensorType((7, 3 * 24), "float32"))
    node = graph.add_node("tensor.split", [graph.op("tensor.reshape", x, shape=(1, 7, 72))],
                          {"axis": -1, "sizes": (24, 24, 24)})
    graph.outputs = list(node.outputs)
    check(graph, "Elementwise")


@pytest.mark.parametrize("shape", [(3, 15, 7), (2, 16, 32)])
def test_odd_sizes_and_transposed_reads(shape: tuple[int, int, int]) -> None:
    """``a * transpose(b)``: nothing divides 3 x 15 x 7 by a vector, and the transposed operand is
    read with a stride along the innermost axis; both keep a scalar inner loop, exact all the same."""
    batch, rows, columns = shape
    graph = Graph("odd")
    a = graph.add_input("a", TensorType((batch, rows, columns), "float32"))
    b = graph.add_input("b", TensorType((batch, columns, rows), "float32"))
    graph.outputs = [graph.op("math.mul", a, graph.op("tensor.transpose", b, perm=(0, 2, 1)))]
    applied = check(graph, "Elementwise")
    _, module = scheduled(graph)
    kernel = next(name for name, rule in applied.items() if rule == "Elementwise")
    assert not vectorized_blocks(module, kernel), module[kernel].script()


def test_concat_along_the_last_axis() -> None:
    """The concat's if_then_else reads one input or the other depending on the column."""
    graph = Graph("concat")
    a = graph.add_input("a", TensorType((4, 32), "float32"))
    b = graph.add_input("b", TensorType((4, 48), "float32"))
    graph.outputs = [graph.op("math.tanh", graph.op("tensor.concat", a, b, axis=-1))]
    check(graph, "Elementwise")


def test_dynamic_quantize_rounds_ties_to_even_like_the_reference() -> None:
    """The quantize kernel is vectorized with ``round`` in place of ``nearbyint``: ties must still go to even."""
    graph = Graph("dynamic_quantize")
    x = graph.add_input("x", TensorType((6, 64), "float32"))
    node = graph.add_node("quant.dynamic_quantize", [x], {})
    graph.outputs = list(node.outputs)
    # max |x| = 127 makes the scale 1: every x.5 is a tie
    values = np.arange(6 * 64, dtype=np.float32).reshape(6, 64) % 20 - 9.5
    values[0, 0] = 127.0
    applied = check(graph, "Elementwise", {"x": values})
    assert "DynamicScale" in applied.values()


# ---- threads ------------------------------------------------------------------------------------


def test_big_kernels_run_their_rows_in_parallel() -> None:
    """A GPT-2-sized layer norm and GELU are worth a thread wake-up: their row loop is parallel
    (and the results do not depend on how the rows are shared out)."""
    norm = layer_norm((1, 640), 768)
    gelu = Graph("gelu")
    x = gelu.add_input("x", TensorType((128, 1024), "float32"))
    gelu.outputs = [gelu.op("math.gelu", x, approximate="tanh")]
    for graph, rule in ((norm, "RowReduction"), (gelu, "Elementwise")):
        applied = check(graph, rule, num_cores=4)
        _, module = scheduled(graph, num_cores=4)
        kernel = next(name for name, used in applied.items() if used == rule)
        assert "T.parallel" in module[kernel].script(), module[kernel].script()


# ---- window pooling (pool.py) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op,attrs,shape", [
    ("nn.max_pool", dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), (1, 64, 32, 32)),  # ResNet's stem pool
    ("nn.max_pool", dict(kernel=(2, 2), strides=(2, 2)), (2, 32, 62, 62)),  # batch 2, no padding
    ("nn.avg_pool", dict(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)), (1, 32, 28, 28)),  # stride 1: rows vectorized
], ids=["max_s2_padded", "max_batch2", "avg_s1_padded"])
def test_pools_are_scheduled_per_plane_and_match_the_reference(op: str, attrs: dict, shape: tuple) -> None:
    graph = Graph(op.split(".")[1])
    x = graph.add_input("x", TensorType(shape, "float32"))
    graph.outputs = [graph.op(op, x, **attrs)]
    check(graph, "Pool2d")


def test_small_pools_are_left_alone() -> None:
    """Below a thread wake-up's worth of work, one plane at a time measured slower than the plain loops."""
    graph = Graph("small_pool")
    x = graph.add_input("x", TensorType((2, 8, 15, 15), "float32"))
    graph.outputs = [graph.op("nn.max_pool", x, kernel=(2, 2), strides=(2, 2))]
    assert "Pool2d" not in scheduled(graph)[0].values()
