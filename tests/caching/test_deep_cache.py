"""DeepCache split: the cached step never computes the deep branch and matches the full step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optc.errors import PassError
from optc.ir.graph import Graph
from optc.ir.interpret import interpret
from optc.ir.types import TensorType
from optc.passes.caching import find_skip_branches, split_deep_cache


def test_both_unet_skips_are_found_outermost_first(unet):
    branches = find_skip_branches(unet)
    assert [branch.depth for branch in branches] == [1, 2]
    assert [branch.shape[2:] for branch in branches] == [(8, 8), (4, 4)]
    assert branches[0].deep_flops > branches[1].deep_flops > 0


def _ancestor_names(graph: Graph, value_name: str) -> set[str]:
    names, stack = set(), [graph.find(value_name).producer]
    while stack:
        node = stack.pop()
        if node is None or node.name in names:
            continue
        names.add(node.name)
        stack.extend(value.producer for value in node.inputs)
    return names


def test_cached_step_never_computes_the_deep_branch(unet, unet_split):
    branch = unet_split.info["branch"]
    cached = unet_split["cached"]
    # the deep branch, found independently: ancestors of the deep feature that the skip does not need
    deep_only = _ancestor_names(unet, branch.deep) - _ancestor_names(unet, branch.skip)
    time_embedding = {node.name for node in unet.nodes if node.outputs[0].type.rank == 2}  # shared [1, C] values
    assert deep_only - time_embedding, "the deep branch should have nodes of its own"
    assert not (deep_only - time_embedding) & {node.name for node in cached.nodes}
    # no convolution of the cached step runs below the 8x8 resolution of the cached skip
    assert {tuple(node.outputs[0].shape[2:]) for node in cached.nodes if node.op == "nn.conv"} == {(8, 8)}
    assert {tuple(node.outputs[0].shape[2:]) for node in unet.nodes if node.op == "nn.conv"} == {(8, 8), (4, 4), (2, 2)}
    assert cached.flops() == unet.flops() - branch.deep_flops
    assert unet_split.info["flops"] == {"full": unet.flops(), "cached": unet.flops() - branch.deep_flops}


def test_full_step_matches_torch_and_stores_the_feature(unet_model, unet_split, unet_feeds):
    outputs = interpret(unet_split["full"], unet_feeds)
    with torch.no_grad():
        expected = unet_model(torch.from_numpy(unet_feeds["x"]), torch.from_numpy(unet_feeds["t"])).numpy()
    np.testing.assert_allclose(outputs["eps"], expected, atol=1e-4, rtol=1e-4)
    assert outputs["deep_feature"].shape == unet_split.info["branch"].shape


def test_cached_step_with_this_steps_feature_equals_the_full_step(unet_split, unet_feeds):
    full = interpret(unet_split["full"], unet_feeds)
    cached = interpret(unet_split["cached"], dict(unet_feeds, deep_feature=full["deep_feature"]))
    np.testing.assert_allclose(cached["eps"], full["eps"], atol=1e-6)


def test_a_nearby_steps_feature_stands_in_far_better_than_none(unet_split, unet_feeds):
    stale = interpret(unet_split["full"], dict(unet_feeds, t=np.array([440.0], np.float32)))["deep_feature"]
    full = interpret(unet_split["full"], unet_feeds)["eps"]
    cached = interpret(unet_split["cached"], dict(unet_feeds, deep_feature=stale))["eps"]
    blind = interpret(unet_split["cached"], dict(unet_feeds, deep_feature=np.zeros_like(stale)))["eps"]
    assert 0 < np.abs(cached - full).max() < 0.5 * np.abs(blind - full).max()


def test_state_table_pairs_the_feature(unet_split):
    assert unet_split.state == {"deep_feature": {"init": "none", "inputs": {"cached": "deep_feature"},
                                                 "outputs": {"full": "deep_feature"}}}
    assert [value.name for value in unet_split["full"].outputs] == ["eps", "deep_feature"]
    assert [value.name for value in unet_split["cached"].inputs] == ["x", "t", "deep_feature"]


def test_depth_two_caches_less(unet):
    shallow, deep = split_deep_cache(unet, 1), split_deep_cache(unet, 2)
    assert shallow["cached"].flops() < deep["cached"].flops() < unet.flops()


def test_bad_requests_say_what_is_wrong(unet):
    with pytest.raises(PassError, match="out of range"):
        split_deep_cache(unet, depth=3)
    plain = Graph("plain")
    x = plain.add_input("x", TensorType((1, 4), "float32"))
    plain.outputs = [plain.op("math.relu", x)]
    with pytest.raises(PassError, match="no skip join"):
        split_deep_cache(plain)


def test_residual_adds_can_be_cached_dit_style(unet, unet_feeds):
    branches = find_skip_branches(unet, joins=("math.add",))
    assert branches, "the U-Net's residual blocks join by math.add"
    split = split_deep_cache(unet, depth=len(branches), joins=("math.add",))  # the innermost residual
    assert split["cached"].flops() < unet.flops()
    full = interpret(split["full"], unet_feeds)
    cached = interpret(split["cached"], dict(unet_feeds, deep_feature=full["deep_feature"]))
    np.testing.assert_allclose(cached["eps"], full["eps"], atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_a_unet_imported_from_onnx_splits_the_same_way(unet_model, tmp_path, unet_feeds):
    from optc.frontends.onnx import load_onnx
    from optc.passes import PassManager

    path = tmp_path / "unet.onnx"
    torch.onnx.export(unet_model, (torch.zeros(1, 1, 8, 8), torch.tensor([500.0])), str(path), input_names=["x", "t"],
                      output_names=["eps"], opset_version=17, dynamo=False)
    graph = load_onnx(path)
    PassManager("cleanup,fuse").run(graph)
    assert [branch.shape[2:] for branch in find_skip_branches(graph)] == [(8, 8), (4, 4)]
    split = split_deep_cache(graph, depth=1)
    full = interpret(split["full"], unet_feeds)
    cached = interpret(split["cached"], dict(unet_feeds, deep_feature=full["deep_feature"]))
    np.testing.assert_allclose(cached["eps"], full["eps"], atol=1e-6)
    with torch.no_grad():
        expected = unet_model(torch.from_numpy(unet_feeds["x"]), torch.from_numpy(unet_feeds["t"])).numpy()
    np.testing.assert_allclose(full["eps"], expected, atol=1e-4, rtol=1e-4)
