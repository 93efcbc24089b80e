"""Token pruning and merging: exact agreement with independent torch implementations of ToMe
and EViT, static shapes, protected tokens, schedules, refusals, and the compiled CPU build."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from optc.errors import OptcError, PipelineError
from optc.frontends.torch import capture
from optc.ir.graph import Graph
from optc.ir.interpret import interpret
from optc.ir.types import TensorType
from optc.ir.verify import verify
from optc.passes import PassManager, parse_pipeline
from optc.passes.tokens import find_blocks
from optc.passes.tokens.reduce import Emitter, merge, prune
from optc.tools.zoo import VisionTransformer

BATCH = 2


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch=2, dim=32, depth=3, heads=2, mlp_ratio=2.0, num_classes=10).eval()
    with torch.no_grad():  # spread the class token and positions so rankings have clear winners
        model.cls_token.normal_(0, 1.0)
        model.pos_embed.normal_(0, 1.0)
    return model


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((BATCH, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def fused(vit, images) -> Graph:
    graph = capture(vit, (torch.from_numpy(images),))
    PassManager(parse_pipeline("cleanup,fuse")).run(graph)
    return graph


def reduced(graph: Graph, pipeline: str):
    graph = graph.clone()
    passes = parse_pipeline(pipeline)
    PassManager(passes).run(graph)
    return graph, passes[0].last_report


def run(graph: Graph, images: np.ndarray) -> np.ndarray:
    return next(iter(interpret(graph, {graph.inputs[0].name: images}).values()))


# ---- independent torch references (written from the papers, not from the pass) --------------------------

def _attention(block, x, sizes):
    attn = block.attn
    batch, tokens, dim = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, attn.heads, dim // attn.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    scores = (q * (dim // attn.heads) ** -0.5) @ k.transpose(-2, -1)
    if sizes is not None:
        scores = scores + sizes.log()[:, None, None, :]
    probabilities = scores.softmax(-1)
    out = attn.proj((probabilities @ v).transpose(1, 2).reshape(batch, tokens, dim))
    return out, k, probabilities


def _embed(model, images):
    x = model.patch_embed(images).flatten(2).transpose(1, 2)
    return torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed


def tome_reference(model, images, remove: list[int]) -> torch.Tensor:
    """ToMe (Bolya et al. 2023): bipartite soft matching on head-averaged keys, class token kept,
    size-weighted merges, proportional attention."""
    x, sizes = _embed(model, images), None
    for block, r in zip(model.blocks, remove):
        out, k, _ = _attention(block, x, sizes)
        x = x + out
        if r:
            sizes = torch.ones(x.shape[:2]) if sizes is None else sizes
            metric = k.mean(1)
            metric = metric / metric.norm(dim=-1, keepdim=True)
            a, b = metric[:, 1::2], metric[:, 2::2]
            best, target = (a @ b.transpose(-1, -2)).max(dim=-1)
            order = torch.sort(best, dim=-1, descending=True, stable=True).indices
            sources, kept = order[:, :r], order[:, r:].sort(dim=-1).values
            weighted = x * sizes[..., None]
            xa, xb, sa, sb = weighted[:, 1::2], weighted[:, 2::2], sizes[:, 1::2], sizes[:, 2::2]
            index = target.gather(1, sources)
            xb = xb.scatter_add(1, index[..., None].expand(-1, -1, x.shape[-1]),
                                xa.gather(1, sources[..., None].expand(-1, -1, x.shape[-1])))
            sb = sb.scatter_add(1, index, sa.gather(1, sources))
            xa_kept = xa.gather(1, kept[..., None].expand(-1, -1, x.shape[-1]))
            sa_kept = sa.gather(1, kept)
            x = torch.cat([x[:, :1], xa_kept / sa_kept[..., None], xb / sb[..., None]], dim=1)
            sizes = torch.cat([sizes[:, :1], sa_kept, sb], dim=1)
        x = x + block.mlp(block.norm2(x))
    return model.head(model.norm(x)[:, 0])


def evit_reference(model, images, keep: list[int | None]) -> torch.Tensor:
    """EViT (Liang et al. 2022) without the fused token: keep the class token and the tokens it
    attends to most (mean over heads), in their original order."""
    x = _embed(model, images)
    for block, count in zip(model.blocks, keep):
        out, _, probabilities = _attention(block, x, None)
        x = x + out
        if count is not None:
            received = probabilities[:, :, 0, 1:].mean(1)
            top = received.topk(count - 1, dim=-1).indices.sort(dim=-1).values + 1
            index = torch.cat([torch.zeros(x.shape[0], 1, dtype=torch.long), top], dim=1)
            x = x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
        x = x + block.mlp(block.norm2(x))
    return model.head(model.norm(x)[:, 0])


# ---- agreement with the references --------------------------------------------------------------------

def test_blocks_are_found_with_the_class_token_protected(fused):
    blocks = find_blocks(fused)
    assert [block.tokens for block in blocks] == [65, 65, 65]
    graph, report = reduced(fused, "tokens(merge, r=8)")
    assert report.protect == 1
    assert [(row.tokens_in, row.tokens_out) for row in report.layers[:3]] == [(65, 57), (57, 49), (49, 41)]


def test_merge_matches_tome(vit, fused, images):
    graph, _ = reduced(fused, "tokens(merge, r=8)")
    with torch.no_grad():
        expected = tome_reference(vit, torch.from_numpy(images), [8, 8, 8]).numpy()
    np.testing.assert_allclose(run(graph, images), expected, rtol=1e-4, atol=1e-5)


def test_prune_matches_evit(vit, fused, images):
    graph, _ = reduced(fused, "tokens(prune, counts=(49, 33, 33))")
    with torch.no_grad():
        expected = evit_reference(vit, torch.from_numpy(images), [49, 33, None]).numpy()
    np.testing.assert_allclose(run(graph, images), expected, rtol=1e-4, atol=1e-5)


def test_reduction_changes_the_output_only_a_little_and_removes_flops(fused, images):
    original = run(fused, images)
    for pipeline in ("tokens(merge, r=4)", "tokens(prune, r=4, fuse=True)", "tokens(prune, r=4, score=norm)"):
        graph, report = reduced(fused, pipeline)
        out = run(graph, images)
        cosine = float((out * original).sum() / np.linalg.norm(out) / np.linalg.norm(original))
        assert cosine > 0.9, pipeline
        assert report.flops_after < report.flops_before == fused.flops()
        assert report.flops_after == graph.flops()


def test_shapes_are_static_and_the_graph_verifies(fused):
    graph, report = reduced(fused, "tokens(merge, flops=0.3)")
    verify(graph)
    assert all(isinstance(dim, int) for value in graph.values() for dim in value.shape)
    assert report.reduction >= 0.3
    again, _ = reduced(fused, "tokens(merge, flops=0.3)")
    assert str(again) == str(graph)  # deterministic


def test_flop_target_picks_the_smallest_schedule_that_reaches_it(fused):
    _, report = reduced(fused, "tokens(prune, flops=0.25)")
    r = report.layers[0].tokens_in - report.layers[0].tokens_out
    assert report.reduction >= 0.25
    _, smaller = reduced(fused, f"tokens(prune, r={r - 1})")
    assert smaller.reduction < 0.25


def test_pyramid_drops_at_stage_boundaries(fused):
    _, report = reduced(fused, "tokens(prune, pyramid=0.5, stages=3)")
    counts = [(row.tokens_in, row.tokens_out) for row in report.layers[:3]]
    assert counts == [(65, 33), (33, 17), (17, 17)]  # stages end after blocks 0 and 1 of 3; class token kept


def test_fused_token_is_the_weighted_mean_of_the_pruned(fused, images):
    graph, report = reduced(fused, "tokens(prune, counts=(49, 49, 49), fuse=True)")
    assert report.layers[0].tokens_out == 50  # 49 kept and one fused


# ---- protected tokens, on small standalone graphs -------------------------------------------------------

def _stream_graph(tokens: int, channels: int = 4) -> tuple[Graph, object, object]:
    graph = Graph("stream")
    stream = graph.add_input("x", TensorType((1, tokens, channels), "float32"))
    scores = graph.add_input("s", TensorType((1, tokens), "float32"))
    return graph, stream, scores


def test_protected_tokens_survive_pruning_even_with_the_lowest_score():
    graph, stream, scores = _stream_graph(8)
    graph.outputs = [prune(Emitter(graph, None, "t"), stream, scores, kept=3, protect=2, fuse=False).stream]
    x = np.arange(32, dtype=np.float32).reshape(1, 8, 4)
    s = np.array([[-5, -6, 1, 9, 3, 8, 0, 2]], dtype=np.float32)  # protected 0 and 1 score lowest
    out = next(iter(interpret(graph, {"x": x, "s": s}).values()))
    np.testing.assert_array_equal(out, x[:, [0, 1, 3]])  # protected first, then the best (token 3), in order


def test_protected_token_is_never_merged_and_merges_are_size_weighted():
    graph = Graph("stream")
    stream = graph.add_input("x", TensorType((1, 5, 2), "float32"))
    keys = graph.add_input("k", TensorType((1, 1, 5, 2), "float32"))
    sizes = graph.add_input("n", TensorType((1, 5), "float32"))
    step = merge(Emitter(graph, None, "t"), stream, keys, sizes, remove=1, protect=1)
    graph.outputs = [step.stream, step.sizes, step.origin]
    x = np.array([[[9, 9], [1, 0], [3, 0], [0, 1], [0, 5]]], dtype=np.float32)
    k = np.array([[[[1, 1], [1, 0], [1, 0.1], [0, 1], [0.1, 1]]]], dtype=np.float32)  # token 0 matches nothing best
    n = np.array([[1, 1, 3, 2, 1]], dtype=np.float32)
    out, out_sizes, origin = interpret(graph, {"x": x, "k": k, "n": n}).values()
    # A = tokens 1, 3 ; B = tokens 2, 4. Token 1 (most similar: to 2) merges into 2; 3 stays.
    np.testing.assert_allclose(out, [[[9, 9], [0, 1], [(1 * 1 + 3 * 3) / 4, 0], [0, 5]]], rtol=1e-6)
    np.testing.assert_array_equal(out_sizes, [[1, 2, 4, 1]])
    np.testing.assert_array_equal(origin, [[0, 3, 2, 4]])  # each new token stands for the token it came from


# ---- refusals and options -------------------------------------------------------------------------------

def test_symbolic_batch_is_refused_with_advice():
    from optc.tools.digits import DigitsViT, capture_graph

    torch.manual_seed(0)
    graph = capture_graph(DigitsViT().eval(), np.zeros((2, 1, 8, 8), dtype=np.float32))
    assert not all(isinstance(dim, int) for dim in graph.inputs[0].shape)
    with pytest.raises(OptcError, match="static shapes"):
        parse_pipeline("tokens(merge, r=4)")[0](graph)


@pytest.mark.parametrize("text, message", [
    ("tokens(squash, r=2)", "method"),
    ("tokens(merge)", "needs a schedule"),
    ("tokens(merge, r=2, pyramid=0.5)", "one schedule"),
    ("tokens(merge, r=2, fuse=True)", "applies to prune"),
    ("tokens(merge, flops=1.5)", "fraction"),
])
def test_bad_options_are_pipeline_errors(text, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(text)


def test_too_much_merging_is_refused(fused):
    with pytest.raises(OptcError, match="removes at most"):
        reduced(fused, "tokens(merge, counts=(20, 20, 20))")


def test_graph_without_encoder_blocks_is_refused():
    graph = Graph("mlp")
    x = graph.add_input("x", TensorType((1, 4), "float32"))
    graph.outputs = [graph.op("math.relu", x)]
    with pytest.raises(OptcError, match="no transformer encoder block"):
        parse_pipeline("tokens(merge, r=1)")[0](graph)


def test_embedding_added_after_the_reduction_is_refused():
    graph = Graph("late_embedding")
    x = graph.add_input("x", TensorType((1, 9, 8), "float32"))
    weight = graph.add_param("w", np.eye(8, dtype=np.float32))
    q = graph.op("tensor.reshape", graph.op("nn.linear", x, weight), shape=(1, 1, 9, 8))
    attended = graph.op("tensor.reshape", graph.op("nn.attention", q, q, q), shape=(1, 9, 8))
    stream = graph.op("math.add", x, attended)
    late = graph.op("math.add", stream, graph.add_param("late_positions", np.ones((1, 9, 8), dtype=np.float32)))
    graph.outputs = [graph.op("reduce.mean", late, axes=(1,), keepdims=False)]
    with pytest.raises(OptcError, match="not reduced"):
        parse_pipeline("tokens(merge, r=2)")[0](graph)


def test_mean_pooling_counts_merged_tokens_by_size():
    """With merging, a mean over tokens weighs each merged token by how many it holds, so merging
    two identical tokens leaves the mean unchanged."""
    graph = Graph("pool")
    x = graph.add_input("x", TensorType((1, 6, 4), "float32"))
    q = graph.op("tensor.reshape", x, shape=(1, 1, 6, 4))
    stream = graph.op("math.add", x, graph.op("tensor.reshape", graph.op("nn.attention", q, q, q), shape=(1, 6, 4)))
    graph.outputs = [graph.op("reduce.mean", stream, axes=(1,), keepdims=False)]
    features = np.random.default_rng(1).standard_normal((1, 3, 4)).astype(np.float32)
    feeds = {"x": np.repeat(features, 2, axis=1)}  # tokens 0,1 / 2,3 / 4,5 identical: merges are exact
    before = next(iter(interpret(graph, feeds).values()))
    merged = graph.clone()
    passes = parse_pipeline("tokens(merge, r=3, proportional=True)")
    passes[0](merged)
    assert passes[0].last_report.layers[0].tokens_out == 3
    np.testing.assert_allclose(next(iter(interpret(merged, feeds).values())), before, rtol=1e-5, atol=1e-6)


# ---- the compiled CPU build ---------------------------------------------------------------------------

@pytest.mark.parametrize("pipeline", ["tokens(merge, r=8)", "tokens(prune, r=8, fuse=True)"])
def test_compiled_build_matches_the_reference(fused, images, pipeline):
    from optc.backends import compile_graph

    graph, _ = reduced(fused, pipeline)
    compiled = compile_graph(graph, "cpu")
    expected = run(graph, images)
    actual = next(iter(compiled.run({graph.inputs[0].name: images}).values()))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


# ---- BERT-style encoders: post-norm blocks and padding masks ----------------------------------------

class ClassTokenEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=32)
        config._attn_implementation = "eager"
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]


PADDED = 4


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    model = ClassTokenEncoder().eval()
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 50, (2, 16)).astype(np.int64)
    mask = np.ones((2, 16), dtype=np.int64)
    mask[0, -PADDED:] = 0
    mask[1, 3:3 + PADDED] = 0  # padding in the middle too: pruning must find it by attention, not position
    graph = capture(model, (torch.from_numpy(ids), torch.from_numpy(mask)))
    PassManager(parse_pipeline("cleanup,fuse")).run(graph)
    return graph, {"input_ids": ids, "attention_mask": mask}


def test_bert_blocks_are_post_norm_and_the_class_token_is_protected(bert):
    graph, _ = bert
    blocks = find_blocks(graph)
    assert len(blocks) == 3
    assert all(graph.find(block.point).producer.op == "nn.layer_norm" for block in blocks)
    _, report = reduced(graph, "tokens(prune, r=2)")
    assert report.protect == 1


def test_pruning_exactly_the_padding_changes_nothing(bert):
    """The class token gives padded keys zero attention, so pruning as many tokens as there is
    padding removes exactly the padding, and every later block (whose padding mask follows the
    kept tokens) computes what it did before."""
    graph, feeds = bert
    pruned, report = reduced(graph, f"tokens(prune, counts=({16 - PADDED}, {16 - PADDED}, {16 - PADDED}))")
    assert [row.tokens_out for row in report.layers[:3]] == [12, 12, 12]
    expected = next(iter(interpret(graph, feeds).values()))
    np.testing.assert_allclose(next(iter(interpret(pruned, feeds).values())), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pipeline", ["tokens(merge, r=3)", "tokens(prune, r=3, fuse=True)"])
def test_masked_encoder_reductions_compile_and_match_the_reference(bert, pipeline):
    from optc.backends import compile_graph

    graph, feeds = bert
    changed, _ = reduced(graph, pipeline)
    verify(changed)
    expected = next(iter(interpret(changed, feeds).values()))
    actual = next(iter(compile_graph(changed, "cpu").run(feeds).values()))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
