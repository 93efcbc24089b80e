"""The PyTorch frontend against torch itself: every zoo model, a wide op sweep, fx, errors, ONNX."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optc.errors import OptcError, UnsupportedOpError
from optc.frontends.torch import capture, from_exported, from_fx
from optc.ir import Graph, interpret, verify
from optc.tools import zoo

RTOL, ATOL = 1e-3, 1e-4  # float32 against torch eager

# the convolutional nets at their real size (the classic benchmarks); transformers tiny
ZOO_SIZES = {"resnet18": "full", "mobilenetv2": "full", "vit": "tiny", "gpt2": "tiny", "bert": "tiny"}


def _numpy(tensors: tuple[Any, ...]) -> list[np.ndarray]:
    return [t.detach().numpy() for t in tensors if isinstance(t, torch.Tensor)]


def _feeds(graph: Graph, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {value.name: array for value, array in zip(graph.inputs, arrays)}


def _eager(model: nn.Module, inputs: tuple[Any, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    return [item.numpy() for item in torch.utils._pytree.tree_leaves(out) if isinstance(item, torch.Tensor)]


def _assert_matches(graph: Graph, model: nn.Module, inputs: tuple[Any, ...], rtol: float = RTOL, atol: float = ATOL) -> None:
    results = interpret(graph, _feeds(graph, _numpy(inputs)))
    expected = _eager(model, inputs)
    assert len(graph.outputs) == len(expected)
    for value, reference in zip(graph.outputs, expected):
        got = results[value.name]
        assert got.dtype == reference.dtype, value.name
        np.testing.assert_allclose(got, reference, rtol=rtol, atol=atol, err_msg=value.name)


@pytest.fixture(scope="module")
def zoo_capture() -> Any:
    """(model, inputs, graph) per zoo model, captured once for the module."""
    cache: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], Graph]] = {}

    def get(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], Graph]:
        if name not in cache:
            model, inputs = zoo.build(name, size=ZOO_SIZES[name])
            graph = capture(model, inputs, input_names=zoo.input_names(name), output_names=zoo.output_names(name))
            cache[name] = (model, inputs, graph)
        return cache[name]

    return get


# ---- the zoo ---------------------------------------------------------------------------------------


def test_zoo_lists_the_reference_models() -> None:
    assert set(zoo.names()) >= {"resnet18", "mobilenetv2", "vit", "gpt2", "bert"}
    for name in zoo.names():
        assert "tiny" in zoo.sizes(name)
        assert zoo.input_names(name)


def test_zoo_build_is_seeded_and_in_eval_mode() -> None:
    first, first_inputs = zoo.build("vit", seed=3, size="tiny")
    again, again_inputs = zoo.build("vit", seed=3, size="tiny")
    other, _ = zoo.build("vit", seed=4, size="tiny")
    assert not first.training
    torch.testing.assert_close(first.state_dict(), again.state_dict())
    torch.testing.assert_close(first_inputs, again_inputs)
    assert not torch.equal(first.head.weight, other.head.weight)


def test_zoo_real_sizes_are_the_published_architectures(zoo_capture: Any) -> None:
    resnet, (image,), _ = zoo_capture("resnet18")
    assert tuple(image.shape) == (1, 3, 224, 224)
    assert sum(p.numel() for p in resnet.parameters()) == 11_689_512  # torchvision resnet18
    mobilenet, _, _ = zoo_capture("mobilenetv2")
    assert sum(p.numel() for p in mobilenet.parameters()) == 3_504_872  # torchvision mobilenet_v2
    assert zoo.options("vit", "full")["dim"] == 192 and zoo.options("vit", "full")["depth"] == 12


def test_zoo_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.build("alexnet")
    with pytest.raises(ValueError, match="no size"):
        zoo.build("vit", size="huge")
    with pytest.raises(ValueError, match="no option"):
        zoo.build("vit", size="tiny", colour=3)


# ---- capture of the zoo ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ZOO_SIZES))
def test_zoo_model_capture_matches_torch(zoo_capture: Any, name: str) -> None:
    model, inputs, graph = zoo_capture(name)
    verify(graph)
    assert [value.name for value in graph.inputs] == zoo.input_names(name)
    assert [value.name for value in graph.outputs] == zoo.output_names(name)
    _assert_matches(graph, model, inputs)


def test_resnet18_graph_has_the_expected_ops_and_named_params(zoo_capture: Any) -> None:
    model, _, graph = zoo_capture("resnet18")
    counts = graph.op_counts()
    assert counts["nn.conv"] == 20 and counts["nn.batch_norm"] == 20
    assert counts["nn.max_pool"] == 1 and counts["reduce.mean"] == 1
    names = {value.name for value in graph.params}
    assert {"conv1.weight", "layer4.1.bn2.running_var", "fc.bias"} <= names
    assert all(value.uses for value in graph.params), "unused params are dropped"
    # every weight is stored once (the fc transpose is folded into a new param, the original dropped)
    assert graph.param_count() == sum(t.numel() for k, t in model.state_dict().items() if "num_batches" not in k)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_attention_mask_reaches_the_graph(zoo_capture: Any, name: str) -> None:
    model, (input_ids, mask), graph = zoo_capture(name)
    rng = np.random.default_rng(0)
    other_ids = torch.from_numpy(rng.integers(0, 1000, input_ids.shape).astype(np.int64))
    other_mask = torch.ones_like(mask)
    other_mask[:, :2] = 0
    _assert_matches(graph, model, (other_ids, other_mask))
    unmasked = interpret(graph, _feeds(graph, [other_ids.numpy(), np.ones_like(mask.numpy())]))
    masked = interpret(graph, _feeds(graph, [other_ids.numpy(), other_mask.numpy()]))
    output = graph.outputs[0].name
    assert not np.allclose(unmasked[output], masked[output])


def test_tied_embedding_is_stored_once(zoo_capture: Any) -> None:
    model, _, graph = zoo_capture("gpt2")
    unique = {id(p): p.numel() for p in model.parameters()}
    # the LM head shares the token embedding: the graph transposes it at run time, never copies it
    assert graph.param_count() < sum(unique.values()) + 1000
    embedding = graph.find("model.lm_head.weight")
    assert {node.op for node in embedding.users()} == {"tensor.gather", "tensor.transpose"}


# ---- a sweep over ATen ops ------------------------------------------------------------------------


class OpSweep(nn.Module):
    """Many ATen ops at once, each result a separate output so a mismatch names its op."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> tuple[Any, ...]:
        index = torch.tensor([[0, 2, 1, 5, 4, 3]] * 6).expand(2, 4, 6, 6)
        y = x.flip(0)
        return (
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
            F.silu(x) + F.hardswish(x) + F.hardsigmoid(x) + F.mish(x) + F.selu(x) + F.softplus(x, beta=2),
            F.adaptive_avg_pool2d(x, 2), F.adaptive_avg_pool2d(x, 1),
            torch.var(x, dim=1, keepdim=True) + x.std() + x.logsumexp(-1, keepdim=True),
            torch.chunk(x, 2, dim=1)[1], torch.unbind(x, 2)[3], torch.stack([x, -x], 1),
            torch.tril(torch.ones(4, 4)), x.tril(), x.triu(1),
            F.layer_norm(x, (6,)), F.leaky_relu(x, 0.2) + F.elu(x), torch.clamp(x, -1, 1) + x.clamp(min=0.2),
            F.interpolate(x, scale_factor=2, mode="nearest"),
            x.softmax(-1), x.log_softmax(1), torch.where(x > 0, x, 0.0), x.masked_fill(x < 0, 1.0),
            F.gelu(x), F.gelu(x, approximate="tanh"), F.pad(x, (1, 2, 0, 1), value=0.5),
            x.max(dim=1)[0], x.min(dim=2)[1], x.amax(2), x.sum(), x.mean(), x.argmax(1), x.prod(3),
            x.flip(1), x.roll(1, 2), x.repeat(1, 2, 1, 1), x.cumsum(2), torch.gather(x, 3, index),
            x[:, [0, 2]][:, :, [1, 3]], x[:, 1], x[..., ::2], x[:, :, 1:-1],
            x.view(2, -1).t() @ x.view(2, -1), torch.einsum("bchw,bcwv->bchv", x, x),
            x.new_zeros(3), torch.zeros_like(x), torch.full_like(x, 7.0),
            (x * 3).int() // 2, (x * 3).int() % 4, torch.remainder(x, 0.7), torch.fmod(x, 0.7),
            x.abs().sqrt().log1p() + x.exp().expm1().rsqrt(), torch.erf(x) + x.sin() + x.cos() + x.reciprocal(),
            (x > 0).any(dim=1), (x > 0).all(), (x > 0) & (x < 1) | (x == 0), x != 0, ~(x > 0),
            x + 1, 2 - x, x * 0.5, x / 3, 3 / x, x**2, 2**x, x.int() + 1.5, x.long() * x, x.round(), x.floor() + x.ceil(),
            torch.maximum(x, -x) + torch.minimum(x, x.flip(0)), x.sigmoid() * x.tanh(), x.sign(), x.trunc(),
            x.amin(1), x.argmin(2), x.max(), x.min(), x.prod(), (x > 0).any(), torch.clamp(x, min=x.flip(0)),
            torch.logical_and(x > 0, x < 1), torch.logical_or(x > 0, x < -1), torch.logical_xor(x > 0, x < 1),
            (x > 0) ^ (x < 1), x > y, x >= y, x < y, x <= y, x == y.round(), x != y.round(),
            torch.isnan(torch.where(x > 1, float("nan"), x)), x.abs().log2() + x.abs().log10(), x.abs() ** y,
            torch.remainder(x, y.abs() + 0.5), torch.fmod(x, y.abs() + 0.5), torch.var_mean(x, 1, correction=0),
            torch.addmv(x[0, 0, 0], x[0, 0], x[0, 1, 0], beta=0.5, alpha=2.0), torch.empty(2, 3).fill_(2.0),
            F.interpolate(x[0], scale_factor=2), F.interpolate(x[None], scale_factor=(1, 2, 1)),
        )


def test_op_sweep_matches_torch() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(shape, generator=generator) for shape in [(1, 2, 4, 8)] * 3 + [(2, 4, 6, 6)])
    model = OpSweep()
    graph = capture(model, inputs)
    verify(graph)
    assert [value.name for value in graph.inputs] == ["q", "k", "v", "x"]
    _assert_matches(graph, model, inputs, rtol=1e-4, atol=1e-5)


class ConvSweep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.group_norm = nn.GroupNorm(2, 4)
        self.conv1d = nn.Conv1d(4, 4, 3, groups=2, dilation=2)
        self.prelu = nn.PReLU(4)
        self.depthwise = nn.Conv2d(4, 4, 3, stride=2, groups=4, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = F.relu6(self.norm(self.conv(x)))
        y = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False) + F.max_pool2d(y, 3, 2, 1, ceil_mode=True)
        y = self.prelu(self.group_norm(self.up(y)))
        return {
            "image": y,
            "sequence": self.conv1d(y.flatten(2)),
            "pooled": F.adaptive_max_pool2d(y, 1) + F.avg_pool2d(y, 2),
            "depthwise": self.depthwise(y),
            "volume": F.avg_pool3d(y[None], 2, ceil_mode=True) + F.max_pool3d(y[None], 2, ceil_mode=True)
            + F.adaptive_avg_pool3d(y[None], 1) + F.adaptive_max_pool3d(y[None], 1),
        }


def test_conv_sweep_matches_torch_and_names_dict_outputs() -> None:
    model = ConvSweep().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 1.5)
    inputs = (10 * torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1)),)  # relu6 saturates
    graph = capture(model, inputs)
    verify(graph)
    assert [value.name for value in graph.outputs] == ["image", "sequence", "pooled", "depthwise", "volume"]
    _assert_matches(graph, model, inputs, rtol=1e-4, atol=1e-5)


def test_nested_outputs_and_repeated_outputs_are_flattened() -> None:
    class Nested(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[Any, ...]:
            y = x * 2
            return y, (x + 1, y), x

    inputs = (torch.randn(3, 4),)
    graph = capture(Nested(), inputs, output_names=["a", "b", "c", "d"])
    verify(graph)
    assert [value.name for value in graph.outputs] == ["a", "b", "c", "d"]
    results = interpret(graph, {"x": inputs[0].numpy()})
    np.testing.assert_allclose(results["c"], results["a"])
    np.testing.assert_allclose(results["d"], inputs[0].numpy())


def test_capture_keeps_the_modules_training_flag_and_uses_running_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)
    model.train()
    inputs = (torch.randn(2, 3, 6, 6),)
    graph = capture(model, inputs)
    assert model.training
    model.eval()
    _assert_matches(graph, model, inputs)


class AttentionVariants(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor,
                bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
            F.scaled_dot_product_attention(q, k, v, attn_mask=keep),
            F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3),
            F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], enable_gqa=True),
        )


def test_attention_variants_match_torch_including_fully_masked_rows() -> None:
    generator = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(3, 2, 2, 5, 8, generator=generator).unbind(0)
    keep = torch.rand(2, 1, 5, 5, generator=generator) > 0.5
    keep[0, 0, 1] = False  # a query that may attend to nothing: torch gives zeros
    bias = torch.randn(5, 5, generator=generator)
    bias[2] = -float("inf")
    inputs = (q, k, v, keep, bias)
    graph = capture(AttentionVariants(), inputs)
    verify(graph)
    _assert_matches(graph, AttentionVariants(), inputs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", ["gpt2", "bert"])
def test_transformers_default_sdpa_models_with_keyword_inputs(architecture: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if architecture == "gpt2":
        config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                         bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config).eval()
    else:
        config = transformers.BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                         intermediate_size=64, vocab_size=100)
        model = transformers.BertModel(config).eval()
    input_ids = torch.randint(0, 100, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.int64)
    mask[0, :3] = 0  # left padding
    mask[1, -2:] = 0  # right padding
    graph = capture(model, (input_ids,), example_kwargs={"attention_mask": mask, "use_cache": False})
    verify(graph)
    assert [value.name for value in graph.inputs] == ["input_ids", "attention_mask"]
    results = interpret(graph, {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=mask, use_cache=False)
    first = graph.outputs[0]
    assert first.name == ("logits" if architecture == "gpt2" else "last_hidden_state")
    np.testing.assert_allclose(results[first.name], expected[0].numpy(), rtol=RTOL, atol=ATOL)


# ---- fx ----------------------------------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)
        self.norm = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.conv(image)))
        return F.softmax(self.fc(y.flatten(1)) * 2.0, dim=-1)


def test_from_fx_converts_a_symbolically_traced_module() -> None:
    traced = torch.fx.symbolic_trace(SmallNet().eval())
    # an fx-level rewrite before import: the softmax becomes a log_softmax
    for node in traced.graph.nodes:
        if node.target is F.softmax:
            node.target = F.log_softmax
    traced.recompile()
    inputs = (torch.randn(2, 3, 8, 8),)
    graph = from_fx(traced, inputs)
    verify(graph)
    assert [value.name for value in graph.inputs] == ["image"]
    assert "nn.log_softmax" in graph.op_counts()
    _assert_matches(graph, traced, inputs)


# ---- dynamic shapes ----------------------------------------------------------------------------------


class GlobalPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def test_dynamic_batch_is_a_symbol_and_runs_at_any_batch() -> None:
    model = GlobalPoolNet().eval()
    graph = capture(model, (torch.randn(2, 3, 8, 8),), dynamic=True)
    verify(graph)
    assert graph.inputs[0].shape == ("batch", 3, 8, 8)
    assert graph.outputs[0].shape == ("batch", 2)
    for batch in (1, 5):
        _assert_matches(graph, model, (torch.randn(batch, 3, 8, 8),))


def test_dynamic_axes_can_be_named_per_input() -> None:
    model, inputs = zoo.build("vit", size="tiny", batch=2)
    graph = capture(model, inputs, dynamic={"x": {0: "images"}})
    verify(graph)
    assert graph.inputs[0].shape[0] == "images" and graph.outputs[0].shape == ("images", 10)
    # flattening batch and tokens gives a derived dim written as torch's expression
    assert any("17*images" in node.attrs.get("shape", ()) for node in graph.nodes)


def test_dynamic_reshape_runs_in_the_interpreter() -> None:
    model, inputs = zoo.build("resnet18", size="tiny", batch=2)
    graph = capture(model, inputs, dynamic=True)
    _assert_matches(graph, model, (torch.randn(3, 3, 32, 32),))


# ---- errors ---------------------------------------------------------------------------------------------


def test_unsupported_ops_are_reported_together_with_node_names() -> None:
    class Unsortable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            values = torch.sort(x)[0] + torch.topk(x, 8, dim=-1)[0]
            return values.relu() + torch.sort(x, dim=0)[0]

    with pytest.raises(UnsupportedOpError) as caught:
        capture(Unsortable(), (torch.randn(4, 8),))
    assert set(caught.value.unsupported) == {"aten.sort.default", "aten.topk.default"}
    assert len(caught.value.unsupported["aten.sort.default"]) == 2
    assert "sort" in str(caught.value) and "topk" in str(caught.value)


def test_an_unsupported_argument_is_reported_with_its_reason() -> None:
    class Divisor(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x, 2, divisor_override=3)

    with pytest.raises(UnsupportedOpError, match="divisor_override"):
        capture(Divisor(), (torch.randn(1, 2, 4, 4),))


def test_a_program_exported_in_training_mode_is_refused_with_the_reason() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    exported = torch.export.export(model, (torch.randn(2, 3, 6, 6),))
    with pytest.raises(UnsupportedOpError, match="training mode"):
        from_exported(exported)


def test_wrong_number_of_input_names_is_an_error() -> None:
    with pytest.raises(OptcError, match="input_names"):
        capture(GlobalPoolNet(), (torch.randn(2, 3, 8, 8),), input_names=["a", "b"])


# ---- ONNX export of the zoo ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_onnx_export_runs_in_onnxruntime(name: str, tmp_path: Any) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, inputs = zoo.export_onnx(name, path, size="tiny")
    proto = onnx.load(str(path))
    assert [item.version for item in proto.opset_import if item.domain in ("", "ai.onnx")] == [17]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [item.name for item in session.get_inputs()] == zoo.input_names(name)
    assert all(isinstance(dim, int) for item in session.get_inputs() for dim in item.shape)
    results = session.run(None, dict(zip(zoo.input_names(name), _numpy(inputs))))
    np.testing.assert_allclose(results[0], _eager(model, inputs)[0], rtol=RTOL, atol=ATOL)
