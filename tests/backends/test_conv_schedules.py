"""The CPU conv schedules on the shapes MobileNetV2 and ResNet have, checked against the interpreter.

Each case is a conv (with its bias, activation and, where asked, a residual add fused into the
kernel) compiled with the default schedules and compared with ``optc.ir.interpret`` at rtol 1e-4,
atol 1e-5. Which path a kernel took (flat-pixel vectors, channel tiles with a packed weight,
per-channel depthwise planes) is checked on the scheduled TIR, so a shape meant for one path
cannot silently test another.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, tirx

from optc.backends import compile_graph, get_target
from optc.backends.lower import lower_graph
from optc.backends.schedules import Conv2d, DepthwiseConv2d, schedule_func
from optc.backends.schedules.conv import LAYOUT_REWRITE_PREPROC
from optc.backends.schedules.conv_pixels import pixel_lanes, pixel_tile
from optc.backends.targets.cpu import _cpuinfo_flags
from optc.ir import Graph, TensorType, interpret

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
AVX512 = "avx512f" in (_cpuinfo_flags() or ())


def conv(channels: int, size: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1,
         pad: int | None = None, activation: str = "relu6", residual: bool = False, batch: int = 1) -> Graph:
    """x -> conv(+bias, activation) [-> + skip]: the fused kernels of MobileNetV2's blocks."""
    rng = np.random.default_rng(channels * 1000 + out_channels * 10 + kernel)
    graph = Graph("conv")
    x = graph.add_input("x", TensorType((batch, channels, size, size), "float32"))
    fan_in = channels // groups * kernel * kernel
    weight = graph.add_param("w", (rng.standard_normal((out_channels, channels // groups, kernel, kernel))
                                   / np.sqrt(fan_in)).astype(np.float32))
    bias = graph.add_param("b", (0.1 * rng.standard_normal(out_channels)).astype(np.float32))
    pad = kernel // 2 if pad is None else pad
    y = graph.op("nn.conv", x, weight, bias, strides=(stride, stride), pads=(pad,) * 4, groups=groups,
                 activation=activation)
    if residual:
        y = graph.op("math.add", y, graph.add_input("skip", TensorType(tuple(y.shape), "float32")))
    graph.outputs = [y]
    return graph


def feeds_for(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {value.name: rng.standard_normal(value.shape).astype(np.float32) for value in graph.inputs}


def check(graph: Graph, **target_options: object) -> None:
    feeds = feeds_for(graph)
    expected = interpret(graph, feeds)
    model = compile_graph(graph, "cpu", **target_options)
    for _ in range(2):  # a second run sees the same (load-time packed) weights
        actual = model.run(feeds)
        for name, want in expected.items():
            np.testing.assert_allclose(actual[name], want, **TOLERANCE, err_msg=f"{graph.name} output {name}")


def scheduled_kernel(graph: Graph, **target_options: object) -> tuple[tirx.PrimFunc, str]:
    """The conv kernel of ``graph`` after ``zero``, scheduled by the default rules: (func, rule)."""
    target = get_target("cpu", **target_options)
    module = lower_graph(graph)
    with target.tvm_target():
        module = tvm.transform.Sequential(target.fusion_passes())(module)
    for gvar, func in module.functions_items():
        if isinstance(func, tirx.PrimFunc) and gvar.name_hint.startswith(("fused_conv2d", "conv2d")):
            result = schedule_func(func, target.tvm_target())
            assert result is not None, f"no rule scheduled {gvar.name_hint}"
            return result
    raise AssertionError("no conv kernel")


def takes_pixel_path(func: tirx.PrimFunc) -> bool:
    """The pixel path keeps the conv result as [N, C, H*W] (3 dims)."""
    sch = s_tir.Schedule(func)
    return any(len(buffer.shape) == 3 for buffer in sch.get(sch.get_sblock("root")).alloc_buffers)


def packs_weight(func: tirx.PrimFunc) -> bool:
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    return any(LAYOUT_REWRITE_PREPROC in sch.get(block).annotations for block in blocks)


# ---- pointwise convs over flat pixels --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "size", "out_channels", "activation", "residual", "batch"),
    [
        (24, 8, 36, "relu6", False, 1),  # expand: 6-channel tiles, 64 pixels
        (36, 8, 24, "none", True, 1),  # project with the residual add in the tile
        (16, 12, 20, "relu6", True, 1),  # 144 pixels: tiles that straddle rows; 20 channels (4-channel tiles)
        (8, 8, 7, "relu", False, 2),  # 7 channels (1-channel tiles), batch 2
        (13, 4, 16, "none", False, 3),  # 13 input channels, 16 pixels = one vector, batch 3
    ],
)
def test_pointwise_convs_over_flat_pixels_match_interpreter(channels: int, size: int, out_channels: int,
                                                            activation: str, residual: bool, batch: int) -> None:
    graph = conv(channels, size, out_channels, activation=activation, residual=residual, batch=batch)
    func, rule = scheduled_kernel(graph, mcpu="x86-64-v3")  # 8 lanes: the pixel counts above hold whole vectors
    assert rule == "Conv2d" and takes_pixel_path(func)
    check(graph, mcpu="x86-64-v3")


def test_pointwise_conv_without_epilogue_writes_the_output_directly() -> None:
    """No bias, no activation: the conv block itself writes the function output."""
    rng = np.random.default_rng(3)
    graph = Graph("bare_conv")
    x = graph.add_input("x", TensorType((1, 12, 8, 8), "float32"))
    weight = graph.add_param("w", (rng.standard_normal((18, 12, 1, 1)) / np.sqrt(12)).astype(np.float32))
    graph.outputs = [graph.op("nn.conv", x, weight, strides=(1, 1), pads=(0, 0, 0, 0), groups=1)]
    func, _ = scheduled_kernel(graph, mcpu="x86-64-v3")
    assert takes_pixel_path(func)
    check(graph, mcpu="x86-64-v3")


@pytest.mark.skipif(not AVX512, reason="needs AVX-512")
def test_pointwise_conv_with_16_lane_pixel_vectors() -> None:
    graph = conv(24, 8, 48, residual=False)  # 64 pixels: 4 vectors of 16
    func, _ = scheduled_kernel(graph, mcpu="x86-64-v4")
    assert takes_pixel_path(func)
    check(graph, mcpu="x86-64-v4")
    check(conv(48, 12, 24, activation="none", residual=True), mcpu="x86-64-v4")  # 144 pixels, 9 vectors


@pytest.mark.skipif(not AVX512, reason="needs AVX-512")
@pytest.mark.parametrize(("channels", "out_channels", "residual"), [(16, 48, False), (48, 16, True), (8, 20, False)])
def test_pointwise_conv_with_one_row_per_vector(channels: int, out_channels: int, residual: bool) -> None:
    """14x14 planes: 196 pixels are no whole 16-lane vectors, so each vector is a 14-pixel row."""
    graph = conv(channels, 14, out_channels, residual=residual, activation="relu6")
    func, _ = scheduled_kernel(graph, mcpu="x86-64-v4")
    assert takes_pixel_path(func)
    check(graph, mcpu="x86-64-v4")


def test_pixel_vectors_are_whole_vectors_or_nearly_full_rows() -> None:
    assert pixel_lanes(56, 56, 16) == 16 and pixel_lanes(12, 12, 16) == 16
    assert pixel_lanes(14, 14, 16) == 14  # a row fills 14 of 16 lanes
    assert pixel_lanes(7, 7, 16) is None and pixel_lanes(7, 7, 8) is None  # left to the channel tiles
    assert pixel_lanes(14, 14, 8) is None


def test_pixel_tiles_divide_the_channels_and_the_pixel_vectors() -> None:
    for channels, pixels, lanes in [(24, 3136, 16), (144, 784, 16), (16, 12544, 16), (20, 64, 8), (7, 16, 8)]:
        tile = pixel_tile(channels, pixels, lanes)
        assert channels % tile.channels == 0 and (pixels // lanes) % tile.vectors == 0
        assert tile.channels * tile.vectors <= 24  # accumulators stay in registers


# ---- convs on the channel tiles, weights packed at load time ------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "size", "out_channels", "kernel", "stride", "pad", "residual"),
    [
        (32, 7, 48, 1, 1, 0, True),  # 7x7 plane: no whole pixel vectors, channel tiles
        (16, 14, 32, 1, 1, 0, False),  # 14x14 plane
        (16, 9, 24, 1, 1, 1, False),  # a padded 1x1: the padding copy stays
        (16, 10, 32, 1, 2, 0, False),  # strided 1x1 (downsample): no pixel vectors
        (3, 17, 16, 3, 2, 1, False),  # stem: 3 input channels, stride 2, padding
        (16, 9, 24, 3, 1, 1, True),  # 3x3 with a residual epilogue
    ],
)
def test_channel_tiled_convs_match_interpreter(channels: int, size: int, out_channels: int, kernel: int, stride: int,
                                               pad: int, residual: bool) -> None:
    graph = conv(channels, size, out_channels, kernel, stride, pad=pad, residual=residual)
    func, rule = scheduled_kernel(graph, mcpu="x86-64-v3")
    assert rule == "Conv2d" and not takes_pixel_path(func)
    check(graph, mcpu="x86-64-v3")


@pytest.mark.parametrize(("channels", "size"), [(3, 24), (4, 16)])
def test_short_reductions_vectorized_along_rows_match_interpreter(channels: int, size: int) -> None:
    """3x3 convs with a reduction of 27-36, stride 1: output rows in vectors, nothing packed."""
    graph = conv(channels, size, 16, 3, 1, activation="relu6")
    func, rule = scheduled_kernel(graph, mcpu="x86-64-v3")
    assert rule == "Conv2d" and not takes_pixel_path(func) and not packs_weight(func)
    check(graph, mcpu="x86-64-v3")


def test_packed_conv_weights_move_to_load_time() -> None:
    """The weight packing of a channel-tiled conv leaves ``main``: ``main_transform_params`` runs it once."""
    graph = conv(16, 14, 32, 3)
    func, _ = scheduled_kernel(graph, mcpu="x86-64-v3")
    assert packs_weight(func)
    target = get_target("cpu", mcpu="x86-64-v3")
    module = lower_graph(graph)
    with target.tvm_target():
        module = tvm.transform.Sequential(target.relax_passes())(module)
    names = {gvar.name_hint for gvar in module.get_global_vars()}
    assert "main_transform_params" in names
    prepack = [gvar for gvar in module.get_global_vars() if gvar.name_hint.endswith("_weight_prepack")]
    assert prepack, f"no weight prepack kernel in {sorted(names)}"
    called_in_main: list[str] = []
    relax.analysis.post_order_visit(module["main"].body, lambda node: called_in_main.append(node.name_hint)
                                    if isinstance(node, relax.GlobalVar) else None)
    assert not any(name.endswith("_weight_prepack") for name in called_in_main)
    check(graph, mcpu="x86-64-v3")


# ---- depthwise ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "size", "stride", "residual", "batch"),
    [
        (16, 14, 1, False, 1),  # 14-wide rows
        (24, 7, 1, True, 1),  # 7x7 plane, residual epilogue
        (16, 16, 1, False, 1),  # rows of whole vectors
        (8, 15, 2, False, 1),  # stride 2, odd size
        (12, 28, 2, False, 1),  # stride 2, 12 channels (no multiple of 8)
    ],
)
def test_depthwise_convs_match_interpreter(channels: int, size: int, stride: int, residual: bool, batch: int) -> None:
    graph = conv(channels, size, channels, 3, stride, groups=channels, residual=residual, batch=batch)
    _, rule = scheduled_kernel(graph, mcpu="x86-64-v3")
    assert rule == "DepthwiseConv2d"
    check(graph, mcpu="x86-64-v3")


@pytest.mark.skipif(not AVX512, reason="needs AVX-512")
@pytest.mark.parametrize(("size", "stride"), [(14, 1), (28, 1), (28, 2), (14, 2), (56, 1)])
def test_depthwise_rows_with_16_lane_vectors(size: int, stride: int) -> None:
    """Whole 14- and 28-wide rows per step (stride 1), whole 14- and 7-wide output rows (stride 2)."""
    graph = conv(16, size, 16, 3, stride, groups=16, residual=stride == 1)
    _, rule = scheduled_kernel(graph, mcpu="x86-64-v4")
    assert rule == "DepthwiseConv2d"
    check(graph, mcpu="x86-64-v4")


@pytest.mark.skipif(not AVX512, reason="needs AVX-512")
def test_rgb_stem_with_stride_2_rows_on_16_lanes() -> None:
    """3 -> 16 channels, 3x3/2: output rows of 32 in 16-lane vectors, the input rows gathered."""
    graph = conv(3, 64, 16, 3, 2, activation="relu6")
    func, rule = scheduled_kernel(graph, mcpu="x86-64-v4")
    assert rule == "Conv2d" and not takes_pixel_path(func) and not packs_weight(func)
    check(graph, mcpu="x86-64-v4")
