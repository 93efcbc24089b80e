"""Save and load graphs as JSON structure plus safetensors params. Never pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from ..errors import ArtifactError
from .graph import Graph, Value
from .types import TensorType

FORMAT_VERSION = 1


def _attr_to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"tuple": [_attr_to_json(item) for item in value]}
    return value


def _attr_from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(_attr_from_json(item) for item in value["tuple"])
    return value


def _type_json(value: Value) -> dict[str, Any]:
    return {"name": value.name, "shape": list(value.shape), "dtype": value.dtype}


def graph_to_json(graph: Graph) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "name": graph.name,
        "inputs": [_type_json(v) for v in graph.inputs],
        "params": [_type_json(v) for v in graph.params],
        "nodes": [
            {
                "name": node.name,
                "op": node.op,
                "inputs": [v.name for v in node.inputs],
                "outputs": [_type_json(v) for v in node.outputs],
                "attrs": {key: _attr_to_json(value) for key, value in node.attrs.items()},
            }
            for node in graph.nodes
        ],
        "outputs": [v.name for v in graph.outputs],
    }


def graph_from_json(data: dict[str, Any], params: dict[str, np.ndarray]) -> Graph:
    if data.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"graph format {data.get('format')} is not {FORMAT_VERSION}; recompile the model")
    graph = Graph(data["name"])
    env: dict[str, Value] = {}
    for item in data["inputs"]:
        env[item["name"]] = graph.add_input(item["name"], TensorType(tuple(item["shape"]), item["dtype"]))
    for item in data["params"]:
        if item["name"] not in params:
            raise ArtifactError(f"param {item['name']} is missing from the weights file")
        array = params[item["name"]]
        if list(array.shape) != list(item["shape"]) or array.dtype.name != item["dtype"]:
            raise ArtifactError(
                f"param {item['name']} is {array.dtype.name}{list(array.shape)} in the weights file but the graph "
                f"declares {item['dtype']}{item['shape']}"
            )
        env[item["name"]] = graph.add_param(item["name"], array)
    for item in data["nodes"]:
        node = graph.add_node(
            item["op"],
            [env[name] for name in item["inputs"]],
            {key: _attr_from_json(value) for key, value in item["attrs"].items()},
            name=item["name"],
            output_names=[out["name"] for out in item["outputs"]],
        )
        for value in node.outputs:
            env[value.name] = value
    graph.outputs = [env[name] for name in data["outputs"]]
    return graph


def save(graph: Graph, directory: str | Path, stem: str = "graph") -> list[Path]:
    """Write ``stem.json`` and ``stem.safetensors`` into ``directory``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    structure = directory / f"{stem}.json"
    weights = directory / f"{stem}.safetensors"
    structure.write_text(json.dumps(graph_to_json(graph), indent=1))
    # np.require, not np.ascontiguousarray: the latter turns 0-d arrays into shape (1,)
    save_file({v.name: np.require(a, requirements="C") for v, a in graph.params.items()}, str(weights))
    return [structure, weights]


def load(directory: str | Path, stem: str = "graph") -> Graph:
    directory = Path(directory)
    try:
        data = json.loads((directory / f"{stem}.json").read_text())
        params = load_file(str(directory / f"{stem}.safetensors"))
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot read graph from {directory}: {error}") from error
    return graph_from_json(data, params)
