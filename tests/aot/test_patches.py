"""Patch-based execution of the first stage (MCUNetV2): the rewrite, the search, the emitted C."""

from __future__ import annotations

import numpy as np
import pytest

import optc
from optc.backends.aot.bundle import MemoryBudgetError
from optc.backends.aot.from_graph import program_from_graph
from optc.backends.aot.patch_graph import patch_graph
from optc.backends.aot.patching import search_patches, split_points
from optc.backends.aot.planner import plan_memory
from optc.backends.targets import get_target
from optc.errors import LoweringError
from optc.ir import Graph
from optc.ir.interpret import interpret, sample_inputs
from optc.ir.verify import verify
from optc.passes import PassManager
from optc.tools import zoo

KB = 1024


@pytest.fixture(scope="module")
def mobilenet() -> Graph:
    """MobileNetV2 width 0.25 at 32x32 (the zoo's tiny size), fused."""
    model, inputs = zoo.build("mobilenetv2", size="tiny")
    graph = optc.capture(model, inputs)
    PassManager("cleanup,fuse", check_numerics=False).run(graph)
    return graph


def test_split_points_are_single_tensor_cuts_of_the_spatial_stage(mobilenet: Graph) -> None:
    program = program_from_graph(mobilenet)
    points = split_points(program)
    assert points and points[0] == 0  # after the stem conv only its output is live
    for index in points:
        later_reads = {name for step in program.steps[index + 1:] for name in step.inputs}
        produced = {name for step in program.steps[: index + 1] for name in step.outputs}
        assert later_reads & produced == {program.steps[index].outputs[0]}


@pytest.mark.parametrize("grid", [2, 3])
def test_patched_graph_computes_the_same_outputs(mobilenet: Graph, grid: int) -> None:
    best = search_patches(program_from_graph(mobilenet), 16 * KB)[0]
    patched = patch_graph(mobilenet, best.split_tensor, grid)
    verify(patched)
    feeds = sample_inputs(mobilenet, seed=4)
    expected, actual = interpret(mobilenet, feeds), interpret(patched, feeds)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5)
    assert patched.flops() > mobilenet.flops()  # halos are recomputed
    # the patched program's intermediates are patch-sized: its arena is smaller
    assert plan_memory(program_from_graph(patched)).arena_size < plan_memory(program_from_graph(mobilenet)).arena_size


def test_a_split_that_is_not_a_cut_is_refused(mobilenet: Graph) -> None:
    first = mobilenet.nodes[0]
    later = next(node for node in mobilenet.nodes if node.op == "nn.linear")
    with pytest.raises(LoweringError):
        patch_graph(mobilenet, later.outputs[0].name, 2)
    assert patch_graph(mobilenet, first.outputs[0].name, 1).op_counts() == mobilenet.op_counts()


def test_sram_budget_below_layer_by_layer_emits_patches(mobilenet: Graph) -> None:
    with pytest.raises(MemoryBudgetError):
        get_target("mcu", sram_kb=48, patches="off").compile_graph(mobilenet)
    compiled = get_target("mcu", sram_kb=48).compile_graph(mobilenet)
    plan = compiled.memory["patch_plan"]
    assert plan["emitted"] and plan["extra_macs"] > 0
    assert compiled.memory["peak_sram_bytes"] <= 48 * KB
    feeds = sample_inputs(mobilenet, seed=2)
    expected = interpret(mobilenet, feeds)
    # 17 fp32 layers: the kernels' summation order differs from NumPy's (torch itself is 2e-4
    # from the interpreter on these inputs; the unpatched build 2.7e-4)
    for name, value in compiled.run(feeds).items():
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=5e-4)


def test_int8_graph_with_zero_point_pads_patches_exactly(mobilenet: Graph) -> None:
    pytest.importorskip("optc.passes.quant")
    from optc.tools.mcu_report import quantized

    int8 = quantized(mobilenet, calibration=2)
    program = program_from_graph(int8)
    assert any(step.kernel.startswith("tensor.pad+quant.conv") for step in program.steps) or not any(
        node.op == "tensor.pad" for node in int8.nodes)
    best = search_patches(program, 16 * KB)[0]
    patched = patch_graph(int8, best.split_tensor, 2)
    verify(patched)
    feeds = sample_inputs(int8, seed=6)
    expected, actual = interpret(int8, feeds), interpret(patched, feeds)
    for name in expected:  # integer arithmetic per element is the same in every patch
        np.testing.assert_array_equal(actual[name], expected[name])
