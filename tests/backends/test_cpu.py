"""The CPU target end to end: small models built in the IR, compiled, run, exported and reloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optc.backends import CompiledModel, available_targets, compile_graph, get_target, load_compiled
from optc.backends.targets.cpu import SPIN_COUNT, X86_LEVELS, CpuTarget, detect_host_mcpu, host_core_count
from optc.errors import ArtifactError, InputError, LoweringError
from optc.ir import Graph, TensorType, interpret
from optc.ir.graph import Value

FLOAT32 = {"rtol": 1e-3, "atol": 1e-4}


class Net:
    """A tiny layer vocabulary over the IR, with seeded weights."""

    def __init__(self, name: str, seed: int) -> None:
        self.graph = Graph(name)
        self.rng = np.random.default_rng(seed)

    def weight(self, name: str, shape: tuple[int, ...], scale: float | None = None) -> Value:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        std = scale if scale is not None else 1.0 / np.sqrt(fan_in)
        return self.graph.add_param(name, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def op(self, op: str, *inputs: Value, **attrs: object) -> Value:
        return self.graph.op(op, *inputs, **attrs)

    def conv_bn_relu(self, x: Value, name: str, cin: int, cout: int, stride: int = 1) -> Value:
        y = self.op("nn.conv", x, self.weight(f"{name}_w", (cout, cin, 3, 3)), strides=(stride, stride), pads=(1, 1, 1, 1))
        scale = self.graph.add_param(f"{name}_scale", self.rng.uniform(0.5, 1.5, cout).astype(np.float32))
        var = self.graph.add_param(f"{name}_var", self.rng.uniform(0.5, 2.0, cout).astype(np.float32))
        y = self.op("nn.batch_norm", y, scale, self.weight(f"{name}_bias", (cout,), 0.1), self.weight(f"{name}_mean", (cout,), 0.1), var)
        return self.op("math.relu", y)

    def linear(self, x: Value, name: str, cin: int, cout: int) -> Value:
        return self.op("math.add", self.op("linalg.matmul", x, self.weight(f"{name}_w", (cin, cout))), self.weight(f"{name}_b", (cout,), 0.1))


def small_cnn() -> Graph:
    """conv-bn-relu, max pool, conv-bn-relu, flatten, a 512x512 linear (1 MiB of weights), linear."""
    net = Net("small_cnn", seed=1)
    x = net.graph.add_input("image", TensorType((2, 3, 16, 16), "float32"))
    y = net.conv_bn_relu(x, "conv1", 3, 16)
    y = net.op("nn.max_pool", y, kernel=(2, 2), strides=(2, 2))
    y = net.conv_bn_relu(y, "conv2", 16, 32, stride=2)
    y = net.op("nn.avg_pool", y, kernel=(2, 2), strides=(2, 2))  # (2, 32, 2, 2)
    y = net.op("tensor.reshape", y, shape=(2, -1))  # 128 features
    y = net.op("math.relu", net.linear(y, "fc1", 128, 512))
    y = net.op("math.relu", net.linear(y, "fc2", 512, 512))
    net.graph.outputs = [net.linear(y, "head", 512, 10)]
    return net.graph


def attention_block() -> Graph:
    """A pre-norm transformer block: layer norm, 4-head self-attention, residual, GELU MLP, residual."""
    batch, tokens, width, heads = 2, 16, 32, 4
    head_width = width // heads
    net = Net("attention_block", seed=2)
    x = net.graph.add_input("tokens", TensorType((batch, tokens, width), "float32"))

    def norm(value: Value, name: str) -> Value:
        scale = net.graph.add_param(f"{name}_scale", net.rng.uniform(0.8, 1.2, width).astype(np.float32))
        return net.op("nn.layer_norm", value, scale, net.weight(f"{name}_bias", (width,), 0.1))

    qkv = net.linear(norm(x, "ln1"), "qkv", width, 3 * width)
    q, k, v = net.graph.add_node("tensor.split", [qkv], {"axis": -1, "sizes": (width, width, width)}).outputs

    def heads_first(value: Value) -> Value:
        split = net.op("tensor.reshape", value, shape=(batch, tokens, heads, head_width))
        return net.op("tensor.transpose", split, perm=(0, 2, 1, 3))

    scores = net.op("linalg.matmul", heads_first(q), net.op("tensor.transpose", heads_first(k), perm=(0, 1, 3, 2)))
    scale = net.graph.add_param("attn_scale", np.full((1,), 1.0 / np.sqrt(head_width), np.float32))
    weights = net.op("nn.softmax", net.op("math.mul", scores, scale), axis=-1)
    mixed = net.op("tensor.transpose", net.op("linalg.matmul", weights, heads_first(v)), perm=(0, 2, 1, 3))
    attended = net.linear(net.op("tensor.reshape", mixed, shape=(batch, tokens, width)), "proj", width, width)
    x = net.op("math.add", x, attended)
    hidden = net.op("math.gelu", net.linear(norm(x, "ln2"), "fc1", width, 4 * width))
    net.graph.outputs = [net.op("math.add", x, net.linear(hidden, "fc2", 4 * width, width))]
    return net.graph


def dynamic_mlp() -> Graph:
    net = Net("dynamic_mlp", seed=3)
    x = net.graph.add_input("x", TensorType(("batch", 8), "float32"))
    mask = net.graph.add_input("mask", TensorType(("batch", 1), "bool"))
    y = net.op("math.tanh", net.linear(x, "fc", 8, 4))
    zero = net.graph.add_param("zero", np.zeros((1,), np.float32))
    net.graph.outputs = [net.op("math.where", mask, y, zero)]
    return net.graph


def feeds_for(graph: Graph, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph.inputs:
        shape = tuple(batch if isinstance(dim, str) else dim for dim in value.shape)
        feeds[value.name] = rng.integers(0, 2, shape).astype(bool) if value.dtype == "bool" else rng.standard_normal(shape).astype(value.dtype)
    return feeds


@pytest.fixture(scope="module")
def cnn(compile_once) -> CompiledModel:
    return compile_once("small_cnn", small_cnn)


@pytest.fixture(scope="module")
def attention(compile_once) -> CompiledModel:
    return compile_once("attention_block", attention_block)


# ---- the target ---------------------------------------------------------------------------------


def test_cpu_is_registered_and_unknown_targets_name_the_known_ones() -> None:
    assert "cpu" in available_targets()
    assert isinstance(get_target("cpu"), CpuTarget)
    with pytest.raises(LoweringError, match="unknown target 'gpu9'.*cpu"):
        get_target("gpu9")
    with pytest.raises(LoweringError, match="bad options for target 'cpu'"):
        get_target("cpu", warp_speed=9)


def test_cpu_target_is_llvm_for_the_host_without_avx512() -> None:
    target = CpuTarget()
    tvm_target = target.tvm_target()
    assert tvm_target.kind.name == "llvm"
    assert int(tvm_target.attrs["num-cores"]) >= 1
    mcpu = detect_host_mcpu()
    if mcpu is not None and mcpu.startswith("x86-64"):
        assert mcpu in {level for level, _ in X86_LEVELS}, "untuned code should not target AVX-512"
        assert str(tvm_target.attrs["mcpu"]) == mcpu
    generic = CpuTarget(mcpu=None, num_cores=1).tvm_target()
    assert "mcpu" not in generic.attrs and int(generic.attrs["num-cores"]) == 1
    with pytest.raises(LoweringError, match="LLVM does not know the CPU 'native'"):
        CpuTarget(mcpu="native").tvm_target()


def test_describe_is_json_and_names_the_target() -> None:
    description = json.loads(json.dumps(CpuTarget(num_cores=2).describe()))
    assert description["name"] == "cpu" and description["mcpu"] == detect_host_mcpu() and description["num_cores"] == 2
    assert '"kind":"llvm"' in description["tvm_target"].replace(" ", "")


# ---- models ---------------------------------------------------------------------------------------


def test_small_cnn_matches_reference(cnn: CompiledModel) -> None:
    feeds = feeds_for(cnn.graph)
    actual, expected = cnn.run(feeds), interpret(cnn.graph, feeds)
    assert list(actual) == cnn.output_names
    for name in expected:
        assert actual[name].shape == (2, 10)
        np.testing.assert_allclose(actual[name], expected[name], **FLOAT32)


def test_attention_block_matches_reference(attention: CompiledModel) -> None:
    feeds = feeds_for(attention.graph, seed=5)
    actual, expected = attention.run(feeds), interpret(attention.graph, feeds)
    for name in expected:
        assert actual[name].shape == (2, 16, 32)
        np.testing.assert_allclose(actual[name], expected[name], **FLOAT32)


def test_symbolic_batch_runs_at_any_size(compile_once) -> None:
    model = compile_once("dynamic_mlp", dynamic_mlp)
    for batch in (1, 5):
        feeds = feeds_for(model.graph, seed=batch, batch=batch)
        actual, expected = model.run(feeds), interpret(model.graph, feeds)
        (name,) = expected
        assert actual[name].shape == (batch, 4)
        np.testing.assert_allclose(actual[name], expected[name], **FLOAT32)
    with pytest.raises(InputError, match="dim 'batch' is 2 in input 'x' but 3 in input 'mask'"):
        model.run({"x": np.zeros((2, 8), np.float32), "mask": np.ones((3, 1), bool)})


# ---- export and reload ----------------------------------------------------------------------------


def test_export_writes_only_a_small_library_that_reloads(cnn: CompiledModel, tmp_path: Path) -> None:
    files = cnn.export(tmp_path / "out")
    assert files == [tmp_path / "out" / "model.so"]
    largest_weight = max(array.nbytes for array in cnn.graph.params.values())
    assert largest_weight >= 1 << 20
    assert files[0].stat().st_size < largest_weight, "weights belong in the artifact, not in the library"

    reloaded = load_compiled(tmp_path / "out", cnn.graph)
    assert reloaded is not cnn and reloaded.output_names == cnn.output_names
    feeds = feeds_for(cnn.graph, seed=9)
    before, after = cnn.run(feeds), reloaded.run(feeds)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    # a reloaded model exports by copying its library
    copied = reloaded.export(tmp_path / "again")
    assert copied[0].read_bytes() == files[0].read_bytes()


def test_target_load_gives_a_compiled_model(cnn: CompiledModel, tmp_path: Path) -> None:
    cnn.export(tmp_path)
    model = get_target("cpu").load(tmp_path, cnn.graph, {"target": {"name": "cpu"}})
    feeds = feeds_for(cnn.graph, seed=4)
    np.testing.assert_array_equal(model.run(feeds)[cnn.output_names[0]], cnn.run(feeds)[cnn.output_names[0]])


def test_reloading_with_another_graph_is_refused(cnn: CompiledModel, attention: CompiledModel, tmp_path: Path) -> None:
    cnn.export(tmp_path)
    with pytest.raises(ArtifactError, match="does not match graph attention_block"):
        load_compiled(tmp_path, attention.graph)
    with pytest.raises(ArtifactError, match="no compiled library"):
        load_compiled(tmp_path / "missing", cnn.graph)


# ---- running ---------------------------------------------------------------------------------------


def test_bad_feeds_raise_input_errors(cnn: CompiledModel) -> None:
    good = feeds_for(cnn.graph)
    with pytest.raises(InputError, match="must be float32, got float64"):
        cnn.run({"image": good["image"].astype(np.float64)})
    with pytest.raises(InputError, match=r"must have shape \[2, 3, 16, 16\]"):
        cnn.run({"image": good["image"][:1]})
    with pytest.raises(InputError, match="missing \\['image'\\]"):
        cnn.run({})


def test_runner_converts_feeds_once_and_runs_the_model(cnn: CompiledModel) -> None:
    feeds = feeds_for(cnn.graph)
    expected = cnn.run(feeds)[cnn.output_names[0]]
    run_once = cnn.runner(feeds)
    feeds["image"][...] = 0.0  # converted when the runner was made: later changes do not reach it
    for _ in range(2):
        np.testing.assert_array_equal(run_once()[0].numpy(), expected)
    with pytest.raises(InputError):
        cnn.runner({"image": np.zeros((1, 3, 16, 16), np.float32)})


def test_compile_graph_records_the_build(cnn: CompiledModel) -> None:
    assert cnn.target.name == "cpu"
    assert cnn.build_seconds is not None and cnn.build_seconds > 0
    assert "small_cnn" in repr(cnn)


def test_graph_rewrites_after_compiling_do_not_change_the_model() -> None:
    graph = Graph("mutable")
    x = graph.add_input("x", TensorType((3,), "float32"))
    graph.outputs = [graph.op("math.neg", x)]
    model = compile_graph(graph)
    graph.outputs = [x]  # the caller goes on rewriting its graph
    out = model.run({"x": np.ones(3, np.float32)})
    np.testing.assert_array_equal(next(iter(out.values())), -np.ones(3, np.float32))


def _threads_after_a_run(environment: dict[str, str]) -> tuple[int, int, str]:
    """(TVM's thread count, host_core_count(), the pool's spin count setting) in a fresh process
    that compiled and ran a model."""
    script = (
        "import os, numpy as np, tvm\n"
        "from optc.ir import Graph, TensorType\n"
        "from optc.backends import compile_graph\n"
        "from optc.backends.targets.cpu import host_core_count\n"
        "g = Graph(); x = g.add_input('x', TensorType((64, 64), 'float32'))\n"
        "g.outputs = [g.op('nn.linear', x, g.add_param('w', np.ones((64, 64), np.float32)))]\n"
        "compile_graph(g, 'cpu').run({'x': np.ones((64, 64), np.float32)})\n"
        "print(tvm.get_global_func('runtime.NumThreads')(), host_core_count(),"
        " os.environ.get('TVM_THREAD_POOL_SPIN_COUNT'))\n"
    )
    keep = {key: value for key, value in os.environ.items()
            if key not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "TVM_THREAD_POOL_SPIN_COUNT")}
    done = subprocess.run([sys.executable, "-c", script], env={**keep, **environment}, capture_output=True, text=True,
                          timeout=300, check=True)
    threads, cores, spin = done.stdout.split()[-3:]
    return int(threads), int(cores), spin


def test_compiled_models_use_every_core_unless_the_user_says_otherwise() -> None:
    """TVM alone uses half the logical CPUs on x86 (one of this VM's two cores) and spins ~150 ms after
    each parallel kernel; optc sets the pool to the physical cores and a bounded spin, and the
    user's TVM_NUM_THREADS / TVM_THREAD_POOL_SPIN_COUNT still win when given."""
    threads, cores, spin = _threads_after_a_run({})
    assert threads == cores
    assert spin == str(SPIN_COUNT)  # bounded spin-waiting, not TVM's ~150 ms per parallel kernel
    threads, _, spin = _threads_after_a_run({"TVM_NUM_THREADS": "1", "TVM_THREAD_POOL_SPIN_COUNT": "0"})
    assert (threads, spin) == (1, "0")


def test_host_core_count_counts_physical_cores_in_the_affinity_mask() -> None:
    cpus = os.sched_getaffinity(0)
    siblings = set()
    for cpu in cpus:
        listed = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        siblings.add(listed.read_text().strip() if listed.exists() else str(cpu))
    assert host_core_count() == len(siblings) <= len(cpus)
