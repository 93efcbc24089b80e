"""drop_blocks: residual blocks found in the zoo models, scored by how little they change their
input, and removed with the graph still valid, smaller and cheaper."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from optc.errors import PipelineError
from optc.frontends.torch import capture
from optc.ir import Graph, interpret, parse, sample_inputs, verify
from optc.passes import PassManager, parse_pipeline
from optc.passes.blocks import DropBlocks, find_residual_blocks, pair_into_layers
from optc.tools import zoo

MODELS = ("resnet18", "vit", "bert")
# per model: the scopes of its residual blocks, in graph order (downsampling ResNet blocks are not
# residual: their skip path has a convolution of its own)
SCOPES = {
    "resnet18": ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"],
    "vit": ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"],
    "bert": ["model.encoder.layer.0.attention", "model.encoder.layer.0", "model.encoder.layer.1.attention",
             "model.encoder.layer.1"],
}


@pytest.fixture(scope="module")
def fused_graphs() -> dict[str, Graph]:
    graphs = {}
    for name in MODELS:
        model, inputs = zoo.build(name, size="tiny")
        graph = capture(model, inputs, input_names=zoo.input_names(name))
        PassManager("cleanup,fuse", check_numerics=False).run(graph)
        graphs[name] = graph
    return graphs


def test_golden_block_is_replaced_by_its_input():
    graph = parse("""
        graph g(%x: float32[2,4]) {
          param %w: float32[4,4]
          %h: float32[2,4] = nn.linear(%x, %w) {activation='relu'} @h
          %y: float32[2,4] = math.add(%x, %h) @y
          %out: float32[2,4] = nn.softmax(%y) @out
          return %out
        }""", params={"w": np.random.default_rng(0).standard_normal((4, 4)).astype("float32")})
    assert DropBlocks(count=1)(graph)
    verify(graph)
    assert str(graph) == str(parse("""
        graph g(%x: float32[2,4]) {
          %out: float32[2,4] = nn.softmax(%x) @out
          return %out
        }"""))


def test_a_branch_read_outside_the_block_is_not_a_block():
    graph = parse("""
        graph g(%x: float32[2,4]) {
          param %w: float32[4,4]
          %h: float32[2,4] = nn.linear(%x, %w) @h
          %y: float32[2,4] = math.add(%x, %h) @y
          %z: float32[2,4] = math.mul(%y, %h) @z
          return %z
        }""")
    refused: Counter[str] = Counter()
    assert find_residual_blocks(graph, refused) == []
    assert refused == {"the branch value %h is also read by z": 1}


def test_a_sum_of_an_output_keeps_the_output_name():
    graph = parse("""
        graph g(%x: float32[2,4]) {
          param %w: float32[4,4]
          %h: float32[2,4] = nn.linear(%x, %w) @h
          %y: float32[2,4] = math.add(%h, %x) @y
          return %y
        }""", params={"w": np.ones((4, 4), "float32")})
    assert DropBlocks(count=1)(graph)
    verify(graph)
    assert [value.name for value in graph.outputs] == ["y"]
    feeds = sample_inputs(graph)
    np.testing.assert_array_equal(interpret(graph, feeds)["y"], feeds["x"])


@pytest.mark.parametrize("model", MODELS)
def test_finds_every_residual_block(fused_graphs, model):
    blocks = find_residual_blocks(fused_graphs[model])
    assert [block.scope for block in blocks] == SCOPES[model]
    assert all(block.skip.type == block.output.type and block.flops > 0 for block in blocks)


@pytest.mark.parametrize("model", MODELS)
def test_dropping_blocks_leaves_a_valid_smaller_cheaper_graph(fused_graphs, model):
    graph = fused_graphs[model].clone()
    before_nodes, before_flops, before_params = len(graph.nodes), graph.flops(), graph.param_count()
    report = PassManager("drop_blocks(count=2)").run(graph)  # verifies after the pass
    verify(graph)
    assert len(graph.nodes) < before_nodes and graph.flops() < before_flops and graph.param_count() < before_params
    rules = report.rows[0].rules
    dropped = [label for label, row in rules.items() if row["fired"]]
    assert len(dropped) == 2
    kept = [row["angular_distance"] for label, row in rules.items() if "angular_distance" in row and not row["fired"]]
    chosen = [rules[label]["angular_distance"] for label in dropped]
    assert max(chosen) <= min(kept)  # the most similar ones went
    assert len(find_residual_blocks(graph)) == len(SCOPES[model]) - 2


def _zero_last_layer(graph: Graph, scope: str) -> None:
    """Give the last weighted node of the block's branch zero weights (and bias): f(x) = 0."""
    block = next(block for block in find_residual_blocks(graph) if block.scope == scope)
    last = next(node for node in reversed(block.nodes) if node.op in ("nn.conv", "nn.linear"))
    for position in range(1, len(last.inputs)):
        zeros = graph.add_param(f"{last.inputs[position].name}.zeroed", np.zeros_like(graph.params[last.inputs[position]]))
        graph.set_input(last, position, zeros)
    graph.remove_unused_params()


@pytest.mark.parametrize("model,scope", [("resnet18", "layer2.1"), ("vit", "blocks.1.mlp"), ("bert", "model.encoder.layer.0")])
def test_a_block_whose_branch_is_zero_scores_as_most_redundant_and_drops_without_change(fused_graphs, model, scope):
    graph = fused_graphs[model].clone()
    _zero_last_layer(graph, scope)
    verify(graph)
    feeds = sample_inputs(graph, seed=3)
    expected = interpret(graph, feeds)
    drop = DropBlocks(count=1)
    assert drop(graph)
    verify(graph)
    by_scope = {score.scope: score for score in drop.scores}
    assert by_scope[scope].dropped and by_scope[scope].angular_distance == pytest.approx(0.0, abs=1e-6)
    assert [score.scope for score in drop.scores if score.dropped] == [scope]
    assert min(score.angular_distance for score in drop.scores if score.scope != scope) > 1e-3
    for name, array in interpret(graph, feeds).items():
        np.testing.assert_allclose(array, expected[name], rtol=1e-6, atol=1e-6)
    most_redundant = drop.table().splitlines()[2]  # after the header and its rule
    assert scope in most_redundant and most_redundant.endswith("yes")


def test_layers_pair_attention_and_mlp_blocks(fused_graphs):
    graph = fused_graphs["vit"].clone()
    layers = pair_into_layers(find_residual_blocks(graph))
    assert [layer.scope for layer in layers] == ["blocks.0", "blocks.1"]
    assert all(len(layer.adds) == 2 for layer in layers)
    drop = DropBlocks(count=1, unit="layer")
    assert drop(graph)
    verify(graph)
    assert sum(score.dropped for score in drop.scores) == 1
    assert graph.op_counts()["nn.attention"] == 1
    assert find_residual_blocks(graph) and len(find_residual_blocks(graph)) == 2


def test_flops_target_drops_until_reached(fused_graphs):
    graph = fused_graphs["bert"].clone()
    before = graph.flops()
    drop = DropBlocks(flops=0.3)
    drop(graph)
    verify(graph)
    assert graph.flops() <= 0.7 * before
    # no more than needed: putting back the last dropped block would miss the target
    removed = sorted((score.flops for score in drop.scores if score.dropped))
    assert sum(removed) - removed[0] < 0.3 * before


def test_ratio_zero_changes_nothing_and_reports_every_block(fused_graphs):
    graph = fused_graphs["resnet18"].clone()
    text = str(graph)
    drop = DropBlocks(ratio=0.0)
    assert not drop(graph)
    assert str(graph) == text
    assert len(drop.scores) == 5 and not any(score.dropped for score in drop.scores)


def test_calibration_inputs_from_an_npz_file(fused_graphs, tmp_path):
    graph = fused_graphs["vit"].clone()
    path = tmp_path / "calib.npz"
    np.savez(path, **sample_inputs(graph, seed=11))
    from_file, = parse_pipeline(f"drop_blocks(count=1,calib='{path}')")
    in_memory = DropBlocks(count=1, calib=sample_inputs(graph, seed=11))
    from_file(graph.clone())
    in_memory(graph.clone())
    assert from_file.scores == in_memory.scores


@pytest.mark.parametrize("options", ["drop_blocks", "drop_blocks(count=1,ratio=0.5)", "drop_blocks(ratio=2)",
                                     "drop_blocks(count=1,unit=heads)"])
def test_bad_options_say_what_is_expected(options):
    with pytest.raises(PipelineError, match="drop_blocks"):
        parse_pipeline(options)
