"""Compiled artifacts: a directory with ``manifest.json``, the optimized graph and the library.

Writing is atomic: everything goes into a staging directory beside the destination, every file
and the directory are fsynced, then the staging directory is renamed into place. A failure at any
point leaves the destination as it was. Loading checks the format version and the sha256 and size
of every listed file before any library is opened, so a modified artifact is refused before
``dlopen`` can run its code.

An artifact may hold several entry points (``write_artifact(..., entries=...)``): the first is
stored at the top level exactly like a single-entry artifact, so every tool that reads one
graph and one library keeps working on it; the others live in ``entries/<name>/`` with their own
graph and library (``backends.entry_artifacts``). The manifest lists them all under ``entries``
with their signatures and the state buffers they share under ``state`` (``backends.entries``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from ..ir import serialize
from ..ir.graph import Graph

FORMAT = "optc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("optc", "apache-tvm", "apache-tvm-ffi", "numpy", "onnx", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass
class Artifact:
    """A loaded (verified) artifact, or one just compiled in memory (``path`` is None)."""

    manifest: dict[str, Any]
    graph: Graph
    compiled: Any  # backends.runtime.CompiledModel
    path: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    entries: Any = None  # backends.entries.EntryModel when the artifact has several entry points

    @property
    def target(self) -> str:
        return str(self.manifest["target"]["name"])

    @property
    def entry_names(self) -> list[str]:
        """The entry points, default first (a single-entry artifact has one, named by its graph)."""
        return self.entries.names if self.entries is not None else [self.graph.name]

    def entry(self, name: str | None = None) -> Any:
        """The ``CompiledModel`` of one entry point; None (or the only one's name) is the default."""
        if self.entries is not None:
            return self.entries.entry(name)
        if name is not None and name != self.graph.name:
            raise ArtifactError(f"this artifact has one entry point ('{self.graph.name}'), not '{name}'")
        return self.compiled

    def session(self) -> Any:
        """A ``backends.entries.Session`` over the entry points, holding their state between calls."""
        from .entries import EntryModel

        return (self.entries or EntryModel({self.graph.name: self.compiled})).session()

    def run(self, feeds: Mapping[str, np.ndarray], entry: str | None = None) -> dict[str, np.ndarray]:
        return self.entry(entry).run(feeds)


def write_artifact(
    destination: str | Path,
    graph: Graph,
    compiled: Any,
    manifest: dict[str, Any],
    entries: Mapping[str, tuple[Graph, Any]] | None = None,
) -> Path:
    """Publish graph + library + manifest at ``destination`` atomically; returns the path.

    ``manifest`` holds the caller's fields (target, pipeline, report, source, state); format,
    signature, tool versions and file hashes are added here. ``entries`` maps entry point names to
    (graph, compiled model) with the default entry first, ``graph``/``compiled`` itself: it is
    stored at the top level, the others under ``entries/<name>/``. An existing artifact at
    ``destination`` is replaced; any other existing file or non-empty directory is refused.
    """
    destination = Path(destination).absolute()
    if destination.exists() and not _replaceable(destination):
        raise ArtifactError(
            f"{destination} exists and is not an optc artifact; choose another output path or remove it"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=destination.parent))
    try:
        files = serialize.save(graph, staging) + list(compiled.export(staging))
        full = dict(manifest)
        if entries:
            from .entry_artifacts import write_entries

            full.update(write_entries(staging, graph, entries, files))
        full.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            inputs=graph.input_signature(),
            outputs=graph.output_signature(),
            tools=tool_versions(),
            files={
                path.relative_to(staging).as_posix(): {"sha256": sha256_of(path), "size": path.stat().st_size}
                for path in sorted(files)
            },
        )
        manifest_path = staging / MANIFEST
        manifest_path.write_text(json.dumps(full, indent=1, default=_json_default) + "\n")
        for path in files + [manifest_path]:
            _fsync(path)
        _fsync(staging)
        _swap_into_place(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _replaceable(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / MANIFEST).is_file() or not any(path.iterdir())


def _swap_into_place(staging: Path, destination: Path) -> None:
    old = None
    if destination.exists():
        old = destination.parent / f".{destination.name}.old-{os.getpid()}"
        os.rename(destination, old)
    os.rename(staging, destination)
    _fsync(destination.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check the manifest and every listed file's size and hash. No code is loaded."""
    directory = Path(path)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{directory} is not an optc artifact (no {MANIFEST}); compile one with 'optc compile'")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path} is not an optc manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{directory} has artifact format {manifest.get('format_version')}, this optc reads {FORMAT_VERSION}; "
            "recompile the model with this version"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{manifest_path} lists no files")
    for name, entry in files.items():
        file_path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{manifest_path} lists a file outside the artifact: {name}")
        if file_path.is_symlink() or not file_path.is_file():
            raise ArtifactError(f"{directory}: {name} is missing or not a regular file; recompile the model")
        if file_path.stat().st_size != entry.get("size") or sha256_of(file_path) != entry.get("sha256"):
            raise ArtifactError(
                f"{directory}: {name} does not match its sha256 in the manifest (modified after compilation?); "
                "refusing to load it, recompile the model"
            )
    return manifest


def load_artifact(path: str | Path) -> Artifact:
    """Verify, then load the graph and the compiled library for its target."""
    from .targets import get_target

    directory = Path(path)
    manifest = read_manifest(directory)
    graph = serialize.load(directory)
    target = get_target(manifest["target"]["name"])
    compiled = target.load(directory, graph, manifest)
    artifact = Artifact(manifest=manifest, graph=graph, compiled=compiled, path=directory)
    if "entries" in manifest:
        from .entry_artifacts import load_entries

        artifact.entries = load_entries(directory, manifest, target, graph, compiled)
    return artifact
