"""Weights packed for the dense kernels and weight-only work moved to load time (schedules/weights.py).

Each case checks the structure (which kernel reads a packed weight, what ``main`` still computes)
and the numbers: compiled outputs against ``optc.ir.interpret`` (rtol 1e-4, atol 1e-5), also after
an artifact round trip, where ``main_transform_params`` runs again when the library loads.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import optc
from optc.backends import compile_graph, get_target
from optc.backends.artifact import load_artifact
from optc.backends.lower import TRANSFORM_PARAMS, lower_graph
from optc.backends.schedules.weights import PACKED_ARGS_ATTR, _call_tir_calls
from optc.ir import Graph, TensorType, interpret

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def relax_module(graph: Graph) -> tvm.IRModule:
    """The module the CPU target hands to ``tvm.compile``: after zero, schedules, packing, lifting."""
    target = get_target("cpu")
    with target.tvm_target():
        return tvm.transform.Sequential(target.relax_passes())(lower_graph(graph))


def packed_kernels(module: tvm.IRModule) -> dict[str, dict[int, int]]:
    return {gvar.name_hint: {int(k): int(v) for k, v in func.attrs[PACKED_ARGS_ATTR].items()}
            for gvar, func in module.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and PACKED_ARGS_ATTR in func.attrs}


def main_kernels(module: tvm.IRModule) -> list[str]:
    """The PrimFuncs ``main`` calls on every run (what was not lifted to load time)."""
    return [call.args[0].name_hint for call in _call_tir_calls(module["main"])]


def check_outputs(graph: Graph, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    feeds = {value.name: rng.standard_normal(value.shape).astype(value.dtype) for value in graph.inputs}
    expected = interpret(graph, feeds)
    got = compile_graph(graph, target="cpu").run(feeds)
    for name, array in expected.items():
        np.testing.assert_allclose(got[name], array, **TOLERANCE)


def linear_graph(rows: int, k: int, n: int, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    graph = Graph("linear")
    x = graph.add_input("x", TensorType((rows, k), "float32"))
    w = graph.add_param("w", (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32))
    b = graph.add_param("b", rng.standard_normal(n).astype(np.float32))
    graph.outputs = [graph.op("nn.linear", x, w, b, activation="relu")]
    return graph


@pytest.mark.parametrize("rows, k, n", [(24, 64, 96), (16, 64, 1001), (1, 256, 480), (7, 40, 200)])
def test_dense_weights_are_packed_and_the_results_unchanged(rows, k, n):
    graph = linear_graph(rows, k, n)
    module = relax_module(graph)
    packed = packed_kernels(module)
    assert len(packed) == 1 and list(packed.values())[0].keys() == {1}, packed  # the weight, argument 1
    nr = list(packed.values())[0][1]
    assert nr % 4 == 0 and nr < n
    # main reads the packed weight; the packing itself runs once, in main_transform_params
    assert TRANSFORM_PARAMS in {gvar.name_hint for gvar in module.get_global_vars()}
    assert not any(name.startswith(("reshape", "transpose", "pad")) for name in main_kernels(module))
    check_outputs(graph)


def test_activation_operands_are_not_packed():
    graph = Graph("activations")
    a = graph.add_input("a", TensorType((32, 64), "float32"))
    b = graph.add_input("b", TensorType((64, 96), "float32"))
    graph.outputs = [graph.op("linalg.matmul", a, b)]
    assert packed_kernels(relax_module(graph)) == {}
    check_outputs(graph)


def tied_embedding_graph() -> Graph:
    """GPT-2's tied head: the embedding table is gathered from and, transposed, multiplied with."""
    rng = np.random.default_rng(3)
    graph = Graph("tied")
    ids = graph.add_input("ids", TensorType((1, 8), "int64"))
    table = graph.add_param("wte", rng.standard_normal((101, 32)).astype(np.float32))
    hidden = graph.op("tensor.gather", table, ids, axis=0)
    head = graph.op("tensor.transpose", table, perm=(1, 0))
    graph.outputs = [graph.op("linalg.matmul", hidden, head)]
    return graph


def test_a_transposed_tied_weight_is_transposed_once_at_load():
    graph = tied_embedding_graph()
    module = relax_module(graph)
    assert not any("transpose" in name for name in main_kernels(module)), main_kernels(module)
    assert packed_kernels(module)
    rng = np.random.default_rng(0)
    feeds = {"ids": rng.integers(0, 101, (1, 8)).astype(np.int64)}
    name = graph.outputs[0].name
    np.testing.assert_allclose(compile_graph(graph, target="cpu").run(feeds)[name], interpret(graph, feeds)[name],
                               **TOLERANCE)


def test_an_output_computed_from_weights_alone_still_compiles():
    """LiftTransformParams would move such an output out of main (TVM 0.27 then fails to build)."""
    rng = np.random.default_rng(4)
    graph = Graph("weight_output")
    x = graph.add_input("x", TensorType((4, 16), "float32"))
    w = graph.add_param("w", rng.standard_normal((16, 32)).astype(np.float32))
    graph.outputs = [graph.op("nn.linear", x, w), graph.op("tensor.transpose", w, perm=(1, 0))]
    check_outputs(graph)


def test_packed_weights_survive_an_artifact_round_trip(tmp_path):
    graph = linear_graph(12, 64, 1001, seed=5)
    feeds = {"x": np.random.default_rng(1).standard_normal((12, 64)).astype(np.float32)}
    artifact = optc.compile(graph, output=tmp_path / "art", check=False)
    loaded = load_artifact(tmp_path / "art")
    expected = interpret(graph, feeds)[graph.outputs[0].name]
    for model in (artifact, loaded):
        np.testing.assert_allclose(model.run(feeds)[graph.outputs[0].name], expected, **TOLERANCE)


def test_kernel_profile_names_the_kernels_of_a_run():
    from optc.backends.profile import format_profile, profile_kernels

    graph = linear_graph(24, 64, 96)
    compiled = compile_graph(graph, target="cpu")
    feeds = {"x": np.ones((24, 64), np.float32)}
    table = profile_kernels(compiled, feeds, runs=3, warmup=1)
    kernels = {row.name: row for row in table}
    dense = [name for name in kernels if "matmul" in name]
    assert len(dense) == 1 and kernels[dense[0]].calls == 1 and kernels[dense[0]].ms > 0
    assert table == sorted(table, key=lambda row: -row.ms)
    assert dense[0] in format_profile(table) and "total" in format_profile(table)


def test_an_artifact_built_for_missing_cpu_features_is_refused(tmp_path, monkeypatch):
    """A VNNI (or AVX-512) build on a CPU without it would die of an illegal instruction."""
    import optc.backends.targets.cpu as cpu
    from optc.errors import ArtifactError

    host = cpu._cpuinfo_flags() or frozenset()
    if not ({"avx512_vnni"} | cpu.X86_LEVELS[0][1]) <= host:
        pytest.skip("builds and runs an AVX-512 VNNI library: this CPU has no AVX-512 VNNI")
    graph = linear_graph(4, 16, 32)
    optc.compile(graph, output=tmp_path / "art", check=False, target="cpu", target_options={"mcpu": "x86-64-v4",
                                                                                         "mattr": ("+avx512vnni",)})
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    avx2_only = frozenset(cpu.X86_LEVELS[1][1] | cpu.X86_LEVELS[2][1])
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: avx2_only)
    with pytest.raises(ArtifactError, match="avx512_vnni.*avx512f|avx512.*lacks"):
        load_artifact(tmp_path / "art")
    monkeypatch.setattr(cpu, "_cpuinfo_flags", lambda: avx2_only | cpu.X86_LEVELS[0][1] | {"avx512_vnni"})
    feeds = {"x": np.ones((4, 16), np.float32)}
    name = graph.outputs[0].name
    np.testing.assert_allclose(load_artifact(tmp_path / "art").run(feeds)[name], interpret(graph, feeds)[name],
                               **TOLERANCE)
