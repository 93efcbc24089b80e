"""Channel slicing: dependency groups, budgets, dense rewrites and exactness on dead channels.

The models: ResNet-18, MobileNetV2 (depthwise, inverted residuals), a ViT and a BERT encoder
(zoo, tiny), and small plain-torch models written here for concat (DenseNet-style), split/chunk
and grouped convs. Every sliced graph must verify, keep its input and output shapes, run in the
reference interpreter, and report the FLOPs that ``graph.flops()`` counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from optc.errors import OptcError, PipelineError
from optc.frontends.torch import capture
from optc.ir import Graph, TensorType, interpret, parse, print_graph, sample_inputs, verify
from optc.passes import PassManager, parse_pipeline
from optc.passes.slicing import SliceChannels, analyze_channels, slice_channels
from optc.tools import zoo

# ---- models ----------------------------------------------------------------------------------------


class DenseNetish(nn.Module):
    """Pre-activation dense layers: each reads the concat of every earlier output (channel offsets)."""

    def __init__(self, growth: int = 12, stem: int = 16, layers: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, stem, 3, padding=1)
        widths = [stem + growth * index for index in range(layers)]
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, growth, 3, padding=1)) for width in widths
        )
        self.transition = nn.Conv2d(stem + growth * layers, 24, 1)
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        x = F.relu(self.transition(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SplitNet(nn.Module):
    """torch.split into unequal parts, a gated branch, chunk halves added, flatten into a linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.branch = nn.Conv2d(12, 12, 3, padding=1)
        self.gate = nn.Conv2d(20, 20, 1)
        self.conv2 = nn.Conv2d(32, 48, 3, padding=1)
        self.fc = nn.Linear(24 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        a, b = torch.split(y, [12, 20], dim=1)
        z = torch.cat([F.relu(self.branch(a)), b * torch.sigmoid(self.gate(b))], 1)
        first, second = F.relu(self.conv2(z)).chunk(2, dim=1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(first + second, 4), 1))


class GroupedNet(nn.Module):
    """Grouped and depthwise convs; the stem is grouped over the model's own input channels."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 16, 3, padding=1, groups=4)
        self.expand = nn.Conv2d(16, 32, 1)
        self.grouped = nn.Conv2d(32, 64, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.project = nn.Conv2d(64, 32, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.expand(x))
        x = F.relu(self.grouped(x))
        x = F.relu(self.depthwise(x))
        return self.fc(self.project(x).mean(dim=(2, 3)))


class ShuffleNet(nn.Module):
    """Squeeze-excite, group norm, channel shuffle (reshape-transpose-reshape), transposed conv."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.norm = nn.GroupNorm(8, 32)
        self.squeeze = nn.Linear(32, 8)
        self.excite = nn.Linear(8, 32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.down = nn.Conv2d(16, 8, 3, stride=4, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv1(x)))
        scale = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3))))))
        x = F.relu(self.grouped(x * scale[:, :, None, None]))
        n, c, h, w = x.shape
        x = x.reshape(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = F.relu(self.down(F.relu(self.up(x))))
        return self.fc(torch.flatten(x, 1))


LOCAL = {"densenet": (DenseNetish, (1, 3, 16, 16)), "split": (SplitNet, (1, 3, 16, 16)),
         "grouped": (GroupedNet, (1, 4, 16, 16)), "shuffle": (ShuffleNet, (1, 3, 16, 16))}
ZOO = ("resnet18", "mobilenetv2", "vit", "bert")
MODELS = ("resnet18", "mobilenetv2", "densenet", "split", "grouped", "vit", "bert")


@pytest.fixture(scope="module")
def fused_graphs() -> dict[str, Graph]:
    return {}


def fused(cache: dict[str, Graph], name: str) -> Graph:
    """The captured graph after ``cleanup,fuse`` (built once per module), as a fresh clone."""
    if name not in cache:
        if name in LOCAL:
            factory, shape = LOCAL[name]
            torch.manual_seed(0)
            model = factory().eval()
            graph = capture(model, (torch.randn(shape),))
        else:
            model, inputs = zoo.build(name, size="tiny")
            graph = capture(model, inputs)
        PassManager("cleanup,fuse", check_numerics=False).run(graph)
        cache[name] = graph
    return cache[name].clone()


def signature(graph: Graph) -> list[tuple]:
    return [(value.name, value.shape, value.dtype) for value in (*graph.inputs, *graph.outputs)]


def zero_units(graph: Graph, analysis, units: list[int]) -> None:
    """Make ``units`` dead: zero every param slice that follows them (rows, columns, biases, scales)."""
    nodes = {node.name: node for node in graph.nodes}
    for unit in units:
        for item, positions in analysis.unit_slices(unit):
            value = nodes[item.node].inputs[item.position]
            array = graph.params[value].copy()
            index = [slice(None)] * array.ndim
            index[item.axis] = positions
            array[tuple(index)] = 0
            graph.params[value] = array  # same shape and dtype: the graph stays valid


# ---- a golden rewrite --------------------------------------------------------------------------------

BEFORE = """
graph g(%x: float32[1,3,8,8]) {
  param %w1: float32[4,3,3,3]
  param %b1: float32[4] = [0.1, 0.2, 0.3, 0.4]
  param %w2: float32[2,4,1,1]
  %c1: float32[1,4,8,8] = nn.conv(%x, %w1, %b1) {activation='relu', pads=(1, 1, 1, 1)} @c1
  %c2: float32[1,2,8,8] = nn.conv(%c1, %w2) @c2
  return %c2
}
"""

AFTER = """
graph g(%x: float32[1,3,8,8]) {
  param %w1: float32[2,3,3,3]
  param %b1: float32[2] = [0.10000000149011612, 0.30000001192092896]
  param %w2: float32[2,2,1,1] = [[[[1.0]], [[1.0]]], [[[1.0]], [[1.0]]]]
  %c1: float32[1,2,8,8] = nn.conv(%x, %w1, %b1) {activation='relu', pads=(1, 1, 1, 1)} @c1
  %c2: float32[1,2,8,8] = nn.conv(%c1, %w2) @c2
  return %c2
}
"""


def test_golden_conv_pair_keeps_the_heaviest_channels():
    w1 = np.ones((4, 3, 3, 3), np.float32) * np.array([1.0, 0.1, 2.0, 0.2], np.float32).reshape(4, 1, 1, 1)
    graph = parse(BEFORE, params={"w1": w1, "w2": np.ones((2, 4, 1, 1), np.float32)})
    report = slice_channels(graph, ratio=0.5, min_keep=0.0)
    verify(graph)
    assert print_graph(graph).strip() == AFTER.strip()
    np.testing.assert_array_equal(graph.params[graph.find("w1")], w1[[0, 2]])
    layers = [(row.node, row.channels_before, row.channels_after) for row in report.layers]
    assert layers == [("c1", 4, 2), ("c2", 2, 2)]
    assert report.unsliceable()[0].reasons == ["model output %c2"]


# ---- dependency groups -------------------------------------------------------------------------------

def test_resnet_residual_stream_is_one_group_per_stage(fused_graphs):
    analysis = analyze_channels(fused(fused_graphs, "resnet18"))
    by_layers = sorted((len(group.sources), len(group.units)) for group in analysis.groups if group.sliceable)
    # per stage: the stream (stem or downsample conv + two block outputs) and two inner convs
    assert by_layers.count((3, 8)) == 1 and by_layers.count((3, 16)) == 1
    assert by_layers.count((3, 32)) == 1 and by_layers.count((3, 64)) == 1
    assert sum(1 for layers, _ in by_layers if layers == 1) == 8
    head = [group for group in analysis.groups if not group.sliceable]
    assert len(head) == 1 and head[0].reasons() == ["model output %out0"]


def test_attention_slices_whole_heads(fused_graphs):
    for name, head_dim in (("vit", 16), ("bert", 32)):
        analysis = analyze_channels(fused(fused_graphs, name))
        heads = [group for group in analysis.groups if group.sliceable and len(group.units) == 2]
        assert len(heads) == 2, name  # two layers, two heads each
        for group in heads:
            assert group.unit_width == head_dim * (3 if name == "vit" else 1)  # one fused qkv, or q, k, v apart
            assert len(group.sources) == (1 if name == "vit" else 3)


def test_unsliceable_groups_say_why(fused_graphs):
    bert = analyze_channels(fused(fused_graphs, "bert"))
    frozen = [group for group in bert.groups if not group.sliceable]
    reasons = " ".join(reason for group in frozen for reason in group.reasons())
    assert "model output %out0" in reasons and "none to slice" in reasons  # the stream starts at an embedding
    grouped = analyze_channels(fused(fused_graphs, "grouped"))
    stem = grouped.groups[0]
    assert not stem.sliceable
    assert stem.reasons() == [f"grouped conv {stem.name} (groups=4) slices whole groups; its input channels are fixed"]
    assert [len(group.units) for group in grouped.groups if group.sliceable] == [4, 32]  # 4 whole groups


def test_softmax_over_channels_and_input_residual_are_frozen():
    graph = Graph("g")
    x = graph.add_input("x", TensorType((1, 4, 5, 5), "float32"))
    w = graph.add_param("w", np.ones((4, 4, 1, 1), np.float32))
    w2 = graph.add_param("w2", np.ones((6, 4, 1, 1), np.float32))
    residual = graph.op("math.add", graph.op("nn.conv", x, w), x)
    probabilities = graph.op("nn.softmax", graph.op("nn.conv", residual, w2), axis=1)
    graph.outputs = [graph.op("reduce.sum", probabilities, axes=(1,))]
    groups = analyze_channels(graph).groups
    assert [group.sliceable for group in groups] == [False, False]
    assert "combines the channels with %x" in groups[0].reasons()[0]
    assert "nn.softmax" in groups[1].reasons()[0] and "across the channels" in groups[1].reasons()[0]


# ---- budgets on every model ----------------------------------------------------------------------------

@pytest.mark.parametrize("target", [0.3, 0.5])
@pytest.mark.parametrize("model", MODELS)
def test_flop_target_gives_a_verified_smaller_graph(fused_graphs, model, target):
    graph = fused(fused_graphs, model)
    before = signature(graph)
    flops, params = graph.flops(), graph.param_count()
    report = slice_channels(graph, flops=target)
    verify(graph)
    assert report.reached, report.note
    assert report.flops_before == flops and report.params_before == params
    assert report.flops_after == graph.flops() and report.params_after == graph.param_count()
    assert target <= report.flops_reduction <= target + 0.05, report.table()
    assert graph.param_count() < params
    assert signature(graph) == before
    outputs = interpret(graph, sample_inputs(graph))
    assert all(np.isfinite(array).all() for array in outputs.values())
    assert sum(row.flops_after for row in report.layers) <= sum(row.flops_before for row in report.layers)


@pytest.mark.parametrize("model", ["resnet18", "vit", "split"])
def test_param_target_and_ratio(fused_graphs, model):
    graph = fused(fused_graphs, model)
    params = graph.param_count()
    report = slice_channels(graph, params=0.4)
    verify(graph)
    assert report.reached and 0.4 <= report.params_reduction <= 0.45
    assert graph.param_count() == report.params_after < params
    graph = fused(fused_graphs, model)
    report = slice_channels(graph, ratio=0.25, min_keep=0.0)
    verify(graph)
    for group, row in zip(analyze_channels(fused(fused_graphs, model)).groups, report.groups):
        if group.sliceable:
            assert row.units_after == len(group.units) - round(0.25 * len(group.units))


def test_rankings_layer_and_global(fused_graphs):
    analysis = analyze_channels(fused(fused_graphs, "resnet18"))
    graph = fused(fused_graphs, "resnet18")
    report = slice_channels(graph, flops=0.4, ranking="layer", min_keep=0.0)
    verify(graph)
    assert report.reached and 0.4 <= report.flops_reduction <= 0.45
    kept = [row.units_after / row.units_before for row in report.groups if row.units_before > 1]
    assert max(kept) - min(kept) < 0.1  # one ratio everywhere (up to rounding)
    graph = fused(fused_graphs, "resnet18")
    report = slice_channels(graph, ratio=0.5, ranking="global", min_keep=0.0)
    verify(graph)
    assert sum(row.units_before - row.units_after for row in report.groups) == round(0.5 * len(analysis.units))


@pytest.mark.parametrize("model", MODELS)
def test_ratio_zero_changes_nothing(fused_graphs, model):
    graph = fused(fused_graphs, model)
    feeds = sample_inputs(graph)
    expected = interpret(graph, feeds)
    text = print_graph(graph)
    report = slice_channels(graph, ratio=0.0)
    assert not report.changed and print_graph(graph) == text
    actual = interpret(graph, feeds)
    for name, array in expected.items():
        np.testing.assert_array_equal(actual[name], array)


@pytest.mark.parametrize("model", MODELS + ("shuffle",))
def test_slicing_dead_units_leaves_outputs_unchanged(fused_graphs, model):
    """Zero every weight of half the units of each group, slice exactly those: same outputs.

    Units whose channels pass through a layer norm are left alone: removing even a dead channel
    changes the norm's mean and variance.
    """
    graph = fused(fused_graphs, model)
    analysis = analyze_channels(graph)
    rng = np.random.default_rng(0)
    dead = []
    for group in analysis.groups:
        if group.sliceable and not group.normalized:
            dead += rng.choice(group.units, size=len(group.units) // 2, replace=False).tolist()
    assert dead
    zero_units(graph, analysis, dead)
    feeds = sample_inputs(graph)
    expected = interpret(graph, feeds)
    flops = graph.flops()
    report = slice_channels(graph, remove=dead, analysis=analysis)
    verify(graph)
    assert graph.flops() == report.flops_after < flops
    actual = interpret(graph, feeds)
    for name, array in expected.items():
        np.testing.assert_allclose(actual[name], array, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["resnet18", "densenet", "grouped"])
def test_l1_importance_removes_dead_units_first(fused_graphs, model):
    graph = fused(fused_graphs, model)
    analysis = analyze_channels(graph)
    rng = np.random.default_rng(1)
    dead = []
    for group in analysis.groups:
        if group.sliceable:
            dead += rng.choice(group.units, size=round(0.5 * len(group.units)), replace=False).tolist()
    zero_units(graph, analysis, dead)
    feeds = sample_inputs(graph)
    expected = interpret(graph, feeds)
    report = slice_channels(graph, ratio=0.5, min_keep=0.0)
    verify(graph)
    assert sum(group.units_before - group.units_after for group in report.groups) == len(dead)
    actual = interpret(graph, feeds)
    for name, array in expected.items():
        np.testing.assert_allclose(actual[name], array, rtol=1e-5, atol=1e-5)


def test_multiple_rounds_kept_channels(fused_graphs):
    graph = fused(fused_graphs, "mobilenetv2")
    report = slice_channels(graph, flops=0.3, multiple=8)
    verify(graph)
    assert report.reached
    for row in report.layers:
        assert row.channels_after % 8 == 0 or row.channels_after == row.channels_before, row


def test_importance_by_activation_and_batch_norm(fused_graphs):
    graph = fused(fused_graphs, "split")
    feeds = [sample_inputs(graph, seed) for seed in range(2)]
    report = slice_channels(graph, flops=0.3, importance="activation", feeds=feeds)
    verify(graph)
    assert report.reached and report.flops_after == graph.flops()
    model, inputs = zoo.build("resnet18", size="tiny")
    unfused = capture(model, inputs)
    report = slice_channels(unfused, flops=0.3, importance="bn")  # batch norms are still there
    verify(unfused)
    assert report.reached and any(node.op == "nn.batch_norm" for node in unfused.nodes)
    with pytest.raises(OptcError, match="calibration"):
        slice_channels(fused(fused_graphs, "split"), ratio=0.3, importance="activation")


def test_activation_importance_reads_the_shared_calibration_format(fused_graphs, tmp_path):
    """calib=FILE: arrays keyed by input name, first axis = samples (as quant's --calib)."""
    graph = fused(fused_graphs, "split")
    samples = [sample_inputs(graph, seed) for seed in range(3)]
    np.savez(tmp_path / "calib.npz", **{value.name: np.concatenate([feed[value.name] for feed in samples])
                                        for value in graph.inputs})
    from_file = graph.clone()
    parse_pipeline(f"slice(flops=0.3, importance=activation, calib='{tmp_path / 'calib.npz'}')")[0](from_file)
    slice_channels(graph, flops=0.3, importance="activation", feeds=samples)
    assert str(from_file) == str(graph)  # the file's samples are the same feeds


def test_slicing_a_sliced_graph_again(fused_graphs):
    graph = fused(fused_graphs, "mobilenetv2")
    slice_channels(graph, flops=0.3)
    flops = graph.flops()
    report = slice_channels(graph, flops=0.3)
    verify(graph)
    assert report.flops_before == flops and report.reached and graph.flops() < flops


# ---- the pass -------------------------------------------------------------------------------------------

def test_pipeline_string_runs_the_pass_and_reports(fused_graphs):
    graph = fused(fused_graphs, "densenet")
    manager = PassManager("slice(0.3)", check_numerics=True)
    report = manager.run(graph)
    row = report.rows[-1]
    assert row.changed and row.stats.flops == graph.flops() < report.before.flops
    pass_ = manager.passes[0]
    assert isinstance(pass_, SliceChannels) and pass_.ratio == 0.3
    assert pass_.last_report is not None and pass_.last_report.flops_after == graph.flops()
    assert any(key.startswith("convolution") for key in row.rules)
    assert any(key.startswith("group ") and "model output %out0" in stat["refused"] for key, stat in row.rules.items())
    explained = report.explain()
    assert "refused" in explained


@pytest.mark.parametrize("options", ["slice", "slice(ratio=0.3,flops=0.5)", "slice(flops=1.5)",
                                     "slice(ratio=0.3,importance=magic)", "slice(ratio=0.3,ranking=local)"])
def test_bad_options_are_pipeline_errors(options):
    with pytest.raises(PipelineError):
        parse_pipeline(options)
