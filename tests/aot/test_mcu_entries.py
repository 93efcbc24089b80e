"""KV-cache entry points (prefill + decode of a tiny GPT-2) on the mcu target: host build and QEMU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import optc
from optc.backends.aot.kernels import build_kernels, portable_c
from optc.backends.aot.planner import caller_aliases
from optc.backends.aot.program import Program, Step, Tensor
from optc.backends.entries import EntryModel
from optc.backends.targets import get_target
from optc.backends.targets.mcu import qemu_session
from optc.ir.graph import Graph
from optc.ir.interpret import interpret
from optc.ir.types import TensorType
from optc.passes.caching import derive_kv_cache
from optc.tools.bench_caching import build_decoder, greedy_cached, greedy_full, kv_check_feeds

CAPACITY = 16
PROMPT = 5
NEW_TOKENS = 6
MCPU = "cortex-m55"  # mps3-an547: 2 MB for the weights (about 0.9 MB here)
needs_arm = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="needs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm",
)


class Reference:
    """An entry point run by the reference interpreter (for sessions and greedy decoding)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def run(self, feeds):
        return interpret(self.graph, feeds)


@pytest.fixture(scope="session")
def decoder() -> Graph:
    return build_decoder("tiny", CAPACITY, seed=0)


@pytest.fixture(scope="session")
def prompt() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 1000, (1, PROMPT)).astype(np.int64)


@pytest.fixture(scope="session", params=["float32", "int8"])
def kv_mcu(request, decoder, tmp_path_factory):
    """(split, path of the mcu artifact) for float and int8 caches."""
    split = derive_kv_cache(decoder, prompt_length=PROMPT, cache_dtype=request.param)
    path = tmp_path_factory.mktemp(f"kv-mcu-{request.param}") / "artifact"
    optc.compile_entries(split.entries, state=split.state, passes="cleanup", target="mcu",
                         target_options={"mcpu": MCPU}, check_feeds=kv_check_feeds(split), output=path)
    return split, path


def reference_session(split, artifact):
    return EntryModel({name: Reference(graph) for name, graph in split.entries.items()}, artifact.entries.state).session()


def test_non_finite_float_literals_become_math_h_macros() -> None:
    source = "float f(float x) {\n  float m = -inff;\n  float isinff_ = nanf;\n  return x > m ? x : inff;\n}\n"
    rewritten = portable_c(source)
    assert rewritten.startswith("#include <math.h>\n")
    assert "-INFINITY;" in rewritten and ": INFINITY;" in rewritten and "isinff_ = NAN;" in rewritten
    assert portable_c("int32_t f(void) { return 0; }") == "int32_t f(void) { return 0; }"


def test_an_output_is_written_over_an_input_only_when_nothing_reads_the_input_later() -> None:
    tensors = {name: Tensor(name, (4,), "float32") for name in ("past", "new", "present", "other", "summary")}
    update = Step("update", "cache_update", ("past", "new"), ("present",), inplace=(("present", "past"),))
    reads_past = Step("late", "add", ("past", "present"), ("summary",), inplace=(("summary", "past"),))
    program = Program(tensors, (update,), ("past", "new"), ("present",))
    assert caller_aliases(program) == {"present": "past"}
    later = Program(tensors, (update, reads_past), ("past", "new"), ("present", "summary"))
    assert caller_aliases(later) == {"summary": "past"}  # past is read after the update: not there
    two = Step("both", "copy", ("past",), ("present", "other"), inplace=(("present", "past"), ("other", "past")))
    assert caller_aliases(Program(tensors, (two,), ("past",), ("present", "other"))) == {"present": "past"}


def test_a_kernel_with_several_outputs_runs_on_the_host() -> None:
    """A linear layer split into q/k/v (one TVM kernel with three outputs), each used differently."""
    rng = np.random.default_rng(0)
    graph = Graph("qkv")
    x = graph.add_input("x", TensorType((1, 4, 8), "float32"))
    fused = graph.op("nn.linear", x, graph.add_param("w", rng.standard_normal((8, 24)).astype(np.float32)))
    q, k, v = graph.add_node("tensor.split", [fused], {"axis": 2, "sizes": (8, 8, 8)}).outputs
    scores = graph.op("nn.linear", q, graph.add_param("w2", rng.standard_normal((8, 8)).astype(np.float32)))
    graph.outputs = [graph.op("math.add", scores, k), graph.op("tensor.transpose", v, perm=(0, 2, 1)), q]
    split_steps = [step for step in build_kernels(graph).program.steps if len(step.outputs) == 3]
    assert len(split_steps) == 1
    compiled = get_target("mcu").compile_graph(graph)
    feeds = {"x": rng.standard_normal((1, 4, 8)).astype(np.float32)}
    expected, actual = interpret(graph, feeds), compiled.run(feeds)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=1e-4)
    assert " x3 " in (compiled.bundle / "memory.txt").read_text()  # the report counts the outputs


def test_prefill_and_decode_bundles_build_and_match_the_reference(kv_mcu) -> None:
    split, path = kv_mcu
    manifest = json.loads((path / "manifest.json").read_text())
    assert list(manifest["entries"]) == ["prefill", "decode"]
    for check in manifest["entry_checks"].values():
        assert check["cosine"] > 0.9999 and check["max_abs_error"] < 1e-3
    artifact = optc.load_artifact(path)
    prefill, decode = artifact.entry("prefill"), artifact.entry("decode")
    kernels = (decode.bundle / "kernels.c").read_text()
    assert "inff" not in kernels and "INFINITY" in kernels  # the attention mask compiles
    # the loaded entries know their memory report; decode (one token) needs far less arena
    assert 0 < decode.memory["arena_bytes"] < prefill.memory["arena_bytes"]
    assert decode.memory["flash_bytes"] > decode.memory["weight_bytes"] > 0
    # cache.update may write each present cache over its past one: the caller holds every cache once
    caches = split.entries["decode"].inputs[2:]
    assert decode.memory["output_aliases"] == {v.name.replace("past_", "present_"): v.name for v in caches}
    assert decode.memory["aliased_output_bytes"] == sum(np.dtype(v.dtype).itemsize * np.prod(v.shape) for v in caches)
    assert "model_output_alias" in (decode.bundle / "model.h").read_text()


def test_greedy_tokens_of_the_host_build_equal_the_reference(kv_mcu, decoder, prompt) -> None:
    split, path = kv_mcu
    artifact = optc.load_artifact(path)
    tokens, _ = greedy_cached(artifact.session(), prompt, NEW_TOKENS)  # NumPy state between C runs
    expected, _ = greedy_cached(reference_session(split, artifact), prompt, NEW_TOKENS)
    assert tokens == expected
    if split.entries["decode"].inputs[2].dtype == "float32":
        # float caches are exact: the same tokens as recomputing the whole sequence every step
        assert tokens == greedy_full(Reference(decoder), prompt, NEW_TOKENS, CAPACITY)[0]


@pytest.mark.qemu
@needs_arm
def test_decode_steps_under_qemu_give_the_host_tokens(kv_mcu, prompt, tmp_path) -> None:
    split, path = kv_mcu
    artifact = optc.load_artifact(path)
    session = qemu_session(artifact.entries, tmp_path)
    tokens, _ = greedy_cached(session, prompt, 3)  # prefill + two decode steps on the Cortex-M55
    assert tokens == greedy_cached(artifact.session(), prompt, 3)[0]
    prefill, decode = (session.model.entry(name).stats for name in ("prefill", "decode"))
    assert decode["board"] == "mps3-an547"
    assert 0 < decode["instructions"] < prefill["instructions"]
    assert Path(decode["elf"]).is_file()
