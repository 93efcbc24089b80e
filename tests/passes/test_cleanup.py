"""Cleanup passes: CSE, constant folding, shape arithmetic of exported graphs, the ``cleanup``
composite, random graphs. The identity rules have their own file, test_identities.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.frontends.onnx import load_onnx
from optc.ir import Graph, TensorType, interpret, parse, sample_inputs, verify
from optc.passes import PassManager
from optc.passes.cleanup import IDENTITY_RULES, Cleanup, EliminateCommonSubexpressions, FoldConstants
from optc.passes.testing import assert_golden, check_rewrite, fired_rules

RTOL, ATOL = 1e-5, 1e-6


# ---- common subexpressions ----------------------------------------------------------------------------------------

def test_cse_merges_equal_params_and_commuted_nodes():
    check_rewrite(EliminateCommonSubexpressions(param_limit=1 << 20), """
        graph g(%x: float32[2]) {
          param %a: float32[2] = [1.0, 2.0]
          param %b: float32[2] = [1.0, 2.0]
          %p: float32[2] = math.add(%x, %a) @p
          %q: float32[2] = math.add(%b, %x) @q
          %y: float32[2] = math.mul(%p, %q) @y
          return %y
        }""", """
        graph g(%x: float32[2]) {
          param %a: float32[2] = [1.0, 2.0]
          %p: float32[2] = math.add(%x, %a) @p
          %y: float32[2] = math.mul(%p, %p) @y
          return %y
        }""")


def test_cse_merges_chains_and_multi_output_nodes():
    check_rewrite(EliminateCommonSubexpressions(), """
        graph g(%x: float32[4,3]) {
          %a0: float32[2,3], %a1: float32[2,3] = tensor.split(%x) {axis=0, sizes=(2, 2)} @sa
          %b0: float32[2,3], %b1: float32[2,3] = tensor.split(%x) {axis=0, sizes=(2, 2)} @sb
          %ea: float32[2,3] = math.exp(%a1) @ea
          %eb: float32[2,3] = math.exp(%b1) @eb
          %d: float32[2,3] = math.sub(%ea, %eb) @d
          %y: float32[2,3] = math.add(%d, %b0) @y
          return %y
        }""", """
        graph g(%x: float32[4,3]) {
          %a0: float32[2,3], %a1: float32[2,3] = tensor.split(%x) {axis=0, sizes=(2, 2)} @sa
          %ea: float32[2,3] = math.exp(%a1) @ea
          %d: float32[2,3] = math.sub(%ea, %ea) @d
          %y: float32[2,3] = math.add(%d, %a0) @y
          return %y
        }""")


def test_cse_keeps_apart_what_differs():
    text = """
        graph g(%x: float32[2]) {
          param %zero: float32[2] = [0.0, 0.0]
          param %negative_zero: float32[2] = [-0.0, -0.0]
          param %zero_ints: int32[2] = [0, 0]
          %a: float32[2] = math.leaky_relu(%x) {alpha=0.1} @a
          %b: float32[2] = math.leaky_relu(%x) {alpha=0.2} @b
          %c: float32[2] = math.sub(%zero, %x) @c
          %d: float32[2] = math.sub(%x, %zero) @d
          %e: float32[2] = math.add(%negative_zero, %x) @e
          %i: int32[2] = math.cast(%a) {dtype='int32'} @i
          %j: int32[2] = math.add(%i, %zero_ints) @j
          return %b, %c, %d, %e, %j
        }"""
    # other attrs, input order of sub, -0.0, dtypes
    check_rewrite(EliminateCommonSubexpressions(), text, text, changes=False)


def test_cse_keeps_output_names():
    check_rewrite(EliminateCommonSubexpressions(), """
        graph g(%x: float32[2]) {
          %a: float32[2] = math.tanh(%x) @a
          %b: float32[2] = math.tanh(%x) @b
          %c: float32[2] = math.relu(%a) @c
          return %c, %b
        }""", """
        graph g(%x: float32[2]) {
          %b: float32[2] = math.tanh(%x) @a
          %c: float32[2] = math.relu(%b) @c
          return %c, %b
        }""")


def test_cse_does_not_merge_two_graph_outputs():
    text = """
        graph g(%x: float32[2]) {
          %a: float32[2] = math.tanh(%x) @a
          %b: float32[2] = math.tanh(%x) @b
          return %a, %b
        }"""
    graph = check_rewrite(EliminateCommonSubexpressions(), text, text, changes=False)
    assert list(interpret(graph, sample_inputs(graph))) == ["a", "b"]


def test_cse_compares_only_params_up_to_the_limit():
    graph = check_rewrite(EliminateCommonSubexpressions(param_limit=2), """
        graph g(%x: float32[3]) {
          param %a: float32[3] = [1.0, 2.0, 3.0]
          param %b: float32[3] = [1.0, 2.0, 3.0]
          %p: float32[3] = math.add(%x, %a) @p
          %q: float32[3] = math.add(%x, %b) @q
          return %p, %q
        }""", changes=False)
    assert len(graph.params) == 2
    check_rewrite(EliminateCommonSubexpressions(param_limit=3), graph)
    assert len(graph.params) == 1


# ---- constant folding ---------------------------------------------------------------------------------------------

def test_fold_keeps_the_output_name_of_a_folded_result():
    check_rewrite(FoldConstants(), """
        graph g(%x: float32[2]) {
          param %a: float32[2] = [1.0, 4.0]
          %s: float32[2] = math.sqrt(%a) @s
          %y: float32[2] = math.add(%x, %s) @y
          return %y, %s
        }""", """
        graph g(%x: float32[2]) {
          param %s: float32[2] = [1.0, 2.0]
          %y: float32[2] = math.add(%x, %s) @y
          return %y, %s
        }""")


def test_fold_respects_the_size_limit():
    text = """
        graph g(%x: float32[4,4]) {
          param %a: float32[4] = [1.0, 2.0, 3.0, 4.0]
          %e: float32[4,4] = tensor.expand(%a) {shape=(4, 4)} @e
          %y: float32[4,4] = math.mul(%x, %e) @y
          return %y
        }"""
    graph = check_rewrite(Cleanup(fold_limit=15), text, text, changes=False)
    check_rewrite(Cleanup(fold_limit=16), graph)
    assert [node.op for node in graph.nodes] == ["math.mul"]


def test_fold_leaves_a_node_whose_reference_fails():
    text = """
        graph g(%x: float32[3]) {
          param %a: float32[3] = [1.0, 2.0, 3.0]
          param %index: int64[1] = [7]
          %g: float32[1] = tensor.gather(%a, %index) @g
          %y: float32[3] = math.add(%x, %g) @y
          return %y
        }"""
    cleanup = Cleanup()
    check_rewrite(cleanup, text, text, changes=False, check_outputs=False)  # the interpreter fails on it too
    assert cleanup.explain()["fold_constants"]["refused"] == {"the reference fails on the constants (IndexError)": 1}


# ---- shape arithmetic of exported graphs ----------------------------------------------------------------------------

def onnx_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "exported", list(inputs), list(outputs), list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def int64s(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_exported_shape_chain_imports_as_one_static_reshape(tmp_path):
    # what torch.onnx.export writes for x.view(x.size(0), -1)
    model = onnx_model(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
            helper.make_node("Unsqueeze", ["batch", "axes"], ["batch_1d"]),
            helper.make_node("Concat", ["batch_1d", "minus_one"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 12])],
        [int64s("zero", 0), int64s("axes", [0]), int64s("minus_one", [-1])],
    )
    path = tmp_path / "view.onnx"
    onnx.save(model, path)
    graph = load_onnx(path)
    assert_golden(graph, """
        graph exported(%x: float32[2,3,4]) {
          %y: float32[2,12] = tensor.reshape(%x) {shape=(2, 12)} @y
          return %y
        }""")
    check_rewrite(Cleanup(), graph, changes=False)  # nothing left to fold
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    np.testing.assert_allclose(interpret(graph, feeds)["y"], run_onnxruntime(model, feeds)[0], rtol=RTOL, atol=ATOL)


def test_exporter_noise_is_gone_after_import_and_cleanup(tmp_path):
    # Dropout in inference, Identity, a Cast to the type it has, * 1 and + 0 from a traced module
    model = onnx_model(
        [
            helper.make_node("Dropout", ["x"], ["dropped"]),
            helper.make_node("Identity", ["dropped"], ["same"]),
            helper.make_node("Cast", ["same"], ["cast"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["cast", "ones"], ["scaled"]),
            helper.make_node("Add", ["scaled", "zeros"], ["shifted"]),
            helper.make_node("Relu", ["shifted"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.ones(3, np.float32), "ones"), numpy_helper.from_array(np.zeros((2, 3), np.float32), "zeros")],
    )
    path = tmp_path / "noisy.onnx"
    onnx.save(model, path)
    graph = load_onnx(path)
    report = PassManager("cleanup").run(graph)
    assert_golden(graph, """
        graph exported(%x: float32[2,3]) {
          %y: float32[2,3] = math.relu(%x) @y
          return %y
        }""")
    assert report.rows[0].max_abs_error == 0.0
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)}
    np.testing.assert_allclose(interpret(graph, feeds)["y"], run_onnxruntime(model, feeds)[0], rtol=RTOL, atol=ATOL)


def test_output_name_copies_from_import_survive_cleanup(tmp_path):
    # one value returned under two names, and an input returned as an output: the importer keeps
    # each ONNX output name on a copy, and cleanup must not take those copies away
    model = onnx_model(
        [
            helper.make_node("Relu", ["x"], ["first"]),
            helper.make_node("Identity", ["first"], ["second"]),
            helper.make_node("Identity", ["x"], ["echo"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in ("first", "second", "echo")],
    )
    path = tmp_path / "names.onnx"
    onnx.save(model, path)
    graph = load_onnx(path)
    Cleanup()(graph)
    verify(graph)
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)}
    ours = interpret(graph, feeds)
    assert list(ours) == ["first", "second", "echo"]
    for name, expected in zip(ours, run_onnxruntime(model, feeds)):
        np.testing.assert_allclose(ours[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


def test_cleanup_folds_shape_arithmetic_on_params():
    # mean over the batch the way a graph without shape inference writes it: sum / dims[0]
    check_rewrite(Cleanup(), """
        graph g(%x: float32[4,3]) {
          param %dims: int64[2] = [4, 3]
          param %first: int64[] = 0
          param %last: int64[1] = [1]
          %batch: int64[] = tensor.gather(%dims, %first) @batch
          %batch_1d: int64[1] = tensor.reshape(%batch) {shape=(1,)} @unsqueeze
          %rows: int64[1] = tensor.gather(%dims, %last) @rows
          %ratio: int64[1] = math.div(%rows, %rows) @ratio
          %size: int64[2] = tensor.concat(%batch_1d, %ratio) {axis=0} @concat
          %count: int64[] = reduce.prod(%size) {keepdims=False} @count
          %scale: float32[] = math.cast(%count) {dtype='float32'} @scale
          %sum: float32[1,3] = reduce.sum(%x) {axes=(0,)} @sum
          %mean: float32[1,3] = math.div(%sum, %scale) @mean
          %ones: float32[1] = math.cast(%ratio) {dtype='float32'} @ones_f
          %ones_0d: float32[] = tensor.reshape(%ones) {shape=()} @ones_0d
          %y: float32[1,3] = math.mul(%mean, %ones_0d) @y
          return %y
        }""", """
        graph g(%x: float32[4,3]) {
          param %scale: float32[] = 4.0
          %sum: float32[1,3] = reduce.sum(%x) {axes=(0,)} @sum
          %y: float32[1,3] = math.div(%sum, %scale) @mean
          return %y
        }""")


# ---- the cleanup composite --------------------------------------------------------------------------------------

def test_cleanup_docstring_example():
    check_rewrite(Cleanup(), """
        graph g(%x: float32[2,3]) {
          param %a: float32[3] = [1.0, 1.0, 1.0]
          param %one: float32[] = 1.0
          %s: float32[] = math.sqrt(%one) @sqrt
          %m: float32[2,3] = math.mul(%x, %s) @mul
          %t: float32[3,2] = tensor.transpose(%m) {perm=(1, 0)} @t1
          %u: float32[2,3] = tensor.transpose(%t) {perm=(1, 0)} @t2
          %p: float32[2,3] = math.add(%u, %a) @p
          %q: float32[2,3] = math.add(%x, %a) @q
          %y: float32[2,3] = math.sub(%p, %q) @y
          return %y
        }""", """
        graph g(%x: float32[2,3]) {
          param %a: float32[3] = [1.0, 1.0, 1.0]
          %p: float32[2,3] = math.add(%x, %a) @p
          %y: float32[2,3] = math.sub(%p, %p) @y
          return %y
        }""")


def test_the_parts_of_cleanup_run_alone_from_a_pipeline_string():
    text = """
        graph g(%x: float32[2,3]) {
          param %one: float32[] = 1.0
          %a: float32[2,3] = math.mul(%x, %one) @a
          %b: float32[2,3] = math.exp(%a) @b
          %c: float32[2,3] = math.exp(%x) @c
          %y: float32[2,3] = math.sub(%b, %c) @y
          return %y
        }"""
    by_parts, composite = parse(text), parse(text)
    report = PassManager("identities,cse,dce").run(by_parts)
    assert [row.changed for row in report.rows] == [True, True, False]
    check_rewrite(Cleanup(), composite, """
        graph g(%x: float32[2,3]) {
          %b: float32[2,3] = math.exp(%x) @b
          %y: float32[2,3] = math.sub(%b, %b) @y
          return %y
        }""")
    assert str(by_parts) == str(composite)


def test_cleanup_report_explains_what_fired():
    graph = parse("""
        graph g(%x: float32[2,3]) {
          param %one: float32[] = 1.0
          %a: float32[2,3] = math.mul(%x, %one) @a
          %b: float32[2,3] = math.exp(%a) @b
          %c: float32[2,3] = math.exp(%a) @c
          %d: float16[2,3] = math.cast(%b) {dtype='float16'} @d
          %y: float32[2,3] = math.cast(%d) {dtype='float32'} @y
          %z: float32[2,3] = math.add(%y, %c) @z
          return %z
        }""")
    report = PassManager("cleanup").run(graph)
    rules = report.rows[0].rules
    assert rules["mul_by_one"]["fired"] == 1
    assert rules["merge_common_subexpressions"]["fired"] == 1
    assert rules["cast_round_trip"]["refused"]["float32 -> float16 loses values, so the round trip is not an identity"] == 1
    assert "mul_by_one                       fired 1" in report.explain()
    assert report.rows[0].max_abs_error == 0.0


# ---- property: random small graphs ----------------------------------------------------------------------------------

class RandomGraph:
    """A seeded generator of small valid float32 graphs full of what cleanup removes (and some of
    what it must keep)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.graph = Graph(f"random{seed}")
        self.pool = [self.graph.add_input("x", TensorType((2, 3, 4), "float32"))]
        if self.rng.random() < 0.5:
            self.pool.append(self.graph.add_input("z", TensorType((2, 3, 4), "float32")))

    def choice(self, items):
        return items[int(self.rng.integers(len(items)))]

    def param(self, shape, fill: float | None = None):
        array = self.rng.standard_normal(shape) if fill is None else np.full(shape, fill)
        return self.graph.add_param("c", array.astype(np.float32))

    def op(self, op: str, *inputs, **attrs):
        return self.graph.op(op, *inputs, **attrs)

    # each maker takes a value and returns a new float32 value computed from it
    def unary(self, x):
        return self.op(self.choice(["math.relu", "math.tanh", "math.sigmoid", "math.neg", "math.abs"]), x)

    def binary(self, x):
        partners = [value for value in self.pool if value.shape == x.shape and value is not x]
        other = self.choice(partners) if partners and self.rng.random() < 0.7 else self.param(x.shape)
        return self.op(self.choice(["math.add", "math.sub", "math.mul", "math.maximum"]), x, other)

    def with_constant(self, x):
        op, fill = self.choice([("math.mul", 1.0), ("math.div", 1.0), ("math.add", 0.0), ("math.sub", 0.0),
                                ("math.mul", 0.5), ("math.div", 2.0)])
        shape = self.choice([(), x.shape[-1:], x.shape, (2,) + tuple(x.shape)])  # the last one broadcasts
        constant = self.param(shape, fill)
        if op in ("math.mul", "math.add") and self.rng.random() < 0.5:
            return self.op(op, constant, x)  # the rules match commutative ops in either order
        return self.op(op, x, constant)

    def cast(self, x):
        middle = self.choice(["float32", "float64", "float16", "int32"])  # the last two lose values
        return self.op("math.cast", self.op("math.cast", x, dtype=middle), dtype="float32")

    def reshape(self, x):
        numel = x.type.numel
        shapes = [tuple(x.shape), (numel,), (2, numel // 2), (numel // 4, 2, 2)]
        y = self.op("tensor.reshape", x, shape=self.choice(shapes))
        return self.op("tensor.reshape", y, shape=self.choice([tuple(x.shape), (-1,), (2, -1)])) if self.rng.random() < 0.7 else y

    def transpose(self, x):
        first = tuple(int(axis) for axis in self.rng.permutation(x.type.rank))
        y = self.op("tensor.transpose", x, perm=first)
        second = tuple(int(np.argsort(first)[axis]) for axis in range(x.type.rank)) if self.rng.random() < 0.5 \
            else tuple(int(axis) for axis in self.rng.permutation(x.type.rank))
        return self.op("tensor.transpose", y, perm=second)

    def unit_axis(self, x):
        position = int(self.rng.integers(x.type.rank + 1))
        y = self.op("tensor.reshape", x, shape=tuple(x.shape[:position]) + (1,) + tuple(x.shape[position:]))
        perm = list(range(x.type.rank + 1))
        perm.insert(int(self.rng.integers(len(perm))), perm.pop(position))  # moves only the unit axis
        return self.op("tensor.reshape", self.op("tensor.transpose", y, perm=tuple(perm)), shape=tuple(x.shape))

    def data_movement(self, x):
        rank, last = x.type.rank, x.shape[-1]
        make = self.choice([
            lambda: self.op("tensor.expand", x, shape=self.choice([(1,) * rank, tuple(x.shape), (2,) + tuple(x.shape)])),
            lambda: self.op("tensor.slice", x, starts=(0,), ends=(self.choice([last, 100, 1]),), axes=(rank - 1,)),
            lambda: self.op("tensor.slice", x, starts=(-1,), ends=(-100,), axes=(rank - 1,), steps=(-1,)),
            lambda: self.op("tensor.concat", *([x] * int(self.rng.integers(1, 3))), axis=0),
            lambda: self.graph.add_node("tensor.split", [x], {"axis": 0, "sizes": (x.shape[0],)}).output,
            lambda: self.op("tensor.pad", x, pads=(0,) * (2 * rank - 1) + (int(self.rng.integers(2)),)),
            lambda: self.op("tensor.tile", x, repeats=(1,) * (rank - 1) + (int(self.rng.integers(1, 3)),)),
            lambda: self.op("math.neg", self.op("math.neg", x)),
            lambda: self.op("math.clip", x, **self.choice([{}, {"min": -0.5}])),
        ])
        return make()

    def duplicate(self, x):
        nodes = [node for node in self.graph.nodes if len(node.outputs) == 1 and node.output.dtype == "float32"]
        if not nodes:
            return self.unary(x)
        node = self.choice(nodes)
        return self.graph.add_node(node.op, node.inputs, dict(node.attrs)).output

    def constant_chain(self, x):
        dims = self.graph.add_param("dims", np.asarray(x.shape, dtype=np.int64))
        last = self.op("tensor.gather", dims, self.graph.add_param("axis", np.asarray(x.type.rank - 1)))
        scale = self.op("math.cast", self.op("math.div", last, last), dtype="float32")  # == 1
        bias = self.op("math.tanh", self.param(x.shape[-1:]))
        return self.op("math.add", self.op("math.mul", x, scale), bias)

    def build(self) -> Graph:
        makers = [self.unary, self.binary, self.with_constant, self.with_constant, self.cast, self.reshape,
                  self.transpose, self.unit_axis, self.data_movement, self.data_movement, self.duplicate, self.constant_chain]
        for _ in range(int(self.rng.integers(4, 12))):
            x = self.choice(self.pool)
            if x.type.numel > 64:  # keep the graphs small: shrink before growing again
                x = self.op("reduce.sum", x, axes=(0,), keepdims=False)
            self.pool.append(self.choice(makers)(x))
        computed = [value for value in self.pool if value.producer is not None]
        outputs = [computed[-1]]
        if self.rng.random() < 0.5 and len(computed) > 1:
            outputs.append(self.choice(computed[:-1]))
        if self.rng.random() < 0.3:  # a result computed twice, both copies returned
            outputs.append(self.duplicate(outputs[0]))
        self.graph.outputs = outputs
        return self.graph


SEEDS = range(60)


@pytest.fixture(scope="module")
def cleaned_random_graphs():
    """(seed, node count before, node count after, rules that fired) for each random graph, checked
    on the way: it verifies, computes what it did before, and a second cleanup changes nothing."""
    results = []
    for seed in SEEDS:
        graph = RandomGraph(seed).build()
        nodes_before = len(graph.nodes)
        cleanup = Cleanup()
        try:
            check_rewrite(cleanup, graph, seed=seed, changes=None)  # verifies before and after, too
        except Exception as error:
            raise AssertionError(f"seed {seed}: {error}") from error
        results.append((seed, nodes_before, len(graph.nodes), set(fired_rules(cleanup))))
    return results


def test_random_graphs_stay_correct_and_reach_a_fixed_point(cleaned_random_graphs):
    assert len(cleaned_random_graphs) >= 50
    assert all(after <= before for _, before, after, _ in cleaned_random_graphs)
    assert sum(after for *_, after, _ in cleaned_random_graphs) < 0.8 * sum(before for _, before, *_ in cleaned_random_graphs)


def test_random_graphs_exercise_every_part_of_cleanup(cleaned_random_graphs):
    fired = set().union(*(rules for *_, rules in cleaned_random_graphs))
    expected = {"fold_constants", "merge_common_subexpressions", "remove_dead_code"} | {rule.name for rule in IDENTITY_RULES}
    assert expected <= fired, f"never fired: {sorted(expected - fired)}"


def test_cse_keeps_equal_weights_apart_by_default():
    """Two layer norms whose scales happen to be equal stay two trainable parameters."""
    graph = parse("""
graph g(%x: float32[2,4]) {
  param %scale1: float32[4] = [1.0, 1.0, 1.0, 1.0]
  param %scale2: float32[4] = [1.0, 1.0, 1.0, 1.0]
  param %half: float32[] = 0.5
  param %half2: float32[] = 0.5
  %a: float32[2,4] = nn.layer_norm(%x, %scale1) @a
  %b: float32[2,4] = nn.layer_norm(%a, %scale2) @b
  %c: float32[2,4] = math.mul(%b, %half) @c
  %y: float32[2,4] = math.mul(%c, %half2) @y
  return %y
}""")
    assert EliminateCommonSubexpressions()(graph)
    assert sorted(value.name for value in graph.params) == ["half", "scale1", "scale2"]
