"""Property tests of channel slicing on seeded random convolutional graphs built in the IR.

Each graph mixes plain, grouped and depthwise convs, residual adds, channel concats and splits,
per-channel scales, batch norms and channel shuffles, then pools into a linear head. For every
seed: slicing to a FLOP target verifies and runs; slicing dead units (all their weights zero)
leaves the outputs unchanged, which checks every index the rewrite takes.
"""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import Graph, TensorType, Value, interpret, sample_inputs, verify
from optc.passes.slicing import ChannelAnalysis, analyze_channels, slice_channels


def zero_units(graph: Graph, analysis: ChannelAnalysis, units: list[int]) -> None:
    """Make ``units`` dead: zero every param slice that follows them."""
    nodes = {node.name: node for node in graph.nodes}
    for unit in units:
        for item, positions in analysis.unit_slices(unit):
            value = nodes[item.node].inputs[item.position]
            array = graph.params[value].copy()
            index = [slice(None)] * array.ndim
            index[item.axis] = positions
            array[tuple(index)] = 0
            graph.params[value] = array  # same shape and dtype: the graph stays valid


class RandomNet:
    """Builds one random graph: a pool of (1, C, 8, 8) tensors grown by random ops."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.graph = Graph(f"random{seed}")
        x = self.graph.add_input("x", TensorType((1, 3, 8, 8), "float32"))
        self.pool: list[Value] = [self.conv(x, 8)]

    def param(self, name: str, shape: tuple[int, ...]) -> Value:
        return self.graph.add_param(name, self.rng.standard_normal(shape).astype(np.float32) * 0.5)

    def conv(self, x: Value, out: int, groups: int = 1, kernel: int = 3) -> Value:
        channels = x.shape[1]
        weight = self.param("w", (out, channels // groups, kernel, kernel))
        bias = self.param("b", (out,))
        pad = kernel // 2
        activation = str(self.rng.choice(["relu", "none"]))
        return self.graph.op("nn.conv", x, weight, bias, groups=groups, pads=(pad,) * 4, activation=activation)

    def pick(self) -> Value:
        return self.pool[int(self.rng.integers(len(self.pool)))]

    def step(self) -> None:
        x = self.pick()
        channels = x.shape[1]
        choice = self.rng.integers(9)
        if choice == 0:
            y = self.conv(x, int(self.rng.choice([4, 8, 12, 16])), kernel=int(self.rng.choice([1, 3])))
        elif choice == 1:
            y = self.conv(x, channels, groups=channels)  # depthwise
        elif choice == 2 and channels % 4 == 0:
            y = self.conv(x, 8, groups=4)  # grouped: whole groups only
        elif choice == 3:
            same = [value for value in self.pool if value.shape == x.shape and value is not x]
            if not same:
                return
            y = self.graph.op("math.add", x, same[int(self.rng.integers(len(same)))])  # residual
        elif choice == 4:
            y = self.graph.op("tensor.concat", x, self.pick(), axis=1)
        elif choice == 5 and channels >= 4:
            first = int(self.rng.integers(1, channels))
            node = self.graph.add_node("tensor.split", [x], {"axis": 1, "sizes": (first, channels - first)})
            self.pool.extend(node.outputs)
            return
        elif choice == 6:
            y = self.graph.op("math.mul", x, self.param("scale", (channels, 1, 1)))
        elif choice == 7:
            parts = [self.param(name, (channels,)) for name in ("gamma", "beta", "mean")]
            variance = self.graph.add_param("var", self.rng.uniform(0.5, 2.0, channels).astype(np.float32))
            y = self.graph.op("nn.batch_norm", x, *parts, variance)
        elif choice == 8 and channels % 2 == 0:
            half = self.graph.op("tensor.reshape", x, shape=(1, 2, channels // 2, 8, 8))
            swapped = self.graph.op("tensor.transpose", half, perm=(0, 2, 1, 3, 4))
            y = self.graph.op("tensor.reshape", swapped, shape=(1, channels, 8, 8))  # channel shuffle
        else:
            return
        self.pool.append(y)

    def build(self, steps: int = 12) -> Graph:
        for _ in range(steps):
            self.step()
        last = self.pool[-1]
        pooled = self.graph.op("reduce.mean", last, axes=(2, 3), keepdims=False)
        head = self.param("head", (last.shape[1], 5))
        self.graph.outputs = [self.graph.op("nn.linear", pooled, head)]
        return self.graph


SEEDS = range(24)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_graph_slices_dead_units_exactly(seed):
    graph = RandomNet(seed).build()
    verify(graph)
    analysis = analyze_channels(graph)
    rng = np.random.default_rng(seed)
    dead = [unit for group in analysis.groups if group.sliceable
            for unit in rng.choice(group.units, size=len(group.units) // 2, replace=False).tolist()]
    if not dead:
        pytest.skip("nothing sliceable in this graph")
    zero_units(graph, analysis, dead)
    feeds = sample_inputs(graph, seed)
    expected = interpret(graph, feeds)
    report = slice_channels(graph, remove=dead, analysis=analysis)
    verify(graph)
    assert report.flops_after == graph.flops() < report.flops_before
    for name, array in expected.items():
        np.testing.assert_allclose(interpret(graph, feeds)[name], array, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_graph_reaches_flop_targets(seed):
    for target in (0.3, 0.5):
        graph = RandomNet(seed).build()
        inputs, outputs = [v.type for v in graph.inputs], [v.type for v in graph.outputs]
        report = slice_channels(graph, flops=target, min_keep=0.0)
        verify(graph)
        assert report.flops_after == graph.flops()
        assert [v.type for v in graph.inputs] == inputs and [v.type for v in graph.outputs] == outputs
        if report.reached:
            assert report.flops_reduction >= target
        else:
            assert "out of reach" in report.note or report.note == "nothing can be sliced"
        assert np.isfinite(interpret(graph, sample_inputs(graph))[graph.outputs[0].name]).all()
