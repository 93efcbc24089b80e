"""ONNX import fidelity: hand-built models against ONNX Runtime, the backend test models against
their shipped outputs, ONNX's node conformance cases, naming, shapes and unsupported ops."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.errors import InputError, OptcError, UnsupportedOpError
from optc.frontends.onnx import from_onnx_model
from optc.ir import Graph, interpret, verify
from optc.tools.onnx_backend_report import compare_outputs, import_case, iter_backend_models

ort = pytest.importorskip("onnxruntime")

RTOL, ATOL = 1e-3, 1e-4
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), list(initializers))
    # IR 10 covers opsets up to 21 and every ONNX Runtime we test against
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def tensor(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def output(name: str, elem_type: int, rank: int) -> onnx.ValueInfoProto:
    """An output of known rank and unspecified dims (the checker wants a shape field)."""
    return helper.make_tensor_value_info(name, elem_type, [f"{name}_{axis}" for axis in range(rank)])


def const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_matches_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray], **import_options) -> Graph:
    graph = from_onnx_model(model, **import_options)
    verify(graph)
    ours = interpret(graph, {name: feeds[name] for name in (value.name for value in graph.inputs)})
    theirs = run_onnxruntime(model, feeds)
    assert [value.name for value in graph.outputs] == [value.name for value in model.graph.output]
    for value, expected in zip(graph.outputs, theirs):
        np.testing.assert_allclose(ours[value.name], expected, rtol=RTOL, atol=ATOL, err_msg=value.name)
        assert ours[value.name].dtype == expected.dtype
    return graph


def no_foldable_nodes(graph: Graph) -> bool:
    """True when every constant subexpression was folded at import."""
    return all(not all(value in graph.params for value in node.inputs) for node in graph.nodes)


# ---- hand-built models against ONNX Runtime ---------------------------------------------------------------------

def test_cnn_block_matches_onnxruntime():
    rng = np.random.default_rng(0)
    channels = 4
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], auto_pad="SAME_UPPER", strides=[2, 2], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], pads=[1, 1, 0, 0], count_include_pad=1),
        helper.make_node("Conv", ["ap", "w2"], ["dw"], group=channels, pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["dw"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    initializers = [
        const("w1", rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)),
        const("b1", rng.standard_normal(channels).astype(np.float32)),
        const("scale", rng.uniform(0.5, 1.5, channels).astype(np.float32)),
        const("shift", rng.standard_normal(channels).astype(np.float32)),
        const("mean", rng.standard_normal(channels).astype(np.float32)),
        const("var", rng.uniform(0.5, 2.0, channels).astype(np.float32)),
        const("w2", rng.standard_normal((channels, 1, 3, 3)).astype(np.float32)),
        const("fc", rng.standard_normal((5, channels)).astype(np.float32)),
        const("fcb", rng.standard_normal(5).astype(np.float32)),
    ]
    model = make_model(nodes, [tensor("x", FLOAT, [2, 3, 17, 17])], [tensor("y", FLOAT, [2, 5])], initializers)
    graph = assert_matches_onnxruntime(model, {"x": rng.standard_normal((2, 3, 17, 17)).astype(np.float32)})
    assert "nn.batch_norm" in graph.op_counts() and "reduce.mean" in graph.op_counts()
    # Gemm's transposed weight and alpha fold into one constant: no transpose survives
    assert "tensor.transpose" not in graph.op_counts()


def test_transformer_block_matches_onnxruntime():
    """The patterns torch.onnx emits for GPT-2/BERT, including shape arithmetic that must fold."""
    rng = np.random.default_rng(1)
    seq, hidden, heads, vocab = 6, 8, 2, 11
    head = hidden // heads
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["tok"], axis=0),
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one"], ["seq_len"], axis=0),  # scalar index: rank drops
        helper.make_node("Range", ["zero", "seq_len", "one"], ["positions"]),
        helper.make_node("Unsqueeze", ["positions", "axes0"], ["positions2"]),
        helper.make_node("Gather", ["pos_emb", "positions2"], ["pos"], axis=0),
        helper.make_node("Add", ["tok", "pos"], ["h0"]),
        helper.make_node("LayerNormalization", ["h0", "ln_scale", "ln_bias"], ["h1"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["h1", "qkv_w"], ["qkv"]),
        helper.make_node("Split", ["qkv", "split3"], ["q", "k", "v"], axis=-1),
        helper.make_node("Shape", ["q"], ["q_shape"]),
        helper.make_node("Slice", ["q_shape", "zero1", "two1"], ["batch_seq"]),
        helper.make_node("Concat", ["batch_seq", "heads_head"], ["split_heads"], axis=0),
        helper.make_node("Reshape", ["q", "split_heads"], ["q4"]),
        helper.make_node("Reshape", ["k", "zero_minus"], ["k4"]),
        helper.make_node("Reshape", ["v", "split_heads"], ["v4"]),
        helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qt", "kt"], ["scores0"]),
        helper.make_node("Div", ["scores0", "sqrt_d"], ["scores1"]),
        helper.make_node("Trilu", ["ones_ss"], ["causal"], upper=0),
        helper.make_node("Cast", ["causal"], ["causal_bool"], to=TensorProto.BOOL),
        helper.make_node("Where", ["causal_bool", "scores1", "neg_big"], ["scores2"]),
        helper.make_node("Softmax", ["scores2"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "vt"], ["ctx4"]),
        helper.make_node("Transpose", ["ctx4"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge"], ["ctx"]),
        helper.make_node("Add", ["ctx", "h1"], ["h2"]),
        # GELU written out with Erf, and a layer norm written out with ReduceMean/Pow/Sqrt
        helper.make_node("Div", ["h2", "sqrt2"], ["g0"]),
        helper.make_node("Erf", ["g0"], ["g1"]),
        helper.make_node("Add", ["g1", "one_f"], ["g2"]),
        helper.make_node("Mul", ["h2", "g2"], ["g3"]),
        helper.make_node("Mul", ["g3", "half"], ["g4"]),
        helper.make_node("ReduceMean", ["g4", "axis_last"], ["mu"]),
        helper.make_node("Sub", ["g4", "mu"], ["dev"]),
        helper.make_node("Pow", ["dev", "two_f"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axis_last"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["dev", "std"], ["normed"]),
        helper.make_node("Slice", ["normed", "last", "before_first", "axis_last", "minus_one"], ["reversed"]),
        helper.make_node("Expand", ["bias_row", "expand_shape"], ["bias_full"]),
        helper.make_node("Add", ["reversed", "bias_full"], ["y"]),
        helper.make_node("Gelu", ["h2"], ["gelu_tanh"], approximate="tanh"),
    ]
    minus_one = np.array([-1], dtype=np.int64)
    initializers = [
        const("emb", rng.standard_normal((vocab, hidden)).astype(np.float32)),
        const("pos_emb", rng.standard_normal((seq, hidden)).astype(np.float32)),
        const("one", np.array(1, dtype=np.int64)),
        const("zero", np.array(0, dtype=np.int64)),
        const("axes0", np.array([0], dtype=np.int64)),
        const("ln_scale", rng.uniform(0.5, 1.5, hidden).astype(np.float32)),
        const("ln_bias", rng.standard_normal(hidden).astype(np.float32)),
        const("qkv_w", (rng.standard_normal((hidden, 3 * hidden)) / 3).astype(np.float32)),
        const("split3", np.array([hidden] * 3, dtype=np.int64)),
        const("zero1", np.array([0], dtype=np.int64)),
        const("two1", np.array([2], dtype=np.int64)),
        const("heads_head", np.array([heads, head], dtype=np.int64)),
        const("zero_minus", np.array([0, 0, heads, -1], dtype=np.int64)),
        const("sqrt_d", np.array(np.sqrt(head), dtype=np.float32)),
        const("ones_ss", np.ones((seq, seq), dtype=np.float32)),
        const("neg_big", np.array(-1e9, dtype=np.float32)),
        const("merge", np.array([0, 0, hidden], dtype=np.int64)),
        const("sqrt2", np.array(np.sqrt(2.0), dtype=np.float32)),
        const("one_f", np.array(1.0, dtype=np.float32)),
        const("half", np.array(0.5, dtype=np.float32)),
        const("two_f", np.array(2.0, dtype=np.float32)),
        const("eps", np.array(1e-5, dtype=np.float32)),
        const("last", minus_one),
        const("before_first", np.array([np.iinfo(np.int64).min], dtype=np.int64)),
        const("axis_last", minus_one),
        const("minus_one", minus_one),
        const("bias_row", rng.standard_normal((1, 1, hidden)).astype(np.float32)),
        const("expand_shape", np.array([1, seq, hidden], dtype=np.int64)),
    ]
    model = make_model(
        nodes,
        [tensor("ids", INT64, [1, seq])],
        [tensor("y", FLOAT, [1, seq, hidden]), tensor("gelu_tanh", FLOAT, [1, seq, hidden]), output("probs", FLOAT, 4)],
        initializers,
        opset=20,
    )
    feeds = {"ids": rng.integers(0, vocab, (1, seq)).astype(np.int64)}
    graph = assert_matches_onnxruntime(model, feeds)
    assert no_foldable_nodes(graph)
    # Shape/Gather/Range/Concat/Trilu arithmetic left no integer computation behind
    assert all(node.outputs[0].dtype == "float32" or node.op == "math.cast" for node in graph.nodes)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_axes_as_attributes_and_inputs(opset):
    """Squeeze/Unsqueeze/ReduceSum/Split take axes as attributes before opset 13, as inputs after."""
    rng = np.random.default_rng(2)
    if opset < 13:
        nodes = [
            helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
            helper.make_node("ReduceSum", ["u"], ["s"], axes=[2], keepdims=1),
            helper.make_node("Squeeze", ["s"], ["q"], axes=[0, 2]),
            helper.make_node("Split", ["q"], ["a", "b"], axis=0, split=[1, 2]),
        ]
        initializers = []
    else:
        nodes = [
            helper.make_node("Unsqueeze", ["x", "axes_u"], ["u"]),
            helper.make_node("ReduceSum", ["u", "axes_r"], ["s"], keepdims=1),
            helper.make_node("Squeeze", ["s", "axes_s"], ["q"]),
            helper.make_node("Split", ["q", "sizes"], ["a", "b"], axis=0),
        ]
        initializers = [const("axes_u", np.array([0, 3])), const("axes_r", np.array([2])),
                        const("axes_s", np.array([0, 2])), const("sizes", np.array([1, 2]))]
    model = make_model(nodes, [tensor("x", FLOAT, [3, 4])], [output("a", FLOAT, 2), output("b", FLOAT, 2)],
                       initializers, opset=opset)
    assert_matches_onnxruntime(model, {"x": rng.standard_normal((3, 4)).astype(np.float32)})


def test_gather_with_scalar_index_drops_the_axis():
    model = make_model(
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)],
        [tensor("x", FLOAT, [2, 3, 4])], [tensor("y", FLOAT, [2, 4])], [const("i", np.array(-1, dtype=np.int64))],
    )
    graph = assert_matches_onnxruntime(model, {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)})
    assert graph.outputs[0].shape == (2, 4)


def test_gather_elements_and_gather_nd_with_runtime_indices():
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("GatherElements", ["x", "elements"], ["by_element"], axis=1),
        helper.make_node("GatherND", ["x", "nd"], ["by_nd"], batch_dims=1),
    ]
    model = make_model(
        nodes,
        [tensor("x", FLOAT, [2, 3, 4]), tensor("elements", INT64, [2, 5, 4]), tensor("nd", INT64, [2, 3, 1])],
        [output("by_element", FLOAT, 3), output("by_nd", FLOAT, 3)],
    )
    feeds = {
        "x": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "elements": rng.integers(-3, 3, (2, 5, 4)).astype(np.int64),
        "nd": rng.integers(-3, 3, (2, 3, 1)).astype(np.int64),
    }
    assert_matches_onnxruntime(model, feeds)


@pytest.mark.parametrize(
    "mode, transform, nearest_mode, scales, sizes",
    [
        ("nearest", "asymmetric", "floor", [1, 1, 2, 2], None),
        ("nearest", "half_pixel", "round_prefer_floor", None, [1, 2, 7, 4]),
        ("nearest", "align_corners", "round_prefer_ceil", None, [1, 2, 9, 11]),
        ("linear", "half_pixel", "round_prefer_floor", [1, 1, 1.5, 0.5], None),
        ("linear", "align_corners", "round_prefer_floor", None, [1, 2, 8, 10]),
        ("linear", "pytorch_half_pixel", "round_prefer_floor", None, [1, 2, 1, 3]),
        ("cubic", "half_pixel", "round_prefer_floor", [1, 1, 2, 2], None),
        ("cubic", "asymmetric", "round_prefer_floor", None, [1, 2, 3, 9]),
    ],
)
def test_resize_matches_onnxruntime(mode, transform, nearest_mode, scales, sizes):
    rng = np.random.default_rng(4)
    inputs = ["x", "", "scales"] if scales is not None else ["x", "", "", "sizes"]
    initializers = [const("scales", np.array(scales, dtype=np.float32))] if scales is not None else [
        const("sizes", np.array(sizes, dtype=np.int64))
    ]
    node = helper.make_node("Resize", inputs, ["y"], mode=mode, coordinate_transformation_mode=transform,
                            nearest_mode=nearest_mode)
    model = make_model([node], [tensor("x", FLOAT, [1, 2, 5, 6])], [output("y", FLOAT, 4)], initializers, opset=13)
    graph = assert_matches_onnxruntime(model, {"x": rng.standard_normal((1, 2, 5, 6)).astype(np.float32)})
    assert "tensor.gather" in graph.op_counts()


@pytest.mark.parametrize(
    "attributes",
    [
        {"strides": [2, 2]},
        {"strides": [2, 2], "pads": [1, 0, 1, 0], "output_padding": [1, 1]},
        {"strides": [2, 3], "output_shape": [10, 14]},
        {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
        {"strides": [2, 2], "auto_pad": "SAME_LOWER", "dilations": [2, 1]},
    ],
)
def test_conv_transpose_matches_onnxruntime(attributes):
    rng = np.random.default_rng(5)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], group=2, **attributes)
    initializers = [const("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
                    const("b", rng.standard_normal(6).astype(np.float32))]
    model = make_model([node], [tensor("x", FLOAT, [1, 4, 5, 6])], [output("y", FLOAT, 4)], initializers)
    assert_matches_onnxruntime(model, {"x": rng.standard_normal((1, 4, 5, 6)).astype(np.float32)})


def test_sequence_ops_resolve_at_import():
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("SplitToSequence", ["x", "two"], ["pieces"], axis=1),
        helper.make_node("SequenceInsert", ["pieces", "extra", "zero"], ["longer"]),
        helper.make_node("SequenceErase", ["longer", "minus_one"], ["shorter"]),
        helper.make_node("SequenceAt", ["shorter", "one"], ["second"]),
        helper.make_node("SequenceLength", ["shorter"], ["count"]),
        helper.make_node("ConcatFromSequence", ["shorter"], ["stacked"], axis=0, new_axis=1),
    ]
    initializers = [const("two", np.array(2, dtype=np.int64)), const("zero", np.array(0, dtype=np.int64)),
                    const("one", np.array(1, dtype=np.int64)), const("minus_one", np.array(-1, dtype=np.int64))]
    model = make_model(
        nodes,
        [tensor("x", FLOAT, [3, 6]), tensor("extra", FLOAT, [3, 2])],
        [output("second", FLOAT, 2), tensor("count", INT64, []), output("stacked", FLOAT, 3)],
        initializers,
    )
    feeds = {"x": rng.standard_normal((3, 6)).astype(np.float32), "extra": rng.standard_normal((3, 2)).astype(np.float32)}
    graph = assert_matches_onnxruntime(model, feeds)
    assert graph.outputs[1] in graph.params and graph.outputs[1].shape == ()


def test_if_with_runtime_condition_selects_between_branches():
    then_graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["then_out"])], "then", [],
                                   [tensor("then_out", FLOAT, [2, 3])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["else_out"])], "else", [],
                                   [tensor("else_out", FLOAT, [2, 3])])
    model = make_model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        [tensor("x", FLOAT, [2, 3]), tensor("flag", TensorProto.BOOL, [])], [tensor("y", FLOAT, [2, 3])],
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for flag in (True, False):
        assert_matches_onnxruntime(model, {"x": x, "flag": np.array(flag)})


def test_pad_with_runtime_fill_value():
    model = make_model(
        [helper.make_node("Pad", ["x", "pads", "value"], ["y"], mode="constant")],
        [tensor("x", FLOAT, [2, 3]), tensor("value", FLOAT, [])], [output("y", FLOAT, 2)],
        [const("pads", np.array([1, 0, 0, 2], dtype=np.int64))],
    )
    assert_matches_onnxruntime(model, {"x": np.ones((2, 3), np.float32), "value": np.array(7.0, np.float32)})


# ---- inputs, outputs and names ------------------------------------------------------------------------------------

def test_names_of_inputs_and_outputs_are_kept():
    model = make_model(
        [
            helper.make_node("Identity", ["input.1"], ["same"]),
            helper.make_node("Gemm", ["input.1", "w", "b"], ["logits:0"], transB=1),
            helper.make_node("Shape", ["input.1"], ["shape"]),
            helper.make_node("Dropout", ["logits:0"], ["dropped"]),
        ],
        [tensor("input.1", FLOAT, [2, 3])],
        [tensor("same", FLOAT, [2, 3]), tensor("logits:0", FLOAT, [2, 4]), tensor("shape", INT64, [2]),
         tensor("dropped", FLOAT, [2, 4])],
        [const("w", np.ones((4, 3), np.float32)), const("b", np.zeros(4, np.float32))],
    )
    graph = assert_matches_onnxruntime(model, {"input.1": np.ones((2, 3), np.float32)})
    assert [value.name for value in graph.inputs] == ["input.1"]
    assert graph.outputs[2] in graph.params  # Shape of a static tensor is a constant


def test_symbolic_dims_bind_from_input_shapes(caplog):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", FLOAT, ["batch", 3, None])],
                       [tensor("y", FLOAT, ["batch", 3, None])])
    graph = from_onnx_model(model, input_shapes={"x": (5, 3, 2)})
    assert graph.inputs[0].shape == (5, 3, 2)
    with caplog.at_level(logging.WARNING, logger="optc.frontends.onnx.importer"):
        defaulted = from_onnx_model(model)
    assert defaulted.inputs[0].shape == (1, 3, 1)
    assert any("binding them to 1" in record.getMessage() and "'x'" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "shapes, fragment",
    [({"x": (5, 3)}, "rank"), ({"x": (5, 4, 2)}, "fixes it at 3"), ({"nope": (1,)}, "not inputs")],
)
def test_bad_input_shapes_say_what_to_pass(shapes, fragment):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", FLOAT, ["batch", 3, 2])],
                       [output("y", FLOAT, 3)])
    with pytest.raises(InputError, match=fragment):
        from_onnx_model(model, input_shapes=shapes)


def test_shape_given_as_input_needs_constant_inputs():
    model = make_model([helper.make_node("Expand", ["x", "shape"], ["y"])],
                       [tensor("x", FLOAT, [3, 1]), tensor("shape", INT64, [2])], [output("y", FLOAT, 2)])
    with pytest.raises(UnsupportedOpError, match=r"constant_inputs=\{'shape'"):
        from_onnx_model(model)
    shape = np.array([2, 3, 4], dtype=np.int64)[1:]
    graph = from_onnx_model(model, constant_inputs={"shape": shape})
    assert [value.name for value in graph.inputs] == ["x"]
    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    np.testing.assert_array_equal(interpret(graph, {"x": x})["y"], np.broadcast_to(x, (3, 4)))


def test_initializers_listed_as_inputs_are_params():
    model = make_model([helper.make_node("Add", ["x", "b"], ["y"])], [tensor("x", FLOAT, [2]), tensor("b", FLOAT, [2])],
                       [tensor("y", FLOAT, [2])], [const("b", np.array([1.0, 2.0], np.float32))])
    graph = from_onnx_model(model)
    assert [value.name for value in graph.inputs] == ["x"]
    assert graph.param_count() == 2


# ---- unsupported ops --------------------------------------------------------------------------------------------------

def test_every_unsupported_op_is_listed_with_its_nodes():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("NonZero", ["r"], ["nz1"], name="first_nonzero"),
        helper.make_node("NonZero", ["x"], ["nz2"], name="second_nonzero"),
        helper.make_node("Unique", ["x"], ["u"], name="the_unique"),
        helper.make_node("Cast", ["nz1"], ["downstream"], to=FLOAT),  # depends on an unsupported op
    ]
    model = make_model(nodes, [tensor("x", FLOAT, [4])],
                       [output("downstream", FLOAT, 2), output("nz2", INT64, 2), output("u", FLOAT, 1)])
    with pytest.raises(UnsupportedOpError) as caught:
        from_onnx_model(model, source="two_unknowns.onnx")
    assert caught.value.unsupported == {"NonZero": ["first_nonzero", "second_nonzero"], "Unique": ["the_unique"]}
    message = str(caught.value)
    for fragment in ("two_unknowns.onnx", "2 unsupported op type(s)", "first_nonzero", "second_nonzero", "the_unique"):
        assert fragment in message


def test_unsupported_variant_names_the_reason():
    model = make_model([helper.make_node("Pad", ["x", "pads"], ["y"], mode="wrap", name="wrapping")],
                       [tensor("x", FLOAT, [2, 3])], [output("y", FLOAT, 2)],
                       [const("pads", np.array([0, 1, 0, 1], dtype=np.int64))], opset=19)
    with pytest.raises(UnsupportedOpError, match=r"Pad \(mode='wrap'\) \[wrapping\]"):
        from_onnx_model(model)


# ---- the ONNX backend test models -----------------------------------------------------------------------------------

OUT_OF_SCOPE = {"StringNormalizer": "test_strnorm", "ai.onnx.preview.training.Gradient": "test_gradient"}
BACKEND_CASES = list(iter_backend_models())


def test_backend_models_are_all_found():
    assert len(BACKEND_CASES) == 149
    assert all(case.expected for case in BACKEND_CASES)


@pytest.mark.parametrize("case", BACKEND_CASES, ids=[case.name for case in BACKEND_CASES])
def test_backend_model(case):
    out_of_scope = [op for op, prefix in OUT_OF_SCOPE.items() if case.name.startswith(prefix)]
    if out_of_scope:
        with pytest.raises(UnsupportedOpError) as caught:
            import_case(case)
        assert set(caught.value.unsupported) == set(out_of_scope)
        return
    graph, feeds, _ = import_case(case)
    verify(graph)
    with np.errstate(all="ignore"):  # some models feed sqrt/pow inputs outside their domain on purpose
        outputs = interpret(graph, feeds)
    mismatch = compare_outputs([outputs[value.name] for value in graph.outputs], case.expected, RTOL, ATOL)
    assert mismatch is None, mismatch


def test_report_tool_prints_one_line_per_model_and_writes_json(tmp_path, capsys):
    import json

    from optc.tools.onnx_backend_report import main

    report = tmp_path / "report.json"
    status = main(["--filter", "test_operator_add_", "--json", str(report)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    assert lines[-1].startswith("4 passed, 0 failed")
    assert len(lines) == 5 and all(line.startswith("PASS pytorch-operator/test_operator_add_") for line in lines[:-1])
    assert json.loads(report.read_text())["passed"] == 4


# ---- ONNX's node conformance cases ------------------------------------------------------------------------------------

def _conformance_results() -> tuple[int, list[str]]:
    """Run every ONNX node test case whose ops all have converters; (passed, wrong results)."""
    from onnx.backend.test.case.node import collect_testcases

    from optc.frontends.onnx import supported_ops

    supported = set(supported_ops())
    passed, wrong = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    for case in cases:
        model = case.model
        if not case.data_sets or not {node.op_type for node in model.graph.node} <= supported:
            continue
        inputs, expected = case.data_sets[0]
        initializers = {tensor.name for tensor in model.graph.initializer}
        names = [value.name for value in model.graph.input if value.name not in initializers]
        try:
            feeds = {name: np.asarray(array) for name, array in zip(names, inputs)}
        except ValueError:  # sequence inputs
            continue
        if any(array.dtype == object for array in feeds.values()) or not all(isinstance(o, np.ndarray) for o in expected):
            continue
        try:
            graph = from_onnx_model(model, input_shapes={name: array.shape for name, array in feeds.items()}, source=case.name)
            with np.errstate(all="ignore"):
                outputs = interpret(graph, feeds)
        except OptcError:
            continue  # a clean refusal (runtime shapes, bfloat16, training mode...) is allowed
        mismatch = compare_outputs([outputs[value.name] for value in graph.outputs], expected, RTOL, ATOL)
        if mismatch is None:
            passed += 1
        else:
            wrong.append(f"{case.name}: {mismatch}")
    return passed, wrong


def test_node_conformance_cases_convert_correctly_or_refuse_cleanly():
    passed, wrong = _conformance_results()
    assert wrong == []
    assert passed >= 750
