"""Tiny seeded graphs for the quantization tests (built in optc IR: no training, no capture)."""

from __future__ import annotations

import numpy as np

from optc.ir import Graph, TensorType


def small_cnn(seed: int = 0, width: int = 16) -> Graph:
    """conv-relu -> conv-relu (stride 2) -> global mean -> linear: the digits CNN's shape."""
    rng = np.random.default_rng(seed)
    graph = Graph("small_cnn")
    x = graph.add_input("image", TensorType(("batch", 3, 8, 8), "float32"))

    def param(name: str, shape: tuple[int, ...], scale: float) -> object:
        return graph.add_param(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    c1 = graph.op("nn.conv", x, param("w1", (width, 3, 3, 3), 0.3), param("b1", (width,), 0.1), pads=(1, 1, 1, 1),
                  activation="relu", name="conv1")
    c2 = graph.op("nn.conv", c1, param("w2", (width, width, 3, 3), 0.15), param("b2", (width,), 0.1), pads=(1, 1, 1, 1),
                  strides=(2, 2), activation="relu", name="conv2")
    pooled = graph.op("reduce.mean", c2, axes=(2, 3), keepdims=False, name="pool")
    logits = graph.op("nn.linear", pooled, param("w3", (width, 10), 0.5), param("b3", (10,), 0.1), name="head")
    graph.outputs = [logits]
    graph.rename_value(logits, "logits")
    return graph


def cnn_feeds(count: int, seed: int, batch: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)} for _ in range(count)]


def small_mlp(seed: int = 0, width: int = 64, hidden: int = 256, batch: int | str = "batch") -> Graph:
    """linear-gelu -> linear on (batch, tokens, width): a transformer MLP block (symbolic batch by default)."""
    rng = np.random.default_rng(seed)
    graph = Graph("small_mlp")
    x = graph.add_input("tokens", TensorType((batch, 4, width), "float32"))
    w1 = graph.add_param("w1", (rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32))
    b1 = graph.add_param("b1", (rng.standard_normal(hidden) * 0.1).astype(np.float32))
    w2 = graph.add_param("w2", (rng.standard_normal((hidden, width)) / np.sqrt(hidden)).astype(np.float32))
    hidden_value = graph.op("nn.linear", x, w1, b1, activation="gelu", name="fc1")
    out = graph.op("linalg.matmul", hidden_value, w2, name="fc2")
    graph.outputs = [out]
    graph.rename_value(out, "out")
    return graph


def mlp_feeds(count: int, seed: int, width: int = 64, batch: int = 8) -> list[dict[str, np.ndarray]]:
    """Correlated features (a fixed random mixing of a few strong directions), as real activations have."""
    rng = np.random.default_rng(1234)
    mixing = rng.standard_normal((width, width)) * np.linspace(3.0, 0.05, width)[:, None]
    data = np.random.default_rng(seed)
    return [{"tokens": (data.standard_normal((batch, 4, width)) @ mixing).astype(np.float32)} for _ in range(count)]
