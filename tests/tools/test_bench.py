"""The bench harness: interleaved worker processes, failures reported instead of hanging."""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import Graph, TensorType, sample_inputs
from optc.tools.bench import SystemSpec, format_table, measure

pytestmark = pytest.mark.slow


def test_measure_reports_a_broken_peer_and_still_times_optc(tmp_path):
    import optc

    graph = Graph()
    x = graph.add_input("x", TensorType((4, 8), "float32"))
    w = graph.add_param("w", np.ones((8, 2), "float32"))
    graph.outputs = [graph.op("linalg.matmul", x, w)]
    artifact = optc.compile(graph, output=tmp_path / "art", check=False)
    specs = [
        SystemSpec("optc", artifact=str(artifact.path), threads=1),
        SystemSpec("ort", onnx=str(tmp_path / "missing.onnx"), threads=1),
    ]
    results = measure(specs, sample_inputs(graph), repeat=3, warmup=1)
    by_name = {result.name: result for result in results}
    assert by_name["optc"].runs == 3 and by_name["optc"].median_ms > 0
    assert by_name["ort"].runs == 0 and by_name["ort"].note.startswith("failed:")
    table = format_table(results)
    assert "1.00x" in table and "failed" in table and "ratio" in table
