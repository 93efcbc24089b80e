"""How an artifact stores several entry points (``write_artifact(..., entries=...)``).

The first (default) entry is the artifact's own graph and library at the top level, so a tool
that reads one graph and one library sees an ordinary artifact. Every other entry has
``entries/<name>/`` with its graph and library. Entry points of one model usually share their
weights (prefill and decode have the same matrices), so an entry's ``graph.safetensors`` holds
only the params that differ from the default graph's; the manifest lists the others under the
entry's ``shared_params`` and loading takes them from the default graph.

Nothing is opened that the manifest does not hash: loading refuses an entry directory holding
any file the manifest does not list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from ..errors import ArtifactError
from ..ir import serialize
from ..ir.graph import Graph
from .entries import EntryModel, check_entry_name, state_from_json

ENTRIES_DIRECTORY = "entries"


def write_entries(staging: Path, graph: Graph, entries: Mapping[str, tuple[Graph, Any]],
                  files: list[Path]) -> dict[str, Any]:
    """Write the non-default entries into ``staging`` (adding their paths to ``files``, so they are
    hashed); returns the manifest's ``entries`` and ``default_entry``."""
    names = [check_entry_name(name) for name in entries]
    if entries[names[0]][0] is not graph:
        raise ArtifactError("the first entry point must be the artifact's own graph (it is stored at the top level)")
    listed: dict[str, Any] = {names[0]: {"path": ".", "inputs": graph.input_signature(),
                                         "outputs": graph.output_signature()}}
    for name in names[1:]:
        entry_graph, entry_compiled = entries[name]
        relative = f"{ENTRIES_DIRECTORY}/{name}"
        shared = shared_params(graph, entry_graph)
        files += _save_graph(entry_graph, staging / relative, shared) + list(entry_compiled.export(staging / relative))
        listed[name] = {"path": relative, "inputs": entry_graph.input_signature(),
                        "outputs": entry_graph.output_signature(), "shared_params": sorted(shared)}
    return {"entries": listed, "default_entry": names[0]}


def shared_params(default: Graph, entry: Graph) -> set[str]:
    """Names of ``entry``'s params that the default graph has with the same name and contents."""
    by_name = {value.name: array for value, array in default.params.items()}
    shared = set()
    for value, array in entry.params.items():
        other = by_name.get(value.name)
        if other is not None and (other is array or (other.shape == array.shape and other.dtype == array.dtype
                                                      and np.array_equal(other, array))):
            shared.add(value.name)
    return shared


def _save_graph(graph: Graph, directory: Path, shared: set[str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    structure, weights = directory / "graph.json", directory / "graph.safetensors"
    structure.write_text(json.dumps(serialize.graph_to_json(graph), indent=1))
    own = {value.name: np.require(array, requirements="C") for value, array in graph.params.items()
           if value.name not in shared}
    save_file(own, str(weights))
    return [structure, weights]


def load_entries(directory: Path, manifest: dict[str, Any], target: Any, default_graph: Graph,
                 default: Any) -> EntryModel:
    """The EntryModel of a multi-entry artifact (its files were verified by ``read_manifest``);
    ``default_graph`` and ``default`` are the top-level graph and its compiled model."""
    listed = manifest["entries"]
    if not isinstance(listed, dict) or manifest.get("default_entry") not in listed:
        raise ArtifactError(f"{directory}: the manifest's entries are malformed; recompile the model")
    models = {manifest["default_entry"]: default}
    default_params = {value.name: array for value, array in default_graph.params.items()}
    for name, entry in listed.items():
        check_entry_name(name)
        if name == manifest["default_entry"]:
            continue
        relative = Path(str(entry.get("path", "")))
        if relative.is_absolute() or ".." in relative.parts or relative.parts[:1] != (ENTRIES_DIRECTORY,):
            raise ArtifactError(f"{directory}: entry point '{name}' points outside {ENTRIES_DIRECTORY}/: {relative}")
        entry_directory = directory / relative
        if not entry_directory.is_dir() or entry_directory.is_symlink():
            raise ArtifactError(f"{directory}: entry point '{name}' has no directory {relative}; recompile")
        unlisted = sorted(path.relative_to(directory).as_posix() for path in entry_directory.rglob("*")
                          if not path.is_dir() and path.relative_to(directory).as_posix() not in manifest["files"])
        if unlisted:
            raise ArtifactError(f"{directory}: entry point '{name}' files {unlisted} are not in the manifest; recompile")
        graph = _load_graph(entry_directory, entry.get("shared_params", []), default_params, name)
        models[name] = target.load(entry_directory, graph, manifest)
    return EntryModel(models, state_from_json(manifest.get("state", {})))


def _load_graph(directory: Path, shared: list[str], default_params: dict[str, np.ndarray], name: str) -> Graph:
    try:
        data = json.loads((directory / "graph.json").read_text())
        params = load_file(str(directory / "graph.safetensors"))
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot read the graph of entry point '{name}' from {directory}: {error}") from error
    for param in shared:
        if param not in default_params:
            raise ArtifactError(f"entry point '{name}' shares param '{param}', which the default graph lacks; recompile")
        params[param] = default_params[param]
    return serialize.graph_from_json(data, params)
