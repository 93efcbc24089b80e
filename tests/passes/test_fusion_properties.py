"""The fusion passes on whole networks: seeded random conv/linear networks, the zoo CNNs, and
compiled graphs. The golden and refusal tests of each rule are in test_fusion_rules.py."""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import Graph, TensorType, interpret, parse, sample_inputs, verify
from optc.ir.graph import Value
from optc.ir.ops.nn import ACTIVATIONS
from optc.passes.fusion import FUSION_RULES, fold_batch_norm, fold_pads, fold_scale_bias, fuse_epilogues
from optc.passes.rewrite import RewritePass
from optc.passes.testing import assert_same_outputs, batch_norm_params, check_rewrite, random_params

FLOAT32 = {"rtol": 1e-4, "atol": 1e-5}
PASSES = (fold_pads, fold_batch_norm, fold_scale_bias, fuse_epilogues)  # in pipeline order


# ---- property tests: seeded random conv / linear networks ---------------------------------------------------

class RandomNet:
    """A random small CNN + MLP: pads, grouped/strided/dilated convs and transposed convs, bn before
    and after, per-channel scale/bias, every activation, padded pools, matmul heads with bias and bn."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.graph = Graph(f"random_{seed}")

    def const(self, name: str, array: np.ndarray) -> Value:
        return self.graph.add_param(name, np.asarray(array, dtype=np.float32))

    def batch_norm(self, x: Value, channels: int) -> Value:
        rng = self.rng
        return self.graph.op("nn.batch_norm", x, self.const("gamma", rng.uniform(0.5, 1.5, channels)),
                             self.const("beta", rng.normal(0, 0.5, channels)), self.const("mean", rng.normal(0, 0.5, channels)),
                             self.const("var", rng.uniform(0.3, 2.0, channels)), epsilon=float(rng.choice([1e-5, 1e-3])))

    def activation(self, x: Value) -> Value:
        name = str(self.rng.choice(list(ACTIVATIONS)))
        spec = ACTIVATIONS[name]
        return x if spec is None else self.graph.op(spec[0], x, **spec[1])

    def epilogue(self, x: Value, channels: int, channel_shape: tuple[int, ...]) -> Value:
        choice = self.rng.integers(0, 4)
        if choice == 1:
            x = self.batch_norm(x, channels)
        elif choice == 2:
            scale, shift = self.rng.choice(["math.mul", "math.div"]), self.rng.choice(["math.add", "math.sub"])
            x = self.graph.op(str(scale), x, self.const("scale", self.rng.uniform(0.5, 1.5, channels).reshape(channel_shape)))
            x = self.graph.op(str(shift), x, self.const("shift", self.rng.normal(0, 0.5, channels).reshape(channel_shape)))
        elif choice == 3:
            x = self.graph.op("math.add", x, self.const("bias", self.rng.normal(0, 0.5, channels).reshape(channel_shape)))
        return self.activation(x)

    def conv_block(self, x: Value) -> Value:
        rng, graph = self.rng, self.graph
        channels = x.shape[1]
        normalized = rng.random() < 0.3
        if normalized:
            x = self.batch_norm(x, channels)
        if rng.random() < 0.2:
            return self.conv_transpose_block(x)
        explicit = not normalized and rng.random() < 0.5
        if explicit:
            widths = [int(w) for w in rng.integers(0, 3, 4)]
            x = graph.op("tensor.pad", x, pads=(0, 0, widths[0], widths[1], 0, 0, widths[2], widths[3]))
        groups = int(rng.choice([g for g in (1, 2, 3) if channels % g == 0]))
        out_channels = groups * int(rng.integers(1, 4))
        kernel, dilation = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        pads = tuple(int(p) for p in rng.integers(0, 2, 4)) if rng.random() < 0.5 else None
        if min(x.shape[2:]) < dilation * (kernel - 1) + 1:
            kernel = 1
        weight = self.const("w", rng.standard_normal((out_channels, channels // groups, kernel, kernel)) / kernel)
        inputs = [x, weight] + ([self.const("b", rng.normal(0, 0.3, out_channels))] if rng.random() < 0.5 else [])
        x = graph.op("nn.conv", *inputs, pads=pads, strides=(int(rng.integers(1, 3)),) * 2,
                     dilations=(dilation, dilation), groups=groups)
        x = self.epilogue(x, out_channels, (out_channels, 1, 1))
        if rng.random() < 0.4 and min(x.shape[2:]) >= 2:
            if rng.random() < 0.5:
                x = graph.op("tensor.pad", x, pads=(0, 0, 1, 0, 0, 0, 0, 1), value=float("-inf"))
                x = graph.op("nn.max_pool", x, kernel=(2, 2), strides=(1, 1))
            else:
                x = graph.op("tensor.pad", x, pads=(0, 0, 1, 1, 0, 0, 1, 1))
                x = graph.op("nn.avg_pool", x, kernel=(3, 3), strides=(1, 1))
        return x

    def conv_transpose_block(self, x: Value) -> Value:
        rng = self.rng
        channels = x.shape[1]
        groups = int(rng.choice([g for g in (1, 2) if channels % g == 0]))
        out_channels = groups * int(rng.integers(1, 3))
        weight = self.const("tw", rng.standard_normal((channels, out_channels // groups, 2, 2)) / 2)
        inputs = [x, weight] + ([self.const("tb", rng.normal(0, 0.3, out_channels))] if rng.random() < 0.5 else [])
        x = self.graph.op("nn.conv_transpose", *inputs, strides=(int(rng.integers(1, 3)),) * 2, groups=groups)
        return self.epilogue(x, out_channels, (out_channels, 1, 1))

    def build(self) -> Graph:
        rng, graph = self.rng, self.graph
        x = graph.add_input("x", TensorType((2, int(rng.integers(1, 5)), 9, 9), "float32"))
        for _ in range(int(rng.integers(1, 4))):
            if min(x.shape[2:]) < 4:
                break
            x = self.conv_block(x)
        features = int(np.prod(x.shape[1:]))
        x = graph.op("tensor.reshape", x, shape=(2, features))
        for _ in range(int(rng.integers(1, 3))):
            if rng.random() < 0.25:
                x = self.batch_norm(x, features)
            width = int(rng.integers(2, 7))
            x = graph.op("linalg.matmul", x, self.const("fc", rng.standard_normal((features, width)) / np.sqrt(features)))
            x = self.epilogue(x, width, (width,))
            features = width
        graph.outputs = [x]
        verify(graph)
        return graph


@pytest.mark.parametrize("seed", range(32))
def test_random_networks_fuse_without_changing_what_they_compute(seed: int):
    graph = RandomNet(seed).build()
    original = graph.clone()
    for make in PASSES:
        check_rewrite(make(verify_each=True), graph, seed=seed, changes=None, **FLOAT32)
    assert not any(node.op == "tensor.pad" for node in graph.nodes)  # every generated pad is foldable
    assert not any(node.op == "linalg.matmul" for node in graph.nodes)
    # all rules at once reach the same kind of fixed point from the original graph
    together = original.clone()
    # there is always a matmul head, so all rules together change something
    check_rewrite(RewritePass("fuse", FUSION_RULES, verify_each=True), together, seed=seed, **FLOAT32)
    assert len(together.nodes) <= len(graph.nodes)


# ---- the zoo --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2"])
def test_zoo_cnns_lose_every_batch_norm(name: str):
    from optc.frontends.torch import capture
    from optc.tools import zoo

    model, inputs = zoo.build(name, size="tiny")
    graph = capture(model, inputs)
    original = graph.clone()
    check_rewrite(fold_batch_norm(verify_each=True), graph, **FLOAT32)
    check_rewrite(fuse_epilogues(verify_each=True), graph, **FLOAT32)
    assert not any(node.op == "nn.batch_norm" for node in graph.nodes)
    assert len(graph.nodes) < len(original.nodes) - original.op_counts()["nn.batch_norm"]
    feeds = sample_inputs(original, 0)
    reference, fused = interpret(original, feeds), interpret(graph, feeds)
    for output in reference:
        scale = float(np.abs(reference[output]).max())
        np.testing.assert_allclose(fused[output], reference[output], rtol=1e-4, atol=1e-5 * scale)


# ---- compiled ------------------------------------------------------------------------------------------------

def conv_bn_relu_linear_gelu() -> Graph:
    graph = parse("""
graph g(%x: float32[2,3,8,8]) {
  param %w: float32[4,3,3,3]
  param %gamma: float32[4]
  param %beta: float32[4]
  param %mean: float32[4]
  param %var: float32[4]
  param %fc: float32[256,10]
  param %fc_bias: float32[10]
  %c: float32[2,4,8,8] = nn.conv(%x, %w) {pads=(1, 1, 1, 1)} @conv
  %n: float32[2,4,8,8] = nn.batch_norm(%c, %gamma, %beta, %mean, %var) @bn
  %r: float32[2,4,8,8] = math.relu(%n) @relu
  %f: float32[2,256] = tensor.reshape(%r) {shape=(2, 256)} @flatten
  %m: float32[2,10] = linalg.matmul(%f, %fc) @fc
  %a: float32[2,10] = math.add(%m, %fc_bias) @add
  %y: float32[2,10] = math.gelu(%a) @gelu
  return %y
}""", params={**random_params(25, w=(4, 3, 3, 3), fc_bias=(10,)), **batch_norm_params(4, 26),
              "fc": (np.random.default_rng(27).standard_normal((256, 10)) / 16).astype(np.float32)})
    return graph


def test_fused_graph_compiles_to_the_same_results():
    from optc.backends import compile_graph

    original = conv_bn_relu_linear_gelu()
    fused = original.clone()
    fold_batch_norm()(fused)
    fuse_epilogues()(fused)
    assert [node.op for node in fused.nodes] == ["nn.conv", "tensor.reshape", "nn.linear"]
    assert len(fused.nodes) < len(original.nodes)
    feeds = sample_inputs(original, 0)
    reference = interpret(original, feeds)
    compiled_original = compile_graph(original, target="cpu").run(feeds)
    compiled_fused = compile_graph(fused, target="cpu").run(feeds)
    assert_same_outputs(reference, compiled_original, rtol=1e-4, atol=1e-4)
    assert_same_outputs(reference, compiled_fused, rtol=1e-4, atol=1e-4)


def test_activation_behind_a_reshape_fuses_into_the_linear():
    rng = np.random.default_rng(7)
    params = {"w": rng.standard_normal((8, 6)).astype("float32"), "b": rng.standard_normal(6).astype("float32")}
    feeds = {"x": rng.standard_normal((2, 3, 8)).astype("float32")}
    graph = check_rewrite(fuse_epilogues(verify_each=True), """
graph g(%x: float32[2,3,8]) {
  param %w: float32[8,6]
  param %b: float32[6]
  %flat: float32[6,8] = tensor.reshape(%x) {shape=(6, 8)} @flat
  %lin: float32[6,6] = nn.linear(%flat, %w, %b) @lin
  %back: float32[2,3,6] = tensor.reshape(%lin) {shape=(2, 3, 6)} @back
  %y: float32[2,3,6] = math.gelu(%back) @y
  return %y
}""", params=params, feeds=feeds)  # compared at rtol=1e-5, atol=1e-6
    assert [node.op for node in graph.nodes] == ["tensor.reshape", "nn.linear", "tensor.reshape"]
    assert graph.nodes[1].attrs["activation"] == "gelu" and graph.outputs[0].name == "y"


def test_fusing_an_activation_does_not_change_the_flop_count():
    graph = parse("""
graph g(%x: float32[1,3,8,8]) {
  param %w: float32[4,3,3,3]
  %c: float32[1,4,8,8] = nn.conv(%x, %w) {pads=(1, 1, 1, 1)} @c
  %y: float32[1,4,8,8] = math.relu(%c) @y
  return %y
}""")
    before = graph.flops()
    assert fuse_epilogues()(graph)
    assert [node.op for node in graph.nodes] == ["nn.conv"]
    assert graph.flops() == before
