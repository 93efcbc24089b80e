"""The NumPy reference interpreter: runs any verified graph, one registry reference per node."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InputError, OptcError
from .graph import Graph, Value
from .types import TensorType


def check_inputs(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match feeds to the graph inputs by name, checking shapes and dtypes; says what is wrong."""
    names = [value.name for value in graph.inputs]
    missing = [name for name in names if name not in feeds]
    extra = [name for name in feeds if name not in names]
    if missing or extra:
        raise InputError(f"inputs must be exactly {names}; missing {missing}, unexpected {extra}")
    checked = {}
    for value in graph.inputs:
        array = np.asarray(feeds[value.name])
        if array.dtype.name != value.dtype:
            raise InputError(f"input '{value.name}' must be {value.dtype}, got {array.dtype.name}")
        if array.ndim != value.type.rank or any(
            isinstance(dim, int) and dim != actual for dim, actual in zip(value.shape, array.shape)
        ):
            raise InputError(f"input '{value.name}' must have shape {list(value.shape)}, got {list(array.shape)}")
        checked[value.name] = array
    return checked


def interpret(graph: Graph, feeds: Mapping[str, np.ndarray], keep: bool = False) -> dict[str, np.ndarray]:
    """Run ``graph`` on ``feeds`` (keyed by input name); returns outputs keyed by output name.

    With ``keep=True`` every intermediate value is returned too (for debugging a rewrite).
    Intermediates are freed after their last use otherwise.
    """
    checked = check_inputs(graph, feeds)
    bindings = _bind_symbols(graph, checked)
    env: dict[int, np.ndarray] = {id(v): checked[v.name] for v in graph.inputs}
    env.update({id(v): array for v, array in graph.params.items()})
    remaining = {id(v): len(v.uses) for node in graph.nodes for v in node.inputs}
    pinned = {id(v) for v in graph.outputs} | set(map(id, graph.params))
    names: dict[int, str] = {}
    for node in graph.nodes:
        arrays = [env[id(v)] for v in node.inputs]
        try:
            results = node.opdef.run(arrays, _bound_attrs(node, bindings) if bindings else node.attrs)
        except OptcError:
            raise
        except Exception as error:  # a reference failing on real data is reported with the node
            raise OptcError(f"reference interpreter failed at {node.name} ({node.op}): {error}") from error
        for value, result in zip(node.outputs, results):
            expected: TensorType = value.type
            if result.dtype.name != expected.dtype:
                result = result.astype(expected.dtype)
            env[id(value)] = result
            if keep:
                names[id(value)] = value.name
        if not keep:
            for value in node.inputs:
                key = id(value)
                remaining[key] -= 1
                if remaining[key] == 0 and key not in pinned:
                    env.pop(key, None)
    results = {v.name: env[id(v)] for v in graph.outputs}
    if keep:
        results.update({name: env[key] for key, name in names.items() if key in env})
    return results


def _bind_symbols(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Sizes of the symbolic dims of the inputs, read off the feeds."""
    bindings: dict[str, int] = {}
    for value in graph.inputs:
        for dim, size in zip(value.shape, feeds[value.name].shape):
            if isinstance(dim, str):
                if bindings.setdefault(dim, int(size)) != size:
                    raise InputError(f"dim '{dim}' is {bindings[dim]} in one input but {size} in input '{value.name}'")
    return bindings


def _bound_attrs(node, bindings: Mapping[str, int]) -> dict:
    """The node's attributes with bound symbols substituted into shape-valued (``dims``) ones."""
    schema = node.opdef.attrs
    if not any(spec.kind == "dims" for spec in schema.values()):
        return node.attrs
    return {
        key: tuple(bindings.get(dim, dim) if isinstance(dim, str) else dim for dim in value)
        if schema[key].kind == "dims" and value is not None else value
        for key, value in node.attrs.items()
    }


def sample_inputs(graph: Graph, seed: int = 0, bindings: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded random feeds for every input: floats in N(0,1), ints in [0, 10), bools at random."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph.inputs:
        shape = tuple(dim if isinstance(dim, int) else (bindings or {}).get(dim, 1) for dim in value.shape)
        feeds[value.name] = random_array(rng, shape, value.dtype)
    return feeds


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(dtype)


__all__ = ["Value", "check_inputs", "interpret", "random_array", "sample_inputs"]
