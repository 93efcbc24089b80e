"""Shared, session-scoped pieces of the quantization tests: compiling is the slow part."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from optc.backends import CompiledModel, compile_graph
from optc.ir import Graph


@pytest.fixture(scope="session")
def compile_quant() -> Callable[[str, Callable[[], Graph]], CompiledModel]:
    """``compile_quant(key, make_graph)``: the CPU build of ``make_graph()``, compiled once per key."""
    built: dict[str, CompiledModel] = {}

    def get(key: str, make_graph: Callable[[], Graph]) -> CompiledModel:
        if key not in built:
            built[key] = compile_graph(make_graph(), target="cpu")
        return built[key]

    return get
