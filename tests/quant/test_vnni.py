"""int8 kernels on AVX-512 VNNI (``backends/schedules/vnni.py``): bit-exact, used only where the target has VNNI.

Every product is compiled twice, for the host level with ``+avx512vnni`` (the VNNI kernels) and
with ``mattr=()`` (the integer schedules of quant.py), and both are compared bit for bit with the
reference interpreter. Running the VNNI build needs a CPU with avx512_vnni; compiling it does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from optc.backends import compile_graph
from optc.backends.lower import lower_graph
from optc.backends.schedules import scheduled_kernels
from optc.backends.schedules.vnni import VnniConfig, VnniDense
from optc.backends.targets import cpu as cpu_target
from optc.backends.targets import get_target
from optc.ir import Graph, TensorType, interpret

from .models import mlp_feeds, small_mlp

HOST_HAS_VNNI = "avx512_vnni" in (cpu_target._cpuinfo_flags() or frozenset())
HOST_LEVEL = cpu_target.detect_host_mcpu()
needs_vnni_cpu = pytest.mark.skipif(not HOST_HAS_VNNI, reason="the host CPU has no avx512_vnni to run VNNI code")
needs_avx512_level = pytest.mark.skipif(HOST_LEVEL != "x86-64-v4", reason="VNNI builds need the x86-64-v4 level")

VNNI = {"mcpu": "x86-64-v4", "mattr": ("+avx512vnni",)}
PLAIN = {"mcpu": "x86-64-v4", "mattr": ()}
SEED = 11


def applied_rules(graph: Graph, **options: object) -> list[str]:
    """The schedule rule chosen for each kernel of ``graph`` on the cpu target with ``options``."""
    return sorted(scheduled_kernels(graph, **options)[0].values())


# ---- the target --------------------------------------------------------------------------------------------

def test_host_features_add_vnni_only_on_a_level_that_has_avx512(monkeypatch) -> None:
    flags = frozenset({"avx512_vnni", "avx_vnni", "avx512_bf16", "avx512f"})
    monkeypatch.setattr(cpu_target, "_cpuinfo_flags", lambda: flags)
    monkeypatch.setattr(cpu_target.platform, "machine", lambda: "x86_64")
    assert cpu_target.detect_host_mattr("x86-64-v4") == ("+avx512vnni", "+avx512bf16", "+avxvnni")
    assert cpu_target.detect_host_mattr("x86-64-v3") == ("+avxvnni",)  # no AVX-512 features below v4
    assert cpu_target.detect_host_mattr("znver4") == ()  # named CPUs bring their own features
    monkeypatch.setattr(cpu_target, "_cpuinfo_flags", lambda: frozenset({"avx512f"}))
    assert cpu_target.detect_host_mattr("x86-64-v4") == ()


@pytest.mark.skipif(cpu_target.platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 targets")
def test_the_target_description_names_its_features() -> None:
    vnni, plain = get_target("cpu", **VNNI), get_target("cpu", **PLAIN)
    assert "+avx512vnni" in str(vnni.tvm_target()) and vnni.describe()["mattr"] == ["+avx512vnni"]
    assert "mattr" not in str(plain.tvm_target()) and plain.describe()["mattr"] == []


# ---- dense ---------------------------------------------------------------------------------------------------

DENSE_CASES = {  # name: (activation shape, N, activation dtype)
    "rows64": ((1, 64, 256), 512, "int8"),
    "ragged_n": ((1, 12, 64), 72, "int8"),  # 4 x 16 columns + a tail of 8; 12 rows: a short last tile
    "uint8": ((16, 128), 64, "uint8"),
    "batched": ((2, 5, 32), 48, "int8"),
}


def dense_graph() -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(SEED)
    graph = Graph("vnni_dense")
    feeds, outputs = {}, []
    for name, (shape, columns, dtype) in DENSE_CASES.items():
        x = graph.add_input(name, TensorType(shape, dtype))
        low = -128 if dtype == "int8" else 0
        feeds[name] = rng.integers(low, low + 256, shape).astype(dtype)
        weight = graph.add_param(f"{name}_w", rng.integers(-127, 128, (shape[-1], columns)).astype(np.int8))
        bias = graph.add_param(f"{name}_b", rng.integers(-5000, 5000, columns).astype(np.int32))
        outputs.append(graph.op("quant.linear", x, weight, bias, name=f"{name}_linear"))
    graph.outputs = outputs
    return graph, feeds


def conv_cases() -> dict[str, dict]:
    return {  # name: input shape, output channels, kernel, attrs, dtype
        "k3": dict(shape=(1, 32, 14, 14), filters=32, kernel=3, attrs=dict(pads=(1, 1, 1, 1)), dtype="int8"),
        "k1": dict(shape=(1, 64, 7, 7), filters=16, kernel=1, attrs={}, dtype="int8"),
        # pointwise form (>= 128 pixels), 169 pixels: a ragged last vector of 9
        "k1_ragged": dict(shape=(1, 16, 13, 13), filters=24, kernel=1, attrs={}, dtype="int8"),
        "k3s2": dict(shape=(1, 16, 15, 15), filters=32, kernel=3, attrs=dict(pads=(1, 1, 1, 1), strides=(2, 2)), dtype="int8"),
        "rgb": dict(shape=(1, 3, 16, 16), filters=16, kernel=3, attrs=dict(pads=(1, 1, 1, 1)), dtype="int8"),  # C % 4 != 0
        "uint8": dict(shape=(1, 20, 9, 11), filters=16, kernel=3, attrs=dict(pads=(0, 1, 2, 1), strides=(2, 1)), dtype="uint8"),
        "dilated": dict(shape=(1, 8, 12, 12), filters=16, kernel=3, attrs=dict(pads=(2, 2, 2, 2), dilations=(2, 2)), dtype="int8"),
    }


def conv_graph(bias: bool = True) -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(SEED + 1)
    graph = Graph("vnni_conv")
    feeds, outputs = {}, []
    for name, case in conv_cases().items():
        shape, filters, kernel, dtype = case["shape"], case["filters"], case["kernel"], case["dtype"]
        x = graph.add_input(name, TensorType(shape, dtype))
        low = -128 if dtype == "int8" else 0
        feeds[name] = rng.integers(low, low + 256, shape).astype(dtype)
        inputs = [x, graph.add_param(f"{name}_w", rng.integers(-127, 128, (filters, shape[1], kernel, kernel)).astype(np.int8))]
        if bias:
            inputs.append(graph.add_param(f"{name}_b", rng.integers(-5000, 5000, filters).astype(np.int32)))
        outputs.append(graph.op("quant.conv", *inputs, name=f"{name}_conv", **case["attrs"]))
    graph.outputs = outputs
    return graph, feeds


@pytest.fixture(scope="module")
def dense_builds():
    graph, feeds = dense_graph()
    return graph, feeds, {kind: compile_graph(graph, "cpu", **options) for kind, options in (("vnni", VNNI), ("plain", PLAIN))}


@needs_avx512_level
def test_vnni_rules_apply_only_to_targets_with_vnni() -> None:
    graph, _ = dense_graph()
    conv, _ = conv_graph()
    assert applied_rules(graph, **VNNI).count("VnniDense") == len(DENSE_CASES)
    assert "VnniDense" not in applied_rules(graph, **PLAIN)
    assert applied_rules(conv, **VNNI).count("VnniConv2d") == len(conv_cases())
    assert "VnniConv2d" not in applied_rules(conv, **PLAIN)


@needs_vnni_cpu
@needs_avx512_level
@pytest.mark.parametrize("kind", ["vnni", "plain"])
def test_dense_products_are_bit_exact(dense_builds, kind: str) -> None:
    graph, feeds, builds = dense_builds
    got, want = builds[kind].run(feeds), interpret(graph, feeds)
    for value in graph.outputs:
        assert np.array_equal(got[value.name], want[value.name]), f"{kind}: {value.name}"


def _int32_products(graph: Graph, config: VnniConfig) -> list[int]:
    """Per dense kernel of ``graph`` scheduled by VnniDense: how many int32 buffers its root allocates."""
    module = lower_graph(graph)
    counts = []
    cpu = get_target("cpu", **VNNI)
    with cpu.tvm_target() as target:
        module = tvm.transform.Sequential(cpu.fusion_passes())(module)
        for _, func in module.functions_items():
            sch = VnniDense(config).apply(func, target, False) if hasattr(func, "body") else None
            if sch is not None:
                root = sch.mod["main"].body.block
                counts.append(sum(str(buffer.dtype) == "int32" for buffer in root.alloc_buffers))
    return counts


@needs_avx512_level
def test_dense_epilogues_are_folded_into_the_kernel_stores() -> None:
    """With an epilogue (the bias add here; dequantize, GELU... in models) the kernel stores finished
    values: no int32 product in memory. Unfolded, each kernel allocates one (the old form)."""
    graph, _ = dense_graph()
    assert _int32_products(graph, VnniConfig()) == [0] * len(DENSE_CASES)
    assert _int32_products(graph, VnniConfig(fold_epilogue=False)) == [1] * len(DENSE_CASES)


@needs_vnni_cpu
@needs_avx512_level
@pytest.mark.parametrize("bias", [True, False], ids=["epilogue", "no_epilogue"])
def test_convolutions_are_bit_exact(bias: bool) -> None:
    """3x3, 1x1, stride 2, padding (asymmetric too), dilation, 3 input channels, uint8 input;
    without a bias the conv result is the kernel's own output (NCHW stores, no epilogue)."""
    graph, feeds = conv_graph(bias)
    want = interpret(graph, feeds)
    for options in (VNNI, PLAIN):
        got = compile_graph(graph, "cpu", **options).run(feeds)
        for value in graph.outputs:
            assert np.array_equal(got[value.name], want[value.name]), f"{options['mattr']}: {value.name}"


@needs_avx512_level
def test_the_vnni_build_uses_vpdpbusd_and_the_plain_one_does_not() -> None:
    graph, _ = dense_graph()
    sources = {}
    for kind, options in (("vnni", VNNI), ("plain", PLAIN)):
        executable = get_target("cpu", **options).build(lower_graph(graph))
        sources[kind] = "\n".join(module.inspect_source("asm") for module in executable.mod.imports)
    assert "vpdpbusd" in sources["vnni"]
    assert "vpdpbusd" not in sources["plain"]


def depthwise_graph() -> tuple[Graph, dict[str, np.ndarray]]:
    """Depthwise int8 convs of the shapes the VNNI depthwise kernel handles (stride 1 and 2, a ragged
    7-wide plane with dilation 2, uint8 input, 3x1 taps, an explicit zero-point pad before it), some
    requantized per channel, and a 5x5 one it leaves to ``IntegerDepthwiseConv2d`` (kernel rows
    wider than 4 bytes)."""
    rng = np.random.default_rng(SEED + 7)
    graph = Graph("depthwise")
    feeds, outputs = {}, []
    cases = {  # name: (input shape, dtype, kernel (h, w), attrs, requantized)
        "s1": ((1, 48, 18, 18), "int8", (3, 3), dict(strides=(1, 1), pads=(1, 1, 1, 1)), True),
        "s2": ((1, 32, 35, 35), "int8", (3, 3), dict(strides=(2, 2), pads=(1, 1, 1, 1)), False),
        "dilated": ((1, 24, 7, 7), "int8", (3, 3), dict(dilations=(2, 2), pads=(2, 2, 2, 2)), True),
        "unsigned": ((1, 16, 20, 40), "uint8", (3, 1), dict(pads=(0, 0, 0, 0)), False),
        "wide": ((1, 16, 12, 12), "int8", (5, 5), dict(pads=(2, 2, 2, 2)), False),
        # static int8's explicit zero-point pad (tensor.pad, value -77) before the conv: the kernel pads
        "zero_point": ((1, 32, 14, 14), "int8", (3, 3), dict(pads=(1, 2, 2, 1)), True),
    }
    for name, (shape, dtype, kernel, attrs, requantized) in cases.items():
        channels = shape[1]
        x = graph.add_input(name, TensorType(shape, dtype))
        low = -128 if dtype == "int8" else 0
        feeds[name] = rng.integers(low, low + 256, shape).astype(dtype)
        if name == "zero_point":
            top, left, bottom, right = attrs.pop("pads")
            x = graph.op("tensor.pad", x, pads=(0, 0, top, left, 0, 0, bottom, right), value=-77.0)
        weight = graph.add_param(f"{name}_w", rng.integers(-127, 128, (channels, 1, *kernel)).astype(np.int8))
        bias = graph.add_param(f"{name}_b", rng.integers(-5000, 5000, channels).astype(np.int32))
        out = graph.op("quant.conv", x, weight, bias, groups=channels, name=f"{name}_conv", **attrs)
        if requantized:
            multiplier = graph.add_param(f"{name}_m", rng.integers(1 << 29, 1 << 30, channels).astype(np.int32))
            shift = graph.add_param(f"{name}_s", rng.integers(36, 40, channels).astype(np.int32))
            out = graph.op("quant.requantize", out, multiplier, shift, axis=1, zero_point=-3)
        outputs.append(out)
    graph.outputs = outputs
    return graph, feeds


@needs_vnni_cpu
def test_depthwise_int8_convs_run_on_vpdpbusd_and_are_bit_exact() -> None:
    graph, feeds = depthwise_graph()
    # one kernel per conv: the explicit pad is the conv kernel's own (no Elementwise pad kernel)
    assert applied_rules(graph, **VNNI) == ["IntegerDepthwiseConv2d"] + ["VnniDepthwiseConv2d"] * 5
    assert applied_rules(graph, **PLAIN) == ["IntegerDepthwiseConv2d"] * 6
    want = interpret(graph, feeds)
    for options in (VNNI, PLAIN):
        got = compile_graph(graph, "cpu", **options).run(feeds)
        for value in graph.outputs:
            assert np.array_equal(got[value.name], want[value.name]), f"{options['mattr']}: {value.name}"


def static_mlp(seed: int = 0, width: int = 64, hidden: int = 256) -> Graph:
    """``models.small_mlp`` with a static batch of 2 (the VNNI rules need static row counts)."""
    return small_mlp(seed, width, hidden, batch=2)


def quantized(graph: Graph, **options: object) -> Graph:
    from optc.passes import PassManager
    from optc.passes.quant import Quantize

    copy = graph.clone()
    PassManager([Quantize(**options)], verify=True, check_numerics=False).run(copy)
    return copy


@needs_vnni_cpu
@needs_avx512_level
def test_dynamic_int8_mlp_runs_on_vnni_and_matches_the_reference() -> None:
    dynamic = quantized(static_mlp(), method="dynamic")
    rules = applied_rules(dynamic, **VNNI)
    assert rules.count("VnniDense") == 2 and rules.count("DynamicScale") == 2
    feeds = mlp_feeds(1, seed=3, batch=2)[0]
    got = compile_graph(dynamic, "cpu", **VNNI).run(feeds)
    np.testing.assert_allclose(got["out"], interpret(dynamic, feeds)["out"], rtol=1e-5, atol=1e-5)


@needs_vnni_cpu
@needs_avx512_level
def test_static_int8_mobilenet_is_bit_exact_on_vnni() -> None:
    """The zoo's tiny MobileNetV2, static int8: every integer value the VNNI build computes equals
    the reference's (pointwise and full convs on vpdpbusd, depthwise ones on the old schedule)."""
    import torch

    import optc
    from optc.tools import zoo

    model, inputs = zoo.build("mobilenetv2", size="tiny")
    graph = optc.load(model, example_inputs=inputs, input_names=zoo.input_names("mobilenetv2"),
                      output_names=zoo.output_names("mobilenetv2"))
    generator = torch.Generator().manual_seed(SEED)
    calibration = [{"input": torch.randn(inputs[0].shape, generator=generator).numpy()}]
    int8 = quantized(graph, feeds=calibration)
    probe = int8.clone()
    integer_values = [value for node in probe.nodes if node.op in ("quant.conv", "quant.requantize") for value in node.outputs]
    probe.outputs = probe.outputs + integer_values
    feeds = {"input": np.random.default_rng(SEED).standard_normal(inputs[0].shape).astype(np.float32)}
    got, want = compile_graph(probe, "cpu", **VNNI).run(feeds), interpret(probe, feeds)
    for value in integer_values:
        assert np.array_equal(got[value.name], want[value.name]), value.name
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)
