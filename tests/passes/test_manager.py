"""Pass manager, pipeline strings and the cleanup passes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from optc.errors import PassError, PipelineError
from optc.ir import Graph, TensorType, interpret, parse, verify
from optc.passes import PassManager, parse_pipeline
from optc.passes.cleanup import EliminateDeadCode, FoldConstants


def graph_with_constant_chain() -> Graph:
    return parse(
        """
graph g(%x: float32[2]) {
  param %a: float32[2] = [1.0, 2.0]
  %e: float32[2] = math.exp(%a) @exp
  %unused: float32[2] = math.neg(%x) @neg
  %y: float32[2] = math.add(%x, %e) @add
  return %y
}"""
    )


def test_fold_constants_evaluates_constant_nodes():
    graph = graph_with_constant_chain()
    assert FoldConstants()(graph)
    verify(graph)
    assert [node.op for node in graph.nodes] == ["math.neg", "math.add"]
    folded = graph.nodes[1].inputs[1]
    np.testing.assert_allclose(graph.params[folded], np.exp([1.0, 2.0]), rtol=1e-6)
    assert not FoldConstants()(graph)  # idempotent


def test_dce_removes_unused_nodes_and_params():
    graph = graph_with_constant_chain()
    assert EliminateDeadCode()(graph)
    assert [node.op for node in graph.nodes] == ["math.exp", "math.add"]
    assert not EliminateDeadCode()(graph)


def test_pass_manager_reports_each_pass_with_numerics():
    graph = graph_with_constant_chain()
    expected = interpret(graph, {"x": np.array([0.5, -1.0], "float32")})["y"]
    report = PassManager("fold_constants,dce").run(graph)
    assert [row.name for row in report.rows] == ["fold_constants", "dce"]
    assert report.before.nodes == 3 and report.rows[-1].stats.nodes == 1
    assert all(row.max_abs_error == 0.0 and row.cosine == pytest.approx(1.0) for row in report.rows)
    np.testing.assert_array_equal(interpret(graph, {"x": np.array([0.5, -1.0], "float32")})["y"], expected)
    assert "fold_constants" in report.table()


def test_pass_error_names_pass_and_history():
    def break_types(graph: Graph) -> bool:
        graph.nodes[-1].outputs[0].type = TensorType((3,), "float32")
        return True

    with pytest.raises(PassError) as caught:
        PassManager([FoldConstants(), break_types]).run(graph_with_constant_chain())
    assert caught.value.pass_name == "break_types"
    assert caught.value.history == ["fold_constants"]
    assert "inference gives" in str(caught.value)


def test_report_records_numerical_damage():
    def scale_output(graph: Graph) -> bool:
        node = graph.nodes[-1]
        two = graph.add_param("two", np.array(2.0, "float32"))
        doubled = graph.add_node("math.mul", [node.outputs[0], two]).output
        graph.outputs = [doubled]
        return True

    report = PassManager([scale_output], sample_feeds={"x": np.array([1.0, 1.0], "float32")}).run(graph_with_constant_chain())
    row = report.rows[0]
    assert row.max_abs_error == pytest.approx(float(np.exp(2.0) + 1.0), rel=1e-5)
    assert row.cosine == pytest.approx(1.0)


def test_pipeline_strings_parse_options():
    passes = parse_pipeline("cleanup(fold_limit=16),dce")
    assert passes[0].fold_limit == 16 and passes[0].pass_name == "cleanup(fold_limit=16)"
    with pytest.raises(PipelineError, match="unknown pass 'fuze'.*known passes"):
        parse_pipeline("cleanup,fuze")
    with pytest.raises(PipelineError, match="bad options for pass 'cleanup'.*fold_limit"):
        parse_pipeline("cleanup(limit=3)")
    with pytest.raises(PipelineError, match="unbalanced"):
        parse_pipeline("cleanup(fold_limit=3")


def test_pass_manager_keeps_the_final_graphs_outputs():
    graph = graph_with_constant_chain()
    feeds = {"x": np.array([0.5, -1.0], "float32")}
    manager = PassManager("fold_constants,dce", sample_feeds=feeds)
    manager.run(graph)
    np.testing.assert_array_equal(manager.outputs["y"], interpret(graph, feeds)["y"])


def test_report_round_trips_through_json():
    import json

    from optc.passes.report import Report

    report = PassManager("cleanup").run(graph_with_constant_chain())
    again = Report.from_json(json.loads(json.dumps(report.to_json())))
    assert again.table() == report.table() and again.explain() == report.explain()
