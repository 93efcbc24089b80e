"""Real models through the whole path: import, compile for the CPU, run, compare with the source.

ONNX backend test models against their shipped expected outputs, and the zoo's tiny variants
against torch eager (rtol 1e-3, atol 1e-4 in fp32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optc.backends import compile_graph
from optc.frontends.torch import capture
from optc.tools import zoo
from optc.tools.onnx_backend_report import compare_outputs, import_case, iter_backend_models

pytestmark = pytest.mark.slow
RTOL, ATOL = 1e-3, 1e-4

OUT_OF_SCOPE = ("test_strnorm", "test_gradient")
CASES = [case for case in iter_backend_models() if not case.name.split("/")[-1].startswith(OUT_OF_SCOPE)]


def test_every_in_scope_backend_model_is_listed():
    assert len(CASES) == 141


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_backend_model_compiled(case):
    graph, feeds, _ = import_case(case)
    with np.errstate(all="ignore"):
        outputs = compile_graph(graph, "cpu").run(feeds)
    mismatch = compare_outputs([outputs[value.name] for value in graph.outputs], case.expected, RTOL, ATOL)
    assert mismatch is None, mismatch


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_model_compiled_matches_torch(name):
    module, inputs = zoo.build(name, size="tiny")
    graph = capture(module, inputs, input_names=zoo.input_names(name), output_names=zoo.output_names(name))
    feeds = {value.name: tensor.numpy() for value, tensor in zip(graph.inputs, inputs)}
    outputs = compile_graph(graph, "cpu").run(feeds)
    with torch.inference_mode():
        expected = module(*inputs)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    assert len(expected) == len(graph.outputs)
    for value, reference in zip(graph.outputs, expected):
        np.testing.assert_allclose(outputs[value.name], reference.numpy(), rtol=RTOL, atol=ATOL, err_msg=value.name)
