"""What a caching transform returns: entry point graphs and the state table that links them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...ir.graph import Graph


@dataclass
class EntrySplit:
    """Entry point graphs (the default first) and their state table.

    ``state`` has the form ``optc.compile_entries`` takes (see ``optc.backends.entries``):
    buffer name -> {"init", "inputs": {entry: input name}, "outputs": {entry: output name}}.
    ``info`` says what the transform found (capacity, layers, the cached branch, FLOPs).
    """

    entries: dict[str, Graph]
    state: dict[str, dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Graph:
        return self.entries[name]
