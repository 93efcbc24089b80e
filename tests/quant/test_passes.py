"""The quant pass end to end on tiny graphs: static int8, dynamic int8, weight-only RTN and GPTQ,
mixed precision, pipeline strings, serialization, and compiled kernels against the reference."""

from __future__ import annotations

import numpy as np
import pytest

from optc.errors import PipelineError
from optc.ir import interpret, serialize
from optc.passes import PassManager, parse_pipeline
from optc.passes.quant import Quantize, output_error

from .models import cnn_feeds, mlp_feeds, small_cnn, small_mlp


def quantized(graph, **options):
    copy = graph.clone()
    quant = Quantize(**options)
    PassManager([quant], verify=True, check_numerics=False).run(copy)
    return copy, quant.last_report


@pytest.fixture(scope="module")
def cnn_int8():
    graph = small_cnn()
    return graph, *quantized(graph, feeds=cnn_feeds(4, seed=1))


def test_static_int8_chains_integer_layers_and_keeps_accuracy(cnn_int8) -> None:
    graph, int8, report = cnn_int8
    ops = int8.op_counts()
    assert ops.get("quant.conv") == 2 and ops.get("quant.linear") == 1 and "nn.conv" not in ops
    # conv1 -> conv2 stays in int8: requantize, no float tensor between them
    conv2 = next(node for node in int8.nodes if node.op == "quant.conv" and node.name.startswith("conv2"))
    padded = conv2.inputs[0].producer  # the zero point pads explicitly, so it folds into the bias
    requantize = padded.inputs[0].producer
    assert padded.op == "tensor.pad" and requantize.op == "quant.requantize" and conv2.inputs[0].dtype == "int8"
    assert padded.attrs["value"] == requantize.attrs["zero_point"] and conv2.attrs["x_zero_point"] == 0
    assert [row.scheme for row in report.layers] == ["int8"] * 3
    assert output_error(graph, int8, cnn_feeds(3, seed=99)) < 0.03


def test_static_int8_weights_are_about_four_times_smaller(cnn_int8) -> None:
    _, _, report = cnn_int8
    before = sum(row.weight_bytes_before for row in report.layers)
    after = sum(row.weight_bytes_after for row in report.layers)
    assert 3.3 < before / after <= 4.0


def test_quant_pass_is_idempotent(cnn_int8) -> None:
    _, int8, _ = cnn_int8
    again = int8.clone()
    assert Quantize(feeds=cnn_feeds(1, seed=1))(again) is False
    assert again.op_counts() == int8.op_counts()


def test_first_and_last_layers_can_stay_float() -> None:
    graph = small_cnn()
    kept, report = quantized(graph, feeds=cnn_feeds(2, seed=1), keep_first=True, keep_last=True)
    schemes = {row.node: row.scheme for row in report.layers}
    assert schemes == {"conv1": "float", "conv2": "int8", "head": "float"}
    assert kept.op_counts()["quant.conv"] == 1 and kept.op_counts()["nn.linear"] == 1


def test_compiled_int8_cnn_is_bit_exact_where_the_math_is_integer(cnn_int8, compile_quant) -> None:
    _, int8, _ = cnn_int8
    probe = int8.clone()
    integer_values = [v for node in probe.nodes if node.op in ("quant.requantize", "quant.conv", "quant.linear")
                      for v in node.outputs]
    probe.outputs = probe.outputs + integer_values
    feeds = cnn_feeds(1, seed=5)[0]
    compiled = compile_quant("int8-cnn", lambda: probe).run(feeds)
    reference = interpret(probe, feeds)
    for value in integer_values:
        assert np.array_equal(compiled[value.name], reference[value.name]), value.name
    np.testing.assert_allclose(compiled["logits"], reference["logits"], rtol=1e-5, atol=1e-5)


def test_dynamic_int8_needs_no_calibration_and_compiles(compile_quant) -> None:
    graph = small_mlp()
    dynamic, report = quantized(graph, method="dynamic")
    assert dynamic.op_counts().get("quant.dynamic_quantize") == 2
    assert [row.scheme for row in report.layers] == ["int8 dyn", "int8 dyn"]
    feeds = mlp_feeds(1, seed=3)[0]
    assert output_error(graph, dynamic, [feeds]) < 0.03
    compiled = compile_quant("dynamic-mlp", lambda: dynamic).run(feeds)
    np.testing.assert_allclose(compiled["out"], interpret(dynamic, feeds)["out"], rtol=1e-4, atol=1e-4)


def tied_lm(vocab: int = 40, width: int = 32):
    """Token ids -> embedding rows -> tanh -> logits through the same table transposed (GPT-2's tied head)."""
    from optc.ir import Graph, TensorType

    graph = Graph("tied_lm")
    ids = graph.add_input("ids", TensorType((1, 6), "int64"))
    table = graph.add_param("wte", np.random.default_rng(0).standard_normal((vocab, width)).astype(np.float32))
    hidden = graph.op("math.tanh", graph.op("tensor.gather", table, ids, axis=0))
    flat = graph.op("tensor.reshape", hidden, shape=(6, width))
    graph.outputs = [graph.op("linalg.matmul", flat, graph.op("tensor.transpose", table, perm=(1, 0)))]
    return graph


def test_dynamic_int8_quantizes_a_head_tied_to_the_embedding(compile_quant) -> None:
    """``x @ transpose(wte)`` is a matmul by a constant: it becomes int8 with a transposed copy of the
    table, while the float table stays for the lookup (as ONNX Runtime does for the exported head)."""
    graph = tied_lm()
    dynamic, report = quantized(graph, method="dynamic", embeddings=False)
    ops = dynamic.op_counts()
    assert ops.get("quant.linear") == 1 and "linalg.matmul" not in ops and "tensor.transpose" not in ops
    assert [row.scheme for row in report.layers] == ["int8 dyn"]
    quantized_head = next(array for value, array in dynamic.params.items() if value.name.endswith("_w_q"))
    assert quantized_head.shape == (32, 40) and quantized_head.dtype == np.int8
    assert any(value.name == "wte" for value in dynamic.params)  # still gathered from
    feeds = {"ids": np.array([[1, 5, 9, 22, 39, 0]], np.int64)}
    assert output_error(graph, dynamic, [feeds]) < 0.03
    compiled = compile_quant("tied-lm", lambda: dynamic).run(feeds)
    name = dynamic.outputs[0].name
    np.testing.assert_allclose(compiled[name], interpret(dynamic, feeds)[name], rtol=1e-4, atol=1e-4)


def test_weight_only_int4_is_packed_and_about_seven_times_smaller() -> None:
    graph = small_mlp(hidden=256)
    w4, report = quantized(graph, mode="w4", group=128)
    stored = [array for value, array in w4.params.items() if value.name.endswith("_w_q4")]
    assert {array.dtype.name for array in stored} == {"uint8"}
    before = sum(row.weight_bytes_before for row in report.layers)
    after = sum(row.weight_bytes_after for row in report.layers)
    assert 6.5 < before / after < 8.0
    assert [row.scheme for row in report.layers] == ["w4 g64", "w4 g128"]  # K=64 < 128: one group


def test_gptq_has_lower_output_error_than_rtn_at_the_same_group_size() -> None:
    graph = small_mlp()
    calibration, held_out = mlp_feeds(8, seed=1), mlp_feeds(4, seed=50)
    for group in (32, 64):
        rtn, _ = quantized(graph, mode="w4", group=group)
        gptq, _ = quantized(graph, mode="w4", method="gptq", group=group, feeds=calibration)
        rtn_error, gptq_error = output_error(graph, rtn, held_out), output_error(graph, gptq, held_out)
        assert gptq_error < 0.9 * rtn_error, (group, gptq_error, rtn_error)


def test_compiled_weight_only_models_match_the_reference(compile_quant) -> None:
    graph = small_mlp()
    feeds = mlp_feeds(1, seed=3)[0]
    for mode in ("w8", "w4"):
        model, _ = quantized(graph, mode=mode, group=32)
        compiled = compile_quant(f"{mode}-mlp", lambda: model).run(feeds)
        np.testing.assert_allclose(compiled["out"], interpret(model, feeds)["out"], rtol=1e-4, atol=1e-4)


def test_mixed_precision_meets_the_budget_and_reports_every_layer() -> None:
    graph = small_cnn()
    feeds = cnn_feeds(3, seed=1)
    tight, report = quantized(graph, feeds=feeds, max_drop=0.005, metric="error")
    assert report.metric == "error" and report.metric_value <= 0.005
    assert all(row.sensitivity is not None and row.sensitivity > 0 for row in report.layers)
    kept = [row for row in report.layers if row.scheme == "float"]
    assert kept and all("sensitive" in row.reason for row in kept)
    # the layers kept in float are the most sensitive ones
    most_sensitive = max(report.layers, key=lambda row: row.sensitivity)
    assert most_sensitive.scheme == "float"
    loose, loose_report = quantized(graph, feeds=feeds, max_drop=0.5, metric="error")
    assert len(loose_report.quantized) == 3


def test_pipeline_strings_build_the_documented_passes() -> None:
    gptq, dynamic, w8 = parse_pipeline("quant(w4,gptq,group=128),quant(int8,dynamic),quant(w8)")
    assert (gptq.mode, gptq.method, gptq.group) == ("w4", "gptq", 128)
    assert (dynamic.mode, dynamic.method) == ("int8", "dynamic")
    assert (w8.mode, w8.method) == ("w8", "rtn")
    assert parse_pipeline("quant(int8,observer=mse,max_drop=0.01)")[0].max_drop == 0.01
    with pytest.raises(PipelineError, match="static or dynamic"):
        parse_pipeline("quant(int8,gptq)")
    with pytest.raises(PipelineError, match="mode"):
        parse_pipeline("quant(int3)")


def test_quantized_params_round_trip_through_serialization(tmp_path) -> None:
    graph = small_mlp()
    w4, _ = quantized(graph, mode="w4", group=32)
    int8, _ = quantized(small_cnn(), feeds=cnn_feeds(2, seed=1))
    for model, feeds in ((w4, mlp_feeds(1, seed=2)[0]), (int8, cnn_feeds(1, seed=2)[0])):
        serialize.save(model, tmp_path / model.name)
        loaded = serialize.load(tmp_path / model.name)
        assert {v.name: a.dtype.name for v, a in loaded.params.items()} == {v.name: a.dtype.name for v, a in model.params.items()}
        for name, array in interpret(model, feeds).items():
            assert np.array_equal(interpret(loaded, feeds)[name], array)


def test_matmul_of_two_activations_becomes_an_integer_matmul() -> None:
    from optc.ir import Graph, TensorType

    graph = Graph("scores")
    query = graph.add_input("query", TensorType((2, 4, 8), "float32"))
    key_t = graph.add_input("key_t", TensorType((2, 8, 4), "float32"))
    graph.outputs = [graph.op("linalg.matmul", query, key_t, name="scores")]
    rng = np.random.default_rng(4)
    feeds = [{"query": rng.standard_normal((2, 4, 8)).astype(np.float32),
              "key_t": rng.standard_normal((2, 8, 4)).astype(np.float32)} for _ in range(3)]
    int8, report = quantized(graph, feeds=feeds)
    assert int8.op_counts().get("quant.matmul") == 1 and report.layers[0].scheme == "int8"
    assert output_error(graph, int8, feeds) < 0.02


def test_mixed_precision_defaults_to_top1_agreement_for_classifiers() -> None:
    graph = small_cnn()
    _, report = quantized(graph, feeds=cnn_feeds(3, seed=1), max_drop=0.0)
    assert report.metric == "top1" and report.metric_value == 0.0


def test_calibration_file_groups_samples_into_batches(tmp_path) -> None:
    from optc.passes.quant import load_calibration

    images = np.random.default_rng(0).standard_normal((70, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", image=images)
    feeds = load_calibration(tmp_path / "calib.npz", small_cnn(), batch=32)
    assert [feed["image"].shape[0] for feed in feeds] == [32, 32, 6]
    assert np.array_equal(np.concatenate([feed["image"] for feed in feeds]), images)


def test_embedding_tables_become_int8_rows() -> None:
    from optc.ir import Graph, TensorType

    rng = np.random.default_rng(6)
    graph = Graph("embed")
    ids = graph.add_input("ids", TensorType(("batch", 5), "int64"))
    table = graph.add_param("wte", rng.standard_normal((512, 32)).astype(np.float32))
    tokens = graph.add_node("tensor.gather", [table, ids], {"axis": 0}).output
    graph.outputs = [graph.op("nn.linear", tokens, graph.add_param("w", rng.standard_normal((32, 8)).astype(np.float32)))]
    quantized_graph, report = quantized(graph, mode="w8", group=32)
    assert [row.scheme for row in report.layers if row.op == "tensor.gather"] == ["int8 rows"]
    assert {a.dtype.name for v, a in quantized_graph.params.items() if v.name.startswith("wte")} == {"int8", "float32"}
    assert quantized_graph.param_bytes() < graph.param_bytes() / 3
    feeds = [{"ids": rng.integers(0, 512, (3, 5)).astype(np.int64)}]
    assert output_error(graph, quantized_graph, feeds) < 0.02
    kept, _ = quantized(graph, mode="w8", group=32, embeddings=False)
    assert kept.params[next(v for v in kept.params if v.name == "wte")].dtype == np.float32
