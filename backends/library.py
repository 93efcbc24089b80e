"""Library files of the Relax VM targets: export, load and copy one named library.

The cpu and cuda targets both package a compiled ``relax.VMExecutable`` as one shared library
in the artifact directory; these helpers are what they share.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import tvm
from tvm import relax

from ..errors import ArtifactError


def export_executable(executable: relax.VMExecutable, directory: Path, name: str) -> list[Path]:
    """Write ``executable`` as ``directory/name``; returns the path in a list."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    executable.export_library(str(path))
    return [path]


def load_library_file(directory: Path, name: str) -> tvm.runtime.Module:
    path = Path(directory) / name
    if not path.is_file():
        raise ArtifactError(f"no compiled library at {path}; export the model first")
    return tvm.runtime.load_module(str(path))


def copy_library_files(sources: Iterable[Path], directory: str | Path) -> list[Path]:
    """Copy a loaded model's library files into ``directory`` (a model loaded from disk has no
    executable to export again)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        destination = directory / source.name
        if source.resolve() != destination.resolve():
            shutil.copyfile(source, destination)
        written.append(destination)
    return written


def last_line(error: BaseException) -> str:
    """The last non-empty line of a TVM error (its message; the rest is a C++ backtrace)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]
