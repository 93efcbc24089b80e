"""The fuse pipeline on every zoo model, from torch capture and from ONNX export (tiny sizes).

Acceptance of the fusion work: no batch norm or loose softmax left, every layer norm, GELU and
attention block recognized, fewer nodes, outputs unchanged within rtol 1e-4 of the unfused graph.
"""

from __future__ import annotations

import pytest

from optc.ir import verify
from optc.passes import PassManager
from optc.tools import zoo
from optc.tools.fusion_report import fuse_and_measure, load_zoo_graph

pytestmark = pytest.mark.slow

LAYERS = {name: zoo.options(name, "tiny").get("depth", zoo.options(name, "tiny").get("layers")) for name in ("vit", "gpt2", "bert")}


@pytest.mark.parametrize("source", ["torch", "onnx"])
@pytest.mark.parametrize("model", zoo.names())
def test_fuse_on_zoo_model(model, source, tmp_path):
    graph = load_zoo_graph(model, source, "tiny", tmp_path)
    row = fuse_and_measure(graph, model, source)
    verify(graph)
    assert row.after < row.before
    assert row.relative_error < 1e-4
    assert row.ops_after["nn.batch_norm"] == 0 and row.ops_after["nn.softmax"] == 0
    if model in LAYERS:
        layers = LAYERS[model]
        assert row.ops_after["nn.attention"] == layers
        assert row.ops_after["nn.layer_norm"] == 2 * layers + 1
        gelus = row.ops_after["math.gelu"] + sum(1 for node in graph.nodes if node.attrs.get("activation", "").startswith("gelu"))
        assert gelus == layers
        assert not any(node.op in ("math.erf", "math.tanh", "reduce.mean") for node in graph.nodes)
    else:
        assert row.ops_after["nn.linear"] == 1  # the classifier head
    assert not PassManager("cleanup,fuse", check_numerics=False).run(graph).rows[-1].changed
