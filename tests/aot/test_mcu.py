"""The mcu target: C kernels + optc's AOT generator, checked on the host and under QEMU."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import optc
from optc.backends.aot.bundle import MemoryBudgetError
from optc.backends.aot.kernels import build_kernels
from optc.backends.targets import get_target
from optc.ir import Graph
from optc.ir.interpret import interpret
from optc.passes import PassManager
from optc.tools.mcu_report import small_cnn

FP32_TOLERANCE = 1e-4
needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm",
)


@pytest.fixture(scope="session")
def graph() -> Graph:
    return small_cnn()


@pytest.fixture(scope="session")
def compiled_m4(graph: Graph):
    return get_target("mcu", mcpu="cortex-m4").compile_graph(graph)


def feeds(seed: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).standard_normal((1, 1, 8, 8)).astype(np.float32)}


def test_kernels_know_which_outputs_may_overwrite_inputs(graph: Graph) -> None:
    kernels = build_kernels(graph)
    by_kernel = {step.kernel: step for step in kernels.program.steps}
    residual = next(step for name, step in by_kernel.items() if name.startswith("fused_conv2d") and len(step.inputs) == 2)
    # the residual add reads its second input only at the element it writes
    assert (residual.outputs[0], residual.inputs[1]) in residual.inplace
    # depthwise conv (and max pool, also channel by channel) are scheduled MCUNet-style: one
    # channel into a scratch buffer, then copied over the input's memory
    depthwise = next(step for name, step in by_kernel.items() if name.startswith("fused_conv2d1"))
    assert depthwise.inplace == ((depthwise.outputs[0], depthwise.inputs[0]),)
    assert by_kernel["max_pool2d"].inplace == ((by_kernel["max_pool2d"].outputs[0], by_kernel["max_pool2d"].inputs[0]),)
    # the linear layer reads every input element for every output: never in place
    assert next(step for name, step in by_kernel.items() if "matmul" in name).inplace == ()


def test_bundle_has_the_generated_files_and_a_memory_report(compiled_m4) -> None:
    files = {path.name for path in compiled_m4.bundle.iterdir()}
    assert {"model.c", "weights.c", "kernels.c", "model.h", "main.c", "Makefile", "startup.c", "board.ld",
            "memory.json", "memory.txt", "memory.png"} <= files
    header = (compiled_m4.bundle / "model.h").read_text()
    assert "int model_run(const float* image, float* logits);" in header
    assert "MODEL_ARENA_BYTES" in header
    model_c = (compiled_m4.bundle / "model.c").read_text()
    assert "malloc" not in model_c and "TVMBackendAllocWorkspace" in model_c
    memory = json.loads((compiled_m4.bundle / "memory.json").read_text())
    assert memory["live_lower_bound_bytes"] <= memory["arena_bytes"] <= memory["greedy_arena_bytes"]
    assert memory["peak_sram_bytes"] == memory["arena_bytes"] + memory["stack_estimate_bytes"]
    if shutil.which("arm-none-eabi-gcc"):  # the report measures the Cortex-M build
        assert memory["stack_source"] == "-fstack-usage" and memory["flash_bytes"] > memory["weight_bytes"]
    assert (compiled_m4.bundle / "memory.png").read_bytes()[:4] == b"\x89PNG"


def test_host_build_matches_the_reference(graph: Graph, compiled_m4) -> None:
    for seed in (0, 1):
        expected = interpret(graph, feeds(seed))["logits"]
        actual = compiled_m4.run(feeds(seed))["logits"]
        np.testing.assert_allclose(actual, expected, rtol=0, atol=FP32_TOLERANCE)


def test_sram_budget_too_small_says_by_how_much(graph: Graph) -> None:
    with pytest.raises(MemoryBudgetError, match=r"--sram gives 4 KB: .* KB over"):
        get_target("mcu", sram_kb=4, patches="off").compile_graph(graph)


def test_flash_budget_too_small_says_by_how_much(graph: Graph) -> None:
    # with the cross compiler: code + weights from arm-none-eabi-size; without: the weights alone
    with pytest.raises(MemoryBudgetError, match=r"KB of flash but --flash gives 1 KB: .* KB over") as caught:
        get_target("mcu", flash_kb=1).compile_graph(graph)
    assert caught.value.resource == "flash" and caught.value.needed > 1024


def test_unknown_core_lists_the_known_ones() -> None:
    with pytest.raises(optc.errors.LoweringError, match="cortex-m4, cortex-m7, cortex-m55"):
        get_target("mcu", mcpu="cortex-a53")


@pytest.mark.qemu
@needs_arm
@pytest.mark.parametrize("mcpu", ["cortex-m4", "cortex-m55"])
def test_qemu_run_matches_the_reference(graph: Graph, compiled_m4, mcpu: str) -> None:
    compiled = compiled_m4 if mcpu == "cortex-m4" else get_target("mcu", mcpu=mcpu).compile_graph(graph)
    outputs, stats = compiled.run_qemu(feeds(3))
    expected = interpret(graph, feeds(3))["logits"]
    np.testing.assert_allclose(outputs["logits"], expected, rtol=0, atol=FP32_TOLERANCE)
    assert stats["instructions"] > 1000
    assert stats["flash_bytes"] >= compiled.memory["weight_bytes"]


@pytest.mark.qemu
@needs_arm
def test_cli_compile_then_deploy_under_qemu(tmp_path, graph: Graph) -> None:
    from optc.frontends.onnx.export import to_onnx
    from optc.tools.cli import main

    model_path = tmp_path / "small.onnx"
    model_path.write_bytes(to_onnx(graph).SerializeToString())
    out = tmp_path / "artifact"
    assert main(["compile", str(model_path), "--target", "mcu", "--mcpu", "cortex-m4", "--sram", "64",
                 "--flash", "512", "-o", str(out), "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["mcpu"] == "cortex-m4" and manifest["check"]["max_abs_error"] < FP32_TOLERANCE
    report = tmp_path / "run.json"
    assert main(["deploy", str(out), "--qemu", "--json", str(report)]) == 0
    numbers = json.loads(report.read_text())
    assert numbers["max_abs_error"] < FP32_TOLERANCE and numbers["instructions"] > 0


@pytest.fixture(scope="session")
def int8_probe(graph: Graph) -> Graph:
    """The small CNN quantized to int8 (issue 4's quant pass), with its integer tensors as outputs."""
    quant = pytest.importorskip("optc.passes.quant")
    quantized = graph.clone()
    PassManager([quant.Quantize(feeds=[feeds(seed) for seed in range(4)])], verify=True,
                check_numerics=False).run(quantized)
    integer = [value for node in quantized.nodes for value in node.outputs
               if value.dtype in ("int8", "int32") and value not in quantized.outputs]
    assert any(node.op == "quant.conv" for node in quantized.nodes)
    quantized.outputs = quantized.outputs + integer
    return quantized


@pytest.mark.qemu
@needs_arm
def test_int8_model_matches_the_reference_exactly_under_qemu(int8_probe: Graph) -> None:
    compiled = get_target("mcu", mcpu="cortex-m4").compile_graph(int8_probe)
    expected = interpret(int8_probe, feeds(5))
    outputs, _ = compiled.run_qemu(feeds(5))
    assert len(outputs) > 3
    for name, value in expected.items():
        assert np.array_equal(outputs[name], value), name
