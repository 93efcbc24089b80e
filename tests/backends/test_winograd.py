"""Winograd F(4x4, 3x3) for float32 3x3 stride-1 convs (backends/schedules/winograd.py):
the transform matrices, which convs the rewrite takes, and the compiled kernels against the
reference interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from optc.backends import compile_graph, get_target
from optc.backends.lower import lower_graph
from optc.backends.schedules import schedule_func
from optc.backends.schedules.winograd import R, WinogradShape, choose_tile, is_winograd_kernel, matrices, worth_it
from optc.backends.targets.cpu import _cpuinfo_flags
from optc.ir import Graph, TensorType, interpret

AVX512 = "avx512f" in (_cpuinfo_flags() or ())
needs_avx512 = pytest.mark.skipif(not AVX512, reason="the rewrite runs on AVX-512 targets only")
# Winograd reassociates the sums (transforms of up to 6 terms with coefficients up to 8): a few
# ulps of the largest partial sum per output, not of the output itself
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def conv3x3(channels: int, size: int | tuple[int, int], filters: int, pads: tuple[int, int, int, int] = (1, 1, 1, 1),
            activation: str = "relu", residual: bool = False, batch: int = 1, stride: int = 1) -> Graph:
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(channels * 100 + filters + height)
    graph = Graph("conv3x3")
    x = graph.add_input("x", TensorType((batch, channels, height, width), "float32"))
    weight = graph.add_param("w", (rng.standard_normal((filters, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32))
    bias = graph.add_param("b", (0.1 * rng.standard_normal(filters)).astype(np.float32))
    y = graph.op("nn.conv", x, weight, bias, strides=(stride, stride), pads=pads, activation=activation)
    if residual:
        y = graph.op("math.add", y, graph.add_input("skip", TensorType(tuple(y.shape), "float32")))
    graph.outputs = [y]
    return graph


def fused_kernels(graph: Graph, **target_options: object) -> dict[str, str | None]:
    """Kernel name -> the default rule that schedules it (None: no rule), after the CPU fusion passes."""
    target = get_target("cpu", **target_options)
    with target.tvm_target():
        module = tvm.transform.Sequential(target.fusion_passes())(lower_graph(graph))
    rules: dict[str, str | None] = {}
    for gvar, func in module.functions_items():
        if isinstance(func, tirx.PrimFunc):
            result = schedule_func(func, target.tvm_target())
            rules[gvar.name_hint] = result[1] if result is not None else None
    return rules


def check(graph: Graph, **target_options: object) -> None:
    rng = np.random.default_rng(1)
    feeds = {value.name: rng.standard_normal(value.shape).astype(np.float32) for value in graph.inputs}
    expected = interpret(graph, feeds)
    model = compile_graph(graph, "cpu", **target_options)
    for _ in range(2):  # the second run reads the same load-time transformed weight
        actual = model.run(feeds)
        for name, want in expected.items():
            np.testing.assert_allclose(actual[name], want, **TOLERANCE, err_msg=f"output {name}")


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_the_3x3_correlation_of_a_tile(m: int) -> None:
    a, b, g = matrices(m)
    alpha = m + R - 1
    assert a.shape == (alpha, m) and b.shape == (alpha, alpha) and g.shape == (alpha, R)
    rng = np.random.default_rng(0)
    tile, kernel = rng.standard_normal((alpha, alpha)), rng.standard_normal((3, 3))
    winograd = a.T @ ((g @ kernel @ g.T) * (b.T @ tile @ b)) @ a
    direct = np.array([[np.sum(tile[i:i + 3, j:j + 3] * kernel) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(winograd, direct, rtol=1e-12, atol=1e-12)


def test_shapes_it_takes_and_refuses() -> None:
    assert worth_it(WinogradShape(64, 64, 56, 56, (1, 1, 1, 1)))  # 196 tiles
    assert worth_it(WinogradShape(128, 128, 28, 28, (1, 1, 1, 1)))  # 49 tiles
    assert not worth_it(WinogradShape(256, 256, 14, 14, (1, 1, 1, 1)))  # 16 tiles: weight bytes dominate
    assert worth_it(WinogradShape(256, 256, 14, 14, (1, 1, 1, 1), m=2))  # F(2x2, 3x3): 49 tiles
    assert not worth_it(WinogradShape(512, 512, 7, 7, (1, 1, 1, 1), m=2))  # 16 tiles
    assert not worth_it(WinogradShape(64, 64, 49, 9, (1, 1, 1, 1)))  # 13x3 tiles for 49x9 outputs: 41% waste
    assert not worth_it(WinogradShape(8, 64, 56, 56, (1, 1, 1, 1)))  # 8 input channels: nothing to amortize
    assert choose_tile(WinogradShape(64, 40, 56, 56, (1, 1, 1, 1))) is None  # 40 filters: no whole vectors
    tile = choose_tile(WinogradShape(64, 64, 56, 56, (1, 1, 1, 1)))
    assert tile is not None and 14 % tile.mr == 0 and tile.mr * tile.vectors <= 16 and 64 % tile.nr == 0


@needs_avx512
@pytest.mark.parametrize(
    ("channels", "size", "filters", "pads", "activation", "residual"),
    [
        (16, 24, 32, (1, 1, 1, 1), "relu", False),  # 6x6 tiles, whole
        (32, 26, 16, (1, 1, 1, 1), "none", True),  # 26 = 6.5 tiles: the last tile row and column ragged
        (16, (30, 34), 16, (0, 0, 0, 0), "relu6", False),  # no padding, a non-square plane
        (16, 25, 32, (2, 1, 0, 1), "relu", True),  # asymmetric padding
        (32, 14, 32, (1, 1, 1, 1), "relu", True),  # 16 tiles of 4x4: F(2x2, 3x3) with 49 tiles
        (16, 13, 16, (1, 1, 1, 1), "none", False),  # F(2x2, 3x3), ragged: 7x7 tiles for 13x13
    ],
)
def test_winograd_convs_match_interpreter(channels: int, size, filters: int, pads: tuple[int, int, int, int],
                                          activation: str, residual: bool) -> None:
    graph = conv3x3(channels, size, filters, pads, activation, residual)
    rules = fused_kernels(graph)
    winograd = {name: rule for name, rule in rules.items() if "winograd_conv2d" in name}
    assert list(winograd.values()) == ["WinogradConv2d"], rules
    fused = next(iter(winograd))
    # bias, activation and residual add are the kernel's epilogue, not kernels of their own
    assert "add" in fused and (activation == "none") != ("relu" in fused or "maximum" in fused), rules
    assert not any(name.startswith("fused_") and "winograd" not in name for name in rules), rules
    # optc tune leaves both Winograd kernels out of MetaSchedule's tasks, by name
    assert sum(is_winograd_kernel(name) for name in rules) == 2, rules
    check(graph)


@needs_avx512
@pytest.mark.parametrize(
    ("graph", "why"),
    [
        (conv3x3(16, 24, 32, stride=2), "stride 2"),
        (conv3x3(16, 24, 32, batch=2), "batch 2"),
        (conv3x3(16, 10, 32), "25 tiles of 2x2"),
        (conv3x3(16, 24, 24), "24 filters"),
    ],
)
def test_other_convs_stay_direct(graph: Graph, why: str) -> None:
    rules = fused_kernels(graph)
    assert not any("winograd" in name for name in rules), f"{why}: {rules}"
    assert "Conv2d" in rules.values(), rules


def test_no_rewrite_without_avx512() -> None:
    graph = conv3x3(16, 24, 32)
    assert not any("winograd" in name for name in fused_kernels(graph, mcpu="x86-64-v3"))
    check(graph, mcpu="x86-64-v3")


@needs_avx512
def test_weight_transform_runs_at_load_time() -> None:
    graph = conv3x3(16, 24, 32)
    target = get_target("cpu")
    with target.tvm_target():
        module = tvm.transform.Sequential(target.relax_passes())(lower_graph(graph))
    called_in_main: list[str] = []
    relax.analysis.post_order_visit(module["main"].body, lambda node: called_in_main.append(node.name_hint)
                                    if isinstance(node, relax.GlobalVar) else None)
    called_at_load: list[str] = []
    relax.analysis.post_order_visit(module["main_transform_params"].body, lambda node: called_at_load.append(
        node.name_hint) if isinstance(node, relax.GlobalVar) else None)
    assert any("winograd_weight" in name for name in called_at_load), called_at_load
    assert not any("winograd_weight" in name for name in called_in_main), called_in_main
    assert any("winograd_conv2d" in name for name in called_in_main), called_in_main


@needs_avx512
def test_multi_entry_modules_keep_the_direct_conv() -> None:
    """compile_entries' modules keep their weights unlifted: a filter transform would run per call."""
    from optc.backends.schedules.winograd import WinogradRewrite  # noqa: PLC0415

    module = lower_graph(conv3x3(16, 24, 32))
    with get_target("cpu").tvm_target():
        assert any("winograd" in gvar.name_hint for gvar in WinogradRewrite()(module).get_global_vars())
        second = tvm.IRModule({**{gvar: func for gvar, func in module.functions_items()},
                               relax.GlobalVar("step"): module["main"]})
        assert not any("winograd" in gvar.name_hint for gvar in WinogradRewrite()(second).get_global_vars())


@needs_avx512
def test_unscheduled_winograd_kernel_is_correct() -> None:
    """With schedules off the TE runs as written: every read stays inside its stage's buffer."""
    graph = conv3x3(16, 26, 16, residual=True)
    assert any("winograd" in name for name in fused_kernels(graph, schedules=False))
    check(graph, schedules=False)
