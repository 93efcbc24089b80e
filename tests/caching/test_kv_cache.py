"""KV cache: prefill and decode steps reproduce the full-sequence decoder exactly."""

from __future__ import annotations

import numpy as np
import pytest

from optc.backends import compile_graph
from optc.errors import PassError
from optc.ir.graph import Graph
from optc.ir.interpret import interpret
from optc.ir.types import TensorType
from optc.passes.caching import derive_kv_cache
from optc.tools.bench_caching import greedy_cached, greedy_full

from .conftest import CAPACITY, PROMPT

LAYERS = 2  # zoo gpt2 "tiny"


def test_decode_step_has_static_cache_buffers_and_a_position(kv_split):
    decode = kv_split["decode"]
    names = [value.name for value in decode.inputs]
    assert names[:2] == ["input_ids", "position"]
    assert decode.inputs[0].shape == (1, 1) and decode.inputs[1].shape == (1,)
    caches = [value for value in decode.inputs if value.name.startswith("past_")]
    assert len(caches) == 2 * LAYERS and all(value.shape[2] == CAPACITY for value in caches)
    assert [value.name for value in decode.outputs] == ["logits"] + [
        f"present_{kind}_{layer}" for layer in range(LAYERS) for kind in ("key", "value")]
    assert decode.outputs[0].shape == (1, 1, 1000)
    assert kv_split["prefill"].inputs[0].shape == (1, PROMPT)
    assert set(kv_split.state) == {f"{kind}_cache_{layer}" for layer in range(LAYERS) for kind in ("key", "value")}
    assert kv_split.state["key_cache_0"]["inputs"] == {"prefill": "past_key_0", "decode": "past_key_0"}
    assert kv_split.info["flops"]["decode"] < kv_split.info["flops"]["source"] / 10


def test_prefill_then_decode_steps_match_the_full_sequence(decoder, kv_split):
    """Reference interpreter: every position's logits, prefill for the prompt, one decode step per token after."""
    tokens = np.random.default_rng(3).integers(0, 1000, (1, CAPACITY)).astype(np.int64)
    expected = interpret(decoder, {"input_ids": tokens, "attention_mask": np.ones((1, CAPACITY), np.int64)})["logits"]
    caches = {value.name: np.zeros(value.shape, value.dtype) for value in kv_split["prefill"].inputs[2:]}
    outputs = interpret(kv_split["prefill"], {"input_ids": tokens[:, :PROMPT], "position": np.zeros(1, np.int64), **caches})
    np.testing.assert_allclose(outputs["logits"], expected[:, :PROMPT], atol=2e-4, rtol=1e-4)
    for position in range(PROMPT, CAPACITY):
        caches = {name.replace("present_", "past_"): array for name, array in outputs.items() if name != "logits"}
        outputs = interpret(kv_split["decode"], {"input_ids": tokens[:, position:position + 1],
                                                 "position": np.array([position]), **caches})
        np.testing.assert_allclose(outputs["logits"][:, 0], expected[:, position], atol=2e-4, rtol=1e-4)


def test_greedy_generation_with_the_caches_gives_the_same_tokens(decoder, kv_artifact):
    import optc

    artifact = optc.load_artifact(kv_artifact)
    prompt = np.random.default_rng(5).integers(0, 1000, (1, PROMPT)).astype(np.int64)
    new_tokens = CAPACITY - PROMPT
    cached, _ = greedy_cached(artifact.session(), prompt, new_tokens)
    full, _ = greedy_full(compile_graph(decoder), prompt, new_tokens, CAPACITY)
    assert cached == full
    assert len(set(cached)) > 3  # the model does not just repeat one token, so a cache bug would show


def _bidirectional() -> Graph:
    graph = Graph("encoder")
    ids = graph.add_input("input_ids", TensorType((1, 4), "int64"))
    table = graph.add_param("table", np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32))
    hidden = graph.op("tensor.reshape", graph.op("tensor.gather", table, ids), shape=(1, 1, 4, 8))
    graph.outputs = [graph.op("nn.attention", hidden, hidden, hidden)]
    return graph


def test_non_causal_attention_is_refused():
    with pytest.raises(PassError, match="neither causal nor masked"):
        derive_kv_cache(_bidirectional())


def test_a_mask_that_is_not_causal_is_caught_by_the_check():
    graph = _bidirectional()
    attention = graph.nodes[-1]
    keep_all = graph.add_param("keep_all", np.ones((4, 4), bool))
    replacement = graph.add_node("nn.attention", list(attention.inputs) + [keep_all], {})
    graph.outputs = [replacement.output]
    graph.remove_node(attention)
    with pytest.raises(PassError, match="not causal"):
        derive_kv_cache(graph, prompt_length=2)


def test_prompt_length_must_fit_the_capacity(decoder):
    with pytest.raises(PassError, match="prompt_length"):
        derive_kv_cache(decoder, prompt_length=CAPACITY + 1)


def test_cache_update_compiles_to_the_reference():
    graph = Graph("update")
    cache = graph.add_input("cache", TensorType((2, 6, 3), "float32"))
    update = graph.add_input("update", TensorType((2, 2, 3), "float32"))
    position = graph.add_input("position", TensorType((1,), "int64"))
    graph.outputs = [graph.op("cache.update", cache, update, position, axis=1)]
    rng = np.random.default_rng(0)
    feeds = {"cache": rng.standard_normal((2, 6, 3)).astype(np.float32),
             "update": rng.standard_normal((2, 2, 3)).astype(np.float32), "position": np.array([3])}
    expected = feeds["cache"].copy()
    expected[:, 3:5] = feeds["update"]
    np.testing.assert_array_equal(list(interpret(graph, feeds).values())[0], expected)
    np.testing.assert_array_equal(list(compile_graph(graph).run(feeds).values())[0], expected)
    with pytest.raises(Exception, match="capacity 6"):
        interpret(graph, dict(feeds, position=np.array([5])))


def test_a_shorter_prompt_padded_to_the_prefill_length_decodes_correctly(decoder, kv_split):
    """Pad slots written by prefill are never read: decode overwrites them before its keys reach them."""
    length = PROMPT - 2
    tokens = np.random.default_rng(4).integers(0, 1000, (1, CAPACITY)).astype(np.int64)
    expected = interpret(decoder, {"input_ids": tokens, "attention_mask": np.ones((1, CAPACITY), np.int64)})["logits"]
    padded = tokens[:, :PROMPT].copy()
    padded[:, length:] = 999
    caches = {value.name: np.zeros(value.shape, value.dtype) for value in kv_split["prefill"].inputs[2:]}
    outputs = interpret(kv_split["prefill"], {"input_ids": padded, "position": np.zeros(1, np.int64), **caches})
    np.testing.assert_allclose(outputs["logits"][:, :length], expected[:, :length], atol=2e-4, rtol=1e-4)
    for position in range(length, length + 4):
        caches = {name.replace("present_", "past_"): array for name, array in outputs.items() if name != "logits"}
        outputs = interpret(kv_split["decode"], {"input_ids": tokens[:, position:position + 1],
                                                 "position": np.array([position]), **caches})
        np.testing.assert_allclose(outputs["logits"][:, 0], expected[:, position], atol=2e-4, rtol=1e-4)


def test_int8_caches_keep_the_logits_close(decoder):
    split = derive_kv_cache(decoder, prompt_length=PROMPT, cache_dtype="int8")
    caches = [value for value in split["decode"].inputs if value.name.startswith("past_")]
    assert caches and all(value.dtype == "int8" for value in caches)
    assert len(split.info["cache_scales"]) == LAYERS
    tokens = np.random.default_rng(6).integers(0, 1000, (1, CAPACITY)).astype(np.int64)
    expected = interpret(decoder, {"input_ids": tokens, "attention_mask": np.ones((1, CAPACITY), np.int64)})["logits"]
    feeds = {value.name: np.zeros(value.shape, value.dtype) for value in split["prefill"].inputs[2:]}
    outputs = interpret(split["prefill"], {"input_ids": tokens[:, :PROMPT], "position": np.zeros(1, np.int64), **feeds})
    for position in range(PROMPT, CAPACITY):
        caches = {name.replace("present_", "past_"): array for name, array in outputs.items() if name != "logits"}
        outputs = interpret(split["decode"], {"input_ids": tokens[:, position:position + 1],
                                              "position": np.array([position]), **caches})
        got, want = outputs["logits"][0, 0].astype(np.float64), expected[0, position].astype(np.float64)
        assert np.dot(got, want) / np.linalg.norm(got) / np.linalg.norm(want) > 0.99  # per-tensor int8
        assert np.abs(got - want).max() > 0  # quantized: close, not exact
    with pytest.raises(PassError, match="cache_dtype"):
        derive_kv_cache(decoder, cache_dtype="int4")
