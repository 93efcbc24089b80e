"""KV cache: a decoder graph that recomputes the whole sequence becomes prefill and decode steps.

The source graph is captured at one static sequence length S (batch 1); S becomes the cache
capacity. Every value on the path from the token input carries a *sequence axis*; the
transform rebuilds that path for T tokens at a runtime ``position`` (T = the prompt length for
``prefill``, 1 for ``decode``), and each causal ``nn.attention`` appends its new keys and values
to fixed-capacity caches that are state inputs and outputs:

    before (S = 16):
      %k: float32[1,2,16,32] = tensor.transpose(...)
      %a: float32[1,2,16,32] = nn.attention(%q, %k, %v, %causal_mask)
    after (decode, T = 1):
      input %position: int64[1], %past_key_0: float32[1,2,16,32], %past_value_0: ...
      %k: float32[1,2,1,32] = tensor.transpose(...)
      %present_key_0: float32[1,2,16,32] = cache.update(%past_key_0, %k, %position) {axis=2}
      %a: float32[1,2,1,32] = nn.attention(%q, %present_key_0, %present_value_0, %keep)

``%keep`` (bool [T, S]) lets query i see key j when j <= position + i, so cache slots past the
current length are never read: shapes stay static, the length is an input. Constants laid out
along the sequence (position embeddings folded at capture) are gathered at the token positions.
The source's attention masks are assumed causal (plus padding); ``check=True`` (the default)
compares prefill with the source on the reference interpreter and refuses when they differ.

``cache_dtype="int8"`` stores the caches as int8 with one scale per layer and kind, calibrated
as max|k| / 127 over a seeded prompt run through the source (for microcontrollers, where the
caches dominate RAM); the attention reads them dequantized, so tokens may differ from float.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...errors import OptcError, PassError
from ...ir.graph import Graph, Node, Value
from ...ir.interpret import interpret
from ...ir.types import INT_DTYPES, TensorType
from ...ir.verify import verify
from .split import EntrySplit

logger = logging.getLogger(__name__)

PASS_NAME = "derive_kv_cache"


class KVCacheError(PassError):
    """The decoder graph cannot be split into prefill and decode steps; says why."""

    def __init__(self, message: str) -> None:
        super().__init__(PASS_NAME, [], OptcError(message))


def derive_kv_cache(graph: Graph, *, tokens: str | None = None, prompt_length: int | None = None,
                    check: bool = True, cache_dtype: str = "float32") -> EntrySplit:
    """Prefill and decode entry points with key/value caches for a decoder graph.

    ``tokens`` names the token input (default: the only integer input of shape [1, S]); other
    inputs (an attention mask) may only feed attention masks. ``prompt_length`` is the static
    token count of prefill (default S // 2). Both entries take the tokens, ``position`` (int64
    [1]: how many tokens the caches already hold) and the caches ``past_key_<i>``/
    ``past_value_<i>``; they return the source outputs for their tokens and ``present_*``.
    ``cache_dtype`` is ``"float32"`` (exact) or ``"int8"`` (calibrated per-layer scales).
    """
    source = graph.clone()
    if not any(node.op == "nn.attention" for node in source.nodes):
        from ..presets import Fuse  # recognizes nn.attention in the forms exporters write

        Fuse()(source)
    token_input = _token_input(source, tokens)
    capacity = int(token_input.shape[1])
    prompt = capacity // 2 if prompt_length is None else int(prompt_length)
    if not 1 <= prompt <= capacity:
        raise KVCacheError(f"prompt_length {prompt} must be in [1, {capacity}] (the captured sequence length)")
    if cache_dtype not in ("float32", "int8"):
        raise KVCacheError(f"cache_dtype {cache_dtype!r} must be 'float32' or 'int8'")
    scales = _calibrate_scales(source, token_input) if cache_dtype == "int8" else None
    prefill = _StepBuilder(source, token_input, prompt, f"{source.name}_prefill", scales).build()
    decode = _StepBuilder(source, token_input, 1, f"{source.name}_decode", scales).build()
    layers = sum(1 for value in decode.inputs if value.name.startswith("past_key_"))
    state = {}
    for layer in range(layers):
        for kind in ("key", "value"):
            state[f"{kind}_cache_{layer}"] = {
                "init": "zeros",
                "inputs": {"prefill": f"past_{kind}_{layer}", "decode": f"past_{kind}_{layer}"},
                "outputs": {"prefill": f"present_{kind}_{layer}", "decode": f"present_{kind}_{layer}"},
            }
    split = EntrySplit({"prefill": prefill, "decode": decode}, state,
                       {"capacity": capacity, "prompt_length": prompt, "layers": layers, "tokens": token_input.name,
                        "cache_dtype": cache_dtype, "cache_scales": scales,
                        "flops": {"source": source.flops(), "prefill": prefill.flops(), "decode": decode.flops()}})
    if check:
        _check_against_source(source, split, tolerance=1e-4 if scales is None else 0.1)
    logger.info("derived prefill (%d tokens) and decode for %s: %d layers, capacity %d",
                prompt, graph.name, layers, capacity)
    return split


def _token_input(graph: Graph, name: str | None) -> Value:
    candidates = [value for value in graph.inputs if value.dtype in INT_DTYPES and value.type.rank == 2]
    if name is not None:
        candidates = [value for value in graph.inputs if value.name == name]
        if not candidates:
            raise KVCacheError(f"no input named '{name}'; inputs: {[value.name for value in graph.inputs]}")
    elif len(candidates) != 1:
        candidates = [value for value in candidates if "id" in value.name] or candidates
        if len(candidates) != 1:
            raise KVCacheError(f"cannot tell the token input among {[v.name for v in candidates]}; pass tokens=NAME")
    value = candidates[0]
    if not value.type.is_static or value.type.rank != 2 or value.shape[0] != 1:
        raise KVCacheError(f"token input '{value.name}' must be [1, S] with a static S (batch 1), got {value.type}; "
                           "capture the model at the cache capacity you want")
    return value


# ---- rebuilding the sequence path for T tokens --------------------------------------------------------


@dataclass
class _StepBuilder:
    source: Graph
    token_input: Value
    count: int                       # T: tokens per call
    name: str
    scales: list[tuple[float, float]] | None = None  # int8 caches: (key, value) scale per layer
    graph: Graph = field(init=False)
    env: dict[int, Value] = field(default_factory=dict)      # source value -> new value
    axis: dict[int, int] = field(default_factory=dict)       # new value -> its sequence axis
    layers: int = 0
    cache_outputs: list[Value] = field(default_factory=list)  # present_key_<i>, present_value_<i>

    def __post_init__(self) -> None:
        self.graph = Graph(self.name)
        self.capacity = int(self.token_input.shape[1])

    def build(self) -> Graph:
        graph = self.graph
        tokens = graph.add_input(self.token_input.name, TensorType((1, self.count), self.token_input.dtype))
        self.position = graph.add_input("position", TensorType((1,), "int64"))
        self.env[id(self.token_input)] = tokens
        self.axis[id(tokens)] = 1
        offsets = graph.add_param("token_offsets", np.arange(self.count, dtype=np.int64))
        self.positions = graph.op("math.add", self.position, offsets, name="token_positions")  # [T]
        key_slots = graph.add_param("key_slots", np.arange(self.capacity, dtype=np.int64))
        query_positions = graph.op("tensor.reshape", self.positions, shape=(self.count, 1), name="query_positions")
        self.keep = graph.op("math.less_equal", key_slots, query_positions, name="visible_keys")  # [T, S]
        needed = _needed_nodes(self.source)
        for node in self.source.nodes:
            if id(node) in needed:
                self._rebuild(node)
        outputs = []
        for value in self.source.outputs:
            new = self._value(value)
            if id(new) not in self.axis:
                raise KVCacheError(f"output '{value.name}' does not depend on the tokens; nothing to cache")
            outputs.append(new)
        graph.outputs = outputs + self.cache_outputs
        for value, new in zip(self.source.outputs, outputs):
            graph.rename_value(new, value.name)
        graph.remove_dead_nodes()
        verify(graph)
        return graph

    # -- values ------------------------------------------------------------------------------------
    def _value(self, value: Value) -> Value:
        """The new graph's twin of a source value (params and token-free nodes are copied)."""
        if id(value) in self.env:
            return self.env[id(value)]
        if value in self.source.params:
            self.env[id(value)] = self.graph.add_param(value.name, self.source.params[value])
            return self.env[id(value)]
        if value.producer is None:
            raise KVCacheError(
                f"input '{value.name}' is used outside attention masks; the KV cache steps take only the "
                f"token input '{self.token_input.name}' (the caches replace the masks)"
            )
        raise KVCacheError(f"value {value.name} is used before it is computed (graph not in order?)")

    def _rebuild(self, node: Node) -> None:
        if node.op == "nn.attention":
            self._attention(node)
            return
        inputs = [self._value(value) for value in node.inputs]
        axes = [self.axis.get(id(value)) for value in inputs]
        if all(axis is None for axis in axes):  # token-free (weights, constants): copy as it is
            copy = self.graph.add_node(node.op, inputs, dict(node.attrs), name=node.name,
                                       output_names=[value.name for value in node.outputs])
            for old, new in zip(node.outputs, copy.outputs):
                self.env[id(old)] = new
            return
        rule = _rule_for(node.op)
        if rule is None:
            raise KVCacheError(f"node {node.name} ({node.op}) is on the token path and derive_kv_cache has no rule "
                               "for it; add one in passes/caching/kv_cache.py")
        new_node, out_axes = rule(self, node, inputs, axes)
        for old, new, out_axis in zip(node.outputs, new_node.outputs, out_axes):
            self.env[id(old)] = new
            if out_axis is not None:
                self.axis[id(new)] = out_axis

    def _add(self, node: Node, inputs: list[Value], attrs: dict | None = None) -> Node:
        return self.graph.add_node(node.op, inputs, dict(node.attrs) if attrs is None else attrs, name=node.name,
                                   output_names=[value.name for value in node.outputs])

    def _at_positions(self, value: Value, axis: int) -> Value:
        """A token-free operand laid out along the sequence, gathered at this call's positions."""
        if value.shape[axis] != self.capacity:
            return value
        return self.graph.op("tensor.gather", value, self.positions, axis=axis, name=f"{value.name}_at_positions")

    # -- attention -----------------------------------------------------------------------------------
    def _attention(self, node: Node) -> None:
        query, key, value = (self._value(item) for item in node.inputs[:3])
        for item in (query, key, value):
            if self.axis.get(id(item)) != item.type.rank - 2:
                raise KVCacheError(f"attention {node.name}: {item.name} does not run along the tokens (axis -2)")
        if len(node.inputs) == 3 and not node.attrs["causal"]:
            raise KVCacheError(f"attention {node.name} is neither causal nor masked; a KV cache needs causal attention")
        layer = self.layers
        self.layers += 1
        rank = key.type.rank
        presents, readable = [], []
        for index, (kind, new) in enumerate((("key", key), ("value", value))):
            scale = None if self.scales is None else self.scales[layer][index]
            stored = new if scale is None else self._quantize(new, scale, f"{node.name}_{kind}")
            shape = tuple(self.capacity if axis == rank - 2 else dim for axis, dim in enumerate(new.shape))
            past = self.graph.add_input(f"past_{kind}_{layer}", TensorType(shape, stored.dtype))
            present = self.graph.add_node("cache.update", [past, stored, self.position], {"axis": rank - 2},
                                          name=f"{node.name}_{kind}_cache", output_names=[f"present_{kind}_{layer}"]).output
            presents.append(present)
            readable.append(present if scale is None else self._dequantize(present, scale, f"{node.name}_{kind}"))
        self.cache_outputs.extend(presents)
        attended = self.graph.add_node("nn.attention", [query, readable[0], readable[1], self.keep],
                                       {"scale": node.attrs["scale"], "causal": False}, name=node.name,
                                       output_names=[node.outputs[0].name]).output
        self.env[id(node.outputs[0])] = attended
        self.axis[id(attended)] = rank - 2


    def _quantize(self, value: Value, scale: float, hint: str) -> Value:
        graph = self.graph
        inverse = graph.add_param(f"{hint}_inverse_scale", np.array(1.0 / scale, np.float32))
        scaled = graph.op("math.round", graph.op("math.mul", value, inverse, name=f"{hint}_scaled"), name=f"{hint}_rounded")
        clipped = graph.op("math.clip", scaled, min=-127.0, max=127.0, name=f"{hint}_clipped")
        return graph.op("math.cast", clipped, dtype="int8", name=f"{hint}_int8")

    def _dequantize(self, value: Value, scale: float, hint: str) -> Value:
        graph = self.graph
        factor = graph.add_param(f"{hint}_scale", np.array(scale, np.float32))
        return graph.op("math.mul", graph.op("math.cast", value, dtype="float32", name=f"{hint}_float"), factor,
                        name=f"{hint}_dequantized")


def _calibrate_scales(source: Graph, token_input: Value, seed: int = 0) -> list[tuple[float, float]]:
    """Per attention layer, max|key| / 127 and max|value| / 127 on a seeded prompt (a 10% margin)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, _vocabulary_size(source, token_input), token_input.shape).astype(token_input.dtype)
    feeds = {value.name: (tokens if value is token_input else np.ones(value.shape, value.dtype)) for value in source.inputs}
    values = interpret(source, feeds, keep=True)
    scales = []
    for node in source.nodes:
        if node.op == "nn.attention":
            key, value = (float(np.max(np.abs(values[item.name]))) for item in node.inputs[1:3])
            scales.append((max(key, 1e-6) * 1.1 / 127.0, max(value, 1e-6) * 1.1 / 127.0))
    return scales


def _needed_nodes(graph: Graph) -> set[int]:
    """Nodes the outputs need when attention masks are not followed (the caches replace them)."""
    needed: set[int] = set()
    stack = [value.producer for value in graph.outputs if value.producer is not None]
    while stack:
        node = stack.pop()
        if id(node) in needed:
            continue
        needed.add(id(node))
        inputs = node.inputs[:3] if node.op == "nn.attention" else node.inputs
        stack.extend(value.producer for value in inputs if value.producer is not None)
    return needed


# ---- rules: how each op carries the sequence axis -----------------------------------------------------------

Rule = Callable[[_StepBuilder, Node, list[Value], list["int | None"]], "tuple[Node, list[int | None]]"]


def _elementwise(builder: _StepBuilder, node: Node, inputs: list[Value], axes: list[int | None]) -> tuple[Node, list]:
    rank = node.outputs[0].type.rank
    out_axes = {rank - inputs[i].type.rank + axis for i, axis in enumerate(axes) if axis is not None}
    if len(out_axes) != 1:
        raise KVCacheError(f"node {node.name} ({node.op}) combines tokens along different axes")
    out_axis = out_axes.pop()
    operands = []
    for value, axis in zip(inputs, axes):
        local = out_axis - (rank - value.type.rank)
        if axis is None and local >= 0:
            value = builder._at_positions(value, local)
        operands.append(value)
    return builder._add(node, operands), [out_axis]


def _same_axis(check: Callable[[Node, int, int], bool]) -> Rule:
    """Ops that keep the rank and work off the sequence axis (``check`` says the axis is free)."""

    def rule(builder: _StepBuilder, node: Node, inputs: list[Value], axes: list[int | None]) -> tuple[Node, list]:
        axis = axes[0]
        if axis is None or any(other is not None for other in axes[1:]):
            raise KVCacheError(f"node {node.name} ({node.op}): only its first input may carry the tokens")
        rank = inputs[0].type.rank
        if not check(node, axis, rank):
            raise KVCacheError(f"node {node.name} ({node.op}) mixes values along the sequence axis")
        new = builder._add(node, inputs)
        return new, [axis] * len(new.outputs)

    return rule


def _reshape(builder: _StepBuilder, node: Node, inputs: list[Value], axes: list[int | None]) -> tuple[Node, list]:
    source_shape, target = node.inputs[0].shape, node.outputs[0].shape
    axis = axes[0]
    before = int(np.prod(source_shape[:axis], dtype=np.int64))
    for out_axis in range(len(target)):
        # the sequence stays one axis with the same elements before it: only the dims around it regroup
        if int(np.prod(target[:out_axis], dtype=np.int64)) == before and target[out_axis] == source_shape[axis]:
            shape = tuple(builder.count if index == out_axis else dim for index, dim in enumerate(target))
            return builder._add(node, inputs, {"shape": shape}), [out_axis]
    raise KVCacheError(f"reshape {node.name} merges the sequence axis with others ({source_shape} -> {target}); "
                       "only batch 1 graphs with the sequence kept as one axis are supported")


def _transpose(builder: _StepBuilder, node: Node, inputs: list[Value], axes: list[int | None]) -> tuple[Node, list]:
    return builder._add(node, inputs), [list(node.attrs["perm"]).index(axes[0])]


def _gather(builder: _StepBuilder, node: Node, inputs: list[Value], axes: list[int | None]) -> tuple[Node, list]:
    data_axis, index_axis = axes
    gather_axis = node.attrs["axis"] % inputs[0].type.rank
    if data_axis is None:  # an embedding lookup of the tokens
        return builder._add(node, inputs), [gather_axis + index_axis]
    if index_axis is not None or gather_axis == data_axis:
        raise KVCacheError(f"gather {node.name} indexes along the sequence axis")
    out = data_axis if data_axis < gather_axis else data_axis - 1 + inputs[1].type.rank
    return builder._add(node, inputs), [out]


def _off_axis(attr: str) -> Callable[[Node, int, int], bool]:
    return lambda node, axis, rank: node.attrs[attr] % rank != axis


def _last_axis_free(node: Node, axis: int, rank: int) -> bool:
    return axis != rank - 1


def _norm_free(node: Node, axis: int, rank: int) -> bool:
    return axis < node.attrs["axis"] % rank


def _slice_free(node: Node, axis: int, rank: int) -> bool:
    axes = node.attrs["axes"] if node.attrs["axes"] is not None else tuple(range(len(node.attrs["starts"])))
    return all(item % rank != axis for item in axes)


_RULES: dict[str, Rule] = {
    "tensor.reshape": _reshape,
    "tensor.transpose": _transpose,
    "tensor.gather": _gather,
    "tensor.split": _same_axis(_off_axis("axis")),
    "tensor.concat": _same_axis(_off_axis("axis")),
    "tensor.slice": _same_axis(_slice_free),
    "nn.softmax": _same_axis(_off_axis("axis")),
    "nn.log_softmax": _same_axis(_off_axis("axis")),
    "nn.layer_norm": _same_axis(_norm_free),
    "nn.rms_norm": _same_axis(_norm_free),
    "nn.linear": _same_axis(_last_axis_free),
}


def _rule_for(op: str) -> Rule | None:
    if op in _RULES:
        return _RULES[op]
    if op.startswith("math."):
        return _elementwise
    return None


# ---- the check --------------------------------------------------------------------------------------------


def _check_against_source(source: Graph, split: EntrySplit, tolerance: float = 1e-4) -> None:
    """Prefill on a seeded prompt must give the source's outputs for the same tokens (reference interpreter)."""
    prompt = split.info["prompt_length"]
    token_name = split.info["tokens"]
    rng = np.random.default_rng(0)
    token_value = source.find(token_name)
    vocabulary = _vocabulary_size(source, token_value)
    tokens = rng.integers(0, vocabulary, token_value.shape).astype(token_value.dtype)
    feeds = {value.name: (tokens if value.name == token_name else np.ones(value.shape, value.dtype))
             for value in source.inputs}
    expected = interpret(source, feeds)
    prefill = split.entries["prefill"]
    prefill_feeds = {token_name: tokens[:, :prompt], "position": np.zeros(1, np.int64)}
    for value in prefill.inputs:
        if value.name.startswith("past_"):
            prefill_feeds[value.name] = np.zeros(value.shape, value.dtype)
    actual = interpret(prefill, prefill_feeds)
    for value in source.outputs:
        got = actual[value.name]
        full = expected[value.name]
        axis = next(index for index, (a, b) in enumerate(zip(full.shape, got.shape)) if a != b or index == full.ndim - 1)
        want = np.take(full, np.arange(got.shape[axis]), axis=axis)
        error = float(np.max(np.abs(want.astype(np.float64) - got))) if want.size else 0.0
        scale = max(float(np.max(np.abs(want))), 1.0)
        if not error <= tolerance * scale:
            raise KVCacheError(
                f"prefill differs from the source graph on '{value.name}' (max|err| {error:.3g}); its attention masks "
                "are probably not causal, so a KV cache would change the results"
            )


def _vocabulary_size(graph: Graph, tokens: Value) -> int:
    """Rows of the embedding table the tokens index (the smallest gather table they feed)."""
    sizes = [int(node.inputs[0].shape[node.attrs["axis"]]) for node in tokens.users()
             if node.op == "tensor.gather" and node.inputs[1] is tokens]
    return min(sizes) if sizes else 2


__all__ = ["KVCacheError", "derive_kv_cache"]
