"""The NumPy references of the subtle ops agree with torch (rtol 1e-4, atol 1e-5 in fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optc.ir import Graph, TensorType, interpret

RTOL, ATOL = 1e-4, 1e-5


def run_op(op: str, arrays: list[np.ndarray], params: list[np.ndarray] = (), **attrs) -> np.ndarray:
    graph = Graph()
    inputs = [graph.add_input(f"in{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    consts = [graph.add_param(f"p{i}", a) for i, a in enumerate(params)]
    graph.outputs = [graph.op(op, *inputs, *consts, name="out", **attrs)]
    return interpret(graph, {f"in{i}": a for i, a in enumerate(arrays)})["out"]


rng = np.random.default_rng(0)


def randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype("float32")


CONV_CASES = [
    # rank, in_channels, out_channels, kernel, stride, padding, dilation, groups
    (1, 4, 6, 3, 2, 1, 1, 1),
    (1, 4, 4, 3, 1, 2, 2, 4),
    (2, 4, 6, 3, 1, 1, 1, 2),
    (2, 6, 6, 3, 2, 1, 1, 6),
    (2, 3, 8, 5, 2, 2, 2, 1),
    (3, 2, 4, 3, (1, 2, 1), 1, 1, 1),
]


@pytest.mark.parametrize("rank,cin,cout,k,stride,pad,dil,groups", CONV_CASES)
def test_conv_matches_torch(rank, cin, cout, k, stride, pad, dil, groups):
    spatial = (9,) * rank
    x, w, b = randn(2, cin, *spatial), randn(cout, cin // groups, *(k,) * rank), randn(cout)
    strides = stride if isinstance(stride, tuple) else (stride,) * rank
    got = run_op("nn.conv", [x], [w, b], strides=strides, pads=(pad,) * (2 * rank), dilations=(dil,) * rank, groups=groups)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    want = conv(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), strides, pad, dil, groups).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_conv_asymmetric_pads_match_explicit_padding():
    x, w = randn(1, 2, 7, 7), randn(3, 2, 3, 3)
    got = run_op("nn.conv", [x], [w], pads=(0, 1, 2, 1))
    padded = np.pad(x, [(0, 0), (0, 0), (0, 2), (1, 1)])
    want = F.conv2d(torch.from_numpy(padded), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("stride,pad,out_pad,dil,groups", [(2, 1, 1, 1, 1), (1, 0, 0, 2, 2), (3, 2, 0, 1, 1)])
def test_conv_transpose_matches_torch(stride, pad, out_pad, dil, groups):
    x, w, b = randn(2, 4, 5, 6), randn(4, 6 // groups, 3, 3), randn(6)
    got = run_op("nn.conv_transpose", [x], [w, b], strides=(stride,) * 2, pads=(pad,) * 4,
                 output_padding=(out_pad,) * 2, dilations=(dil,) * 2, groups=groups)
    want = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, pad, out_pad, groups, dil).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("pad,dil", [(0, 1), (1, 1), (1, 2)])
def test_max_pool_matches_torch(ceil_mode, pad, dil):
    x = randn(1, 3, 10, 11)
    got = run_op("nn.max_pool", [x], kernel=(3, 3), strides=(2, 2), pads=(pad,) * 4, dilations=(dil,) * 2, ceil_mode=ceil_mode)
    want = F.max_pool2d(torch.from_numpy(x), 3, 2, pad, dil, ceil_mode=ceil_mode).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool_matches_torch(ceil_mode, count_include_pad):
    x = randn(1, 2, 10, 11)
    got = run_op("nn.avg_pool", [x], kernel=(3, 3), strides=(2, 2), pads=(1,) * 4, ceil_mode=ceil_mode,
                 count_include_pad=count_include_pad)
    want = F.avg_pool2d(torch.from_numpy(x), 3, 2, 1, ceil_mode=ceil_mode, count_include_pad=count_include_pad).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_pool_1d_and_3d_match_torch():
    x1, x3 = randn(2, 3, 12), randn(1, 2, 6, 7, 8)
    np.testing.assert_allclose(run_op("nn.max_pool", [x1], kernel=(3,), strides=(2,)), F.max_pool1d(torch.from_numpy(x1), 3, 2).numpy())
    np.testing.assert_allclose(
        run_op("nn.avg_pool", [x3], kernel=(2, 2, 2), strides=(2, 2, 2)), F.avg_pool3d(torch.from_numpy(x3), 2).numpy(), rtol=RTOL, atol=ATOL
    )


def test_norms_match_torch():
    x = randn(2, 6, 5, 5)
    scale, bias, mean, var = randn(6), randn(6), randn(6), np.abs(randn(6)) + 0.1
    t = {name: torch.from_numpy(a) for name, a in dict(x=x, scale=scale, bias=bias, mean=mean, var=var).items()}
    np.testing.assert_allclose(
        run_op("nn.batch_norm", [x], [scale, bias, mean, var], epsilon=1e-3),
        F.batch_norm(t["x"], t["mean"], t["var"], t["scale"], t["bias"], eps=1e-3).numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        run_op("nn.instance_norm", [x], [scale, bias]),
        F.instance_norm(t["x"], weight=t["scale"], bias=t["bias"]).numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        run_op("nn.group_norm", [x], [scale, bias], num_groups=3),
        F.group_norm(t["x"], 3, t["scale"], t["bias"]).numpy(), rtol=RTOL, atol=ATOL)
    seq = randn(2, 4, 8)
    gamma, beta = randn(8), randn(8)
    np.testing.assert_allclose(
        run_op("nn.layer_norm", [seq], [gamma, beta]),
        F.layer_norm(torch.from_numpy(seq), (8,), torch.from_numpy(gamma), torch.from_numpy(beta)).numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        run_op("nn.rms_norm", [seq], [gamma], epsilon=1e-6),
        F.rms_norm(torch.from_numpy(seq), (8,), torch.from_numpy(gamma), eps=1e-6).numpy(), rtol=RTOL, atol=ATOL)


def test_lrn_and_softmax_and_gelu_match_torch():
    x = randn(1, 7, 4, 4)
    np.testing.assert_allclose(
        run_op("nn.lrn", [x], size=5, alpha=1e-2, beta=0.75, bias=2.0),
        F.local_response_norm(torch.from_numpy(x), 5, 1e-2, 0.75, 2.0).numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run_op("nn.softmax", [x], axis=1), torch.softmax(torch.from_numpy(x), 1).numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run_op("nn.log_softmax", [x], axis=-1), torch.log_softmax(torch.from_numpy(x), -1).numpy(), rtol=RTOL, atol=ATOL)
    for approximate in ("none", "tanh"):
        np.testing.assert_allclose(run_op("math.gelu", [x], approximate=approximate),
                                   F.gelu(torch.from_numpy(x), approximate=approximate).numpy(), rtol=RTOL, atol=ATOL)


def test_integer_division_truncates_toward_zero():
    a, b = np.array([7, -7, 7, -7], "int64"), np.array([2, 2, -2, -2], "int64")
    np.testing.assert_array_equal(run_op("math.div", [a, b]), [3, -3, -3, 3])


def test_slice_clamps_like_onnx():
    x = np.arange(10, dtype="float32")
    np.testing.assert_array_equal(run_op("tensor.slice", [x], starts=(2,), ends=(1000,)), x[2:])
    np.testing.assert_array_equal(run_op("tensor.slice", [x], starts=(-1,), ends=(-(2**63),), steps=(-2,)), x[::-2])


def test_avg_pool_ceil_mode_never_counts_the_added_end_padding():
    x = np.arange(5, dtype="float32").reshape(1, 1, 5)
    got = run_op("nn.avg_pool", [x], kernel=(2,), strides=(2,), pads=(1, 1), ceil_mode=True, count_include_pad=True)
    want = F.avg_pool1d(torch.from_numpy(x), 2, 2, 1, ceil_mode=True, count_include_pad=True).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got, [[[0.0, 1.5, 3.5]]])


def test_scalar_params_stay_rank_zero():
    graph = Graph()
    assert graph.add_param("c", np.array(2.0, "float32")).type == TensorType((), "float32")


@pytest.mark.parametrize("activation,torch_fn", [
    ("none", lambda t: t), ("relu", torch.relu), ("gelu", F.gelu), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")),
    ("silu", F.silu), ("relu6", F.relu6), ("hard_swish", F.hardswish), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
])
def test_linear_epilogues_match_torch(activation, torch_fn):
    x, w, b = randn(2, 3, 8), randn(8, 5), randn(5)
    got = run_op("nn.linear", [x], [w, b], activation=activation)
    want = torch_fn(torch.from_numpy(x) @ torch.from_numpy(w) + torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_conv_with_fused_activation_matches_torch():
    x, w, b = randn(1, 3, 7, 7), randn(4, 3, 3, 3), randn(4)
    got = run_op("nn.conv", [x], [w, b], pads=(1, 1, 1, 1), activation="relu6")
    want = F.relu6(F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1)).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_attention_matches_torch_sdpa():
    q, k, v = randn(2, 3, 5, 4), randn(2, 3, 7, 4), randn(2, 3, 7, 6)
    t = [torch.from_numpy(a) for a in (q, k, v)]
    np.testing.assert_allclose(run_op("nn.attention", [q, k, v]), F.scaled_dot_product_attention(*t).numpy(), rtol=RTOL, atol=ATOL)
    mask = np.random.default_rng(1).random((2, 1, 5, 7)) > 0.3
    mask[..., 0] = True
    np.testing.assert_allclose(run_op("nn.attention", [q, k, v, mask], scale=0.25),
                               F.scaled_dot_product_attention(*t, attn_mask=torch.from_numpy(mask), scale=0.25).numpy(), rtol=RTOL, atol=ATOL)
    square = [randn(1, 2, 6, 4) for _ in range(3)]
    np.testing.assert_allclose(run_op("nn.attention", square, causal=True),
                               F.scaled_dot_product_attention(*[torch.from_numpy(a) for a in square], is_causal=True).numpy(), rtol=RTOL, atol=ATOL)


def test_attention_row_with_every_key_masked_gives_zeros_like_torch():
    q, k, v = randn(1, 1, 3, 4), randn(1, 1, 5, 4), randn(1, 1, 5, 2)
    mask = np.ones((1, 1, 3, 5), bool)
    mask[0, 0, 1] = False
    got = run_op("nn.attention", [q, k, v, mask])
    want = F.scaled_dot_product_attention(*[torch.from_numpy(a) for a in (q, k, v)], attn_mask=torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.all(got[0, 0, 1] == 0)
    additive = np.where(mask, 0.0, -np.inf).astype("float32")
    np.testing.assert_allclose(run_op("nn.attention", [q, k, v, additive]), got, rtol=RTOL, atol=ATOL)


def test_scalar_params_with_infinity_round_trip_through_text():
    from optc.ir import parse

    graph = Graph()
    x = graph.add_input("x", TensorType((2,), "float32"))
    graph.outputs = [graph.op("math.maximum", x, graph.add_param("low", np.array(-np.inf, "float32")))]
    again = parse(str(graph))
    assert next(iter(again.params.values())) == -np.inf
