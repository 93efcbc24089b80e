"""Kernel and model timings of optc's default CPU schedules against the untuned kernels and torch.

    python -m optc.tools.kernel_bench                       # every kernel kind, GFLOP/s table
    python -m optc.tools.kernel_bench --kinds dense,conv     # some kinds
    python -m optc.tools.kernel_bench --zoo resnet18,vit     # end to end, schedules off / on
    python -m optc.tools.kernel_bench --mcpu x86-64-v4       # AVX-512 code (16-lane tiles)

Kernels: each case is a one-node optc graph (``nn.linear``, ``nn.conv``, ``nn.attention``) lowered
through the CPU target's pipeline; its fused PrimFunc is built twice, untuned and with the
schedules (``optc.backends.schedules.schedule_func``, fast math included), checked against each
other (rtol 1e-4, atol 1e-5) and timed (median of ``--repeat`` runs of at least ``--min-ms``
each). The torch reference (``F.linear`` + activation, ``F.conv2d`` + bias + activation,
``scaled_dot_product_attention``, ``--threads`` threads) runs afterwards in its own process, so
its OpenMP pool never spins while TVM's runs.

Models (``--zoo``): zoo model at default size, captured, ``cleanup,fuse``, compiled with
``schedules=False`` and ``True``; runs alternate between the two; the table gives the median
latency and the largest deviation from ``optc.ir.interpret``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@dataclass(frozen=True)
class Case:
    kind: str  # dense, conv, depthwise, attention
    label: str
    params: dict[str, Any] = field(default_factory=dict)

    def flops(self) -> int:
        p = self.params
        if self.kind == "dense":
            rows = int(np.prod(p["rows"]))
            return 2 * rows * p["k"] * p["n"]
        if self.kind in ("conv", "depthwise"):
            out = _conv_out(p["size"], p["kernel"], p["stride"])
            return 2 * p["out"] * out * out * (p["channels"] // p["groups"]) * p["kernel"] ** 2
        if self.kind == "attention":
            return 4 * p["batch"] * p["heads"] * p["tokens"] ** 2 * p["depth"]
        raise ValueError(self.kind)


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def _dense(rows, k, n, activation="none", bias=True, note=""):
    label = f"{'x'.join(map(str, rows))}x{k} @ {k}x{n}" + (f" +{activation}" if activation != "none" else "") + note
    return Case("dense", label, {"rows": tuple(rows), "k": k, "n": n, "activation": activation, "bias": bias})


def _conv(channels, size, out, kernel, stride=1, groups=1, activation="relu", note=""):
    kind = "depthwise" if groups > 1 else "conv"
    label = f"{channels}x{size}x{size} -> {out}, {kernel}x{kernel}/{stride}" + note
    return Case(kind, label, {"channels": channels, "size": size, "out": out, "kernel": kernel, "stride": stride,
                              "groups": groups, "activation": activation})


def _attention(batch, heads, tokens, depth, causal=False, note=""):
    return Case("attention", f"{heads} heads x {tokens} x {depth}" + (" causal" if causal else "") + note,
                {"batch": batch, "heads": heads, "tokens": tokens, "depth": depth, "causal": causal})


CASES: list[Case] = [
    _dense((64,), 256, 768, note=" (gpt2-small qkv)"),
    _dense((64,), 256, 1024, "gelu_tanh", bias=False, note=" (gpt2-small mlp)"),
    _dense((64,), 1024, 256, bias=False),
    _dense((1, 197), 192, 768, "gelu", note=" (vit mlp)"),
    _dense((1, 197), 768, 192),
    _dense((1, 197), 192, 576, note=" (vit qkv)"),
    _dense((64,), 256, 8192, bias=False, note=" (gpt2-small lm head)"),
    _dense((1,), 512, 1000, note=" (resnet fc)"),
    _dense((33,), 100, 1001, note=" (ragged N)"),
    _conv(3, 224, 64, 7, 2, note=" (resnet stem)"),
    _conv(64, 56, 64, 3),
    _conv(128, 28, 128, 3),
    _conv(256, 14, 256, 3),
    _conv(512, 7, 512, 3),
    _conv(64, 56, 128, 3, 2),
    _conv(64, 56, 128, 1, 2, activation="none", note=" (downsample)"),
    _conv(16, 112, 96, 1, activation="relu6", note=" (mbv2 expand)"),
    _conv(96, 14, 576, 1, activation="relu6"),
    _conv(960, 7, 160, 1, activation="none", note=" (mbv2 project)"),
    _conv(144, 56, 144, 3, 1, 144, "relu6"),
    _conv(96, 112, 96, 3, 2, 96, "relu6"),
    _conv(576, 14, 576, 3, 1, 576, "relu6"),
    _attention(1, 3, 197, 64, note=" (vit)"),
    _attention(1, 4, 64, 64, causal=True, note=" (gpt2-small)"),
    _attention(1, 12, 128, 64, causal=True, note=" (gpt2 seq 128)"),
]


# ---- building the one-node graphs -----------------------------------------------------------------


def case_graph(case: Case):
    from ..ir import Graph, TensorType

    p = case.params
    rng = np.random.default_rng(0)
    graph = Graph(case.kind)
    if case.kind == "dense":
        x = graph.add_input("x", TensorType((*p["rows"], p["k"]), "float32"))
        inputs = [x, graph.add_param("w", (rng.standard_normal((p["k"], p["n"])) / np.sqrt(p["k"])).astype(np.float32))]
        if p["bias"]:
            inputs.append(graph.add_param("b", rng.standard_normal(p["n"]).astype(np.float32)))
        graph.outputs = [graph.op("nn.linear", *inputs, activation=p["activation"])]
    elif case.kind in ("conv", "depthwise"):
        c, k, groups = p["channels"], p["kernel"], p["groups"]
        x = graph.add_input("x", TensorType((1, c, p["size"], p["size"]), "float32"))
        w = graph.add_param("w", (rng.standard_normal((p["out"], c // groups, k, k)) / np.sqrt(c // groups * k * k)).astype(np.float32))
        b = graph.add_param("b", (0.1 * rng.standard_normal(p["out"])).astype(np.float32))
        pad = k // 2
        graph.outputs = [graph.op("nn.conv", x, w, b, strides=(p["stride"],) * 2, pads=(pad,) * 4, groups=groups,
                                  activation=p["activation"])]
    else:
        shape = (p["batch"], p["heads"], p["tokens"], p["depth"])
        inputs = [graph.add_input(name, TensorType(shape, "float32")) for name in ("q", "k", "v")]
        graph.outputs = [graph.op("nn.attention", *inputs, causal=p["causal"], scale=None)]
    return graph


KERNEL_PREFIXES = {"dense": ("fused_matmul", "matmul"), "conv": ("fused_conv2d", "conv2d"),
                   "depthwise": ("fused_conv2d", "conv2d"), "attention": ("attention",)}


def case_kernel(case: Case, target):
    """The case's main fused PrimFunc after the CPU target's ``zero`` pipeline (no schedules)."""
    import tvm
    from tvm import tirx

    from ..backends.lower import lower_graph

    module = lower_graph(case_graph(case))
    with target.tvm_target():
        module = tvm.transform.Sequential(target.relax_passes())(module)
    for gvar, func in module.functions_items():
        if isinstance(func, tirx.PrimFunc) and gvar.name_hint.startswith(KERNEL_PREFIXES[case.kind]):
            return gvar.name_hint, func
    raise LookupError(f"no {case.kind} kernel in {[g.name_hint for g in module.get_global_vars()]}")


def _build(func, tvm_target):
    import tvm

    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(module, target=tvm_target)["main"]


def _arguments(func, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal([int(dim) for dim in param.shape]).astype(str(param.dtype)) for param in func.params]


def time_callable(run: Callable[[], Any], repeat: int, min_ms: float) -> float:
    """Median seconds per call over ``repeat`` batches, each at least ``min_ms`` long."""
    run()
    started = time.perf_counter()
    run()
    once = max(time.perf_counter() - started, 1e-7)
    number = max(1, int(min_ms / 1e3 / once))
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            run()
        samples.append((time.perf_counter() - started) / number)
    return statistics.median(samples)


@dataclass
class KernelRow:
    case: Case
    kernel: str
    rule: str | None
    untuned_s: float | None
    scheduled_s: float | None
    max_error: float | None
    matches: bool
    torch_s: dict[int, float | None] = field(default_factory=dict)


def measure_kernel(case: Case, repeat: int, min_ms: float, untuned: bool = True, mcpu: str | None = None) -> KernelRow:
    import tvm

    from ..backends import get_target
    from ..backends.schedules import rewrite_fast_math, schedule_func

    target = get_target("cpu", schedules=False, **({"mcpu": mcpu} if mcpu else {}))
    tvm_target = target.tvm_target()
    name, func = case_kernel(case, target)
    arrays = _arguments(func)
    device = tvm.cpu(0)

    def prepare(f):
        kernel = _build(f, tvm_target)
        tensors = [tvm.runtime.tensor(array, device) for array in arrays]
        return kernel, tensors

    reference_kernel, reference_tensors = prepare(func)
    reference_kernel(*reference_tensors)
    expected = reference_tensors[-1].numpy()
    untuned_s = time_callable(lambda: reference_kernel(*reference_tensors), max(1, repeat // 2), min_ms) if untuned else None

    fast, _ = rewrite_fast_math(func)
    scheduled = schedule_func(fast, tvm_target)
    if scheduled is None:
        return KernelRow(case, name, None, untuned_s, None, None, True)
    kernel, tensors = prepare(scheduled[0])
    kernel(*tensors)
    actual = tensors[-1].numpy()
    error = float(np.max(np.abs(actual - expected)))
    matches = bool(np.allclose(actual, expected, **TOLERANCE))
    scheduled_s = time_callable(lambda: kernel(*tensors), repeat, min_ms)
    return KernelRow(case, name, scheduled[1], untuned_s, scheduled_s, error, matches)


# ---- torch references (in a worker process) -----------------------------------------------------


def _torch_times(cases: list[Case], threads: int, repeat: int, min_ms: float) -> list[float | None]:
    import torch
    from torch.nn import functional as F

    torch.set_num_threads(threads)
    activations = {
        "none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    }
    times: list[float | None] = []
    with torch.inference_mode():
        for case in cases:
            p = case.params
            if case.kind == "dense":
                x = torch.randn(*p["rows"], p["k"])
                w = torch.randn(p["n"], p["k"])
                b = torch.randn(p["n"]) if p["bias"] else None
                act = activations[p["activation"]]
                run = lambda x=x, w=w, b=b, act=act: act(F.linear(x, w, b))  # noqa: E731
            elif case.kind in ("conv", "depthwise"):
                x = torch.randn(1, p["channels"], p["size"], p["size"])
                w = torch.randn(p["out"], p["channels"] // p["groups"], p["kernel"], p["kernel"])
                b = torch.randn(p["out"])
                act = activations[p["activation"]]
                run = lambda x=x, w=w, b=b, act=act, p=p: act(F.conv2d(  # noqa: E731
                    x, w, b, stride=p["stride"], padding=p["kernel"] // 2, groups=p["groups"]))
            else:
                shape = (p["batch"], p["heads"], p["tokens"], p["depth"])
                q, k, v = (torch.randn(shape) for _ in range(3))
                run = lambda q=q, k=k, v=v, p=p: F.scaled_dot_product_attention(q, k, v, is_causal=p["causal"])  # noqa: E731
            times.append(time_callable(run, repeat, min_ms))
    return times


def torch_times(cases: list[Case], threads: int, repeat: int, min_ms: float) -> list[float | None]:
    try:
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            return pool.apply(_torch_times, (cases, threads, repeat, min_ms))
    except Exception as error:  # pragma: no cover - torch missing or broken
        print(f"(no torch reference: {error})")
        return [None] * len(cases)


# ---- models -----------------------------------------------------------------------------------


def measure_model(name: str, runs: int, size: str | None = None, mcpu: str | None = None) -> dict[str, Any]:
    from ..backends import compile_graph
    from ..frontends.torch import capture
    from ..ir import interpret
    from ..passes import PassManager
    from . import zoo

    model, inputs = zoo.build(name, size=size)
    graph = capture(model, inputs, input_names=zoo.input_names(name))
    PassManager("cleanup,fuse", check_numerics=False).run(graph)
    feeds = {value.name: tensor.numpy() for value, tensor in zip(graph.inputs, inputs)}
    expected = interpret(graph, feeds)
    result: dict[str, Any] = {"model": name}
    runners = {}
    for schedules in (False, True):
        started = time.perf_counter()
        compiled = compile_graph(graph, "cpu", schedules=schedules, **({"mcpu": mcpu} if mcpu else {}))
        result[f"build_s[{schedules}]"] = time.perf_counter() - started
        actual = compiled.run(feeds)
        result[f"error[{schedules}]"] = max(float(np.max(np.abs(actual[k] - expected[k]))) for k in expected)
        result[f"matches[{schedules}]"] = all(np.allclose(actual[k], expected[k], **TOLERANCE) for k in expected)
        runners[schedules] = compiled.runner(feeds)
        runners[schedules]()
    samples: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):  # alternate, so drifts of the machine's load hit both alike
        for schedules, run in runners.items():
            started = time.perf_counter()
            run()
            samples[schedules].append(time.perf_counter() - started)
    for schedules in (False, True):
        result[f"median_ms[{schedules}]"] = 1e3 * statistics.median(samples[schedules])
    return result


def _fmt_gflops(case: Case, seconds: float | None) -> str:
    return f"{case.flops() / seconds / 1e9:.1f}" if seconds else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optc.tools.kernel_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="dense,conv,depthwise,attention")
    parser.add_argument("--match", default="", help="only cases whose label contains this")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--min-ms", type=float, default=30.0)
    parser.add_argument("--threads", default="2", help="torch thread counts, comma-separated: a column each "
                        "(TVM uses TVM_NUM_THREADS / all cores)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-untuned", action="store_true", help="skip timing the untuned kernels (slow)")
    parser.add_argument("--zoo", default="", help="comma-separated zoo models to time end to end instead")
    parser.add_argument("--runs", type=int, default=10, help="end-to-end runs per configuration")
    parser.add_argument("--size", default=None, help="zoo size (default: each model's default)")
    parser.add_argument("--mcpu", default=None, help="LLVM CPU for optc (default: the CPU target's choice, "
                        "x86-64-v3 on AVX2 hosts; x86-64-v4 uses AVX-512)")
    args = parser.parse_args(argv)

    if args.zoo:
        print("| model | untuned ms | scheduled ms | speed-up | build s (off/on) | max abs err vs interpreter (off/on) | allclose |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for name in args.zoo.split(","):
            r = measure_model(name, args.runs, args.size, args.mcpu)
            print(f"| {name} | {r['median_ms[False]']:.1f} | {r['median_ms[True]']:.1f} | "
                  f"{r['median_ms[False]'] / r['median_ms[True]']:.1f}x | {r['build_s[False]']:.1f} / {r['build_s[True]']:.1f} | "
                  f"{r['error[False]']:.1e} / {r['error[True]']:.1e} | {r['matches[False]'] and r['matches[True]']} |", flush=True)
        return 0

    kinds = set(args.kinds.split(","))
    cases = [case for case in CASES if case.kind in kinds and args.match in case.label]
    threads = [int(count) for count in args.threads.split(",")] if not args.no_torch else []
    rows = []
    _print_header([])
    for case in cases:
        row = measure_kernel(case, args.repeat, args.min_ms, untuned=not args.no_untuned, mcpu=args.mcpu)
        rows.append(row)
        _print_row(row, [])
    for count in threads:
        for row, seconds in zip(rows, torch_times(cases, count, args.repeat, args.min_ms)):
            row.torch_s[count] = seconds
    if threads:
        print("\nwith torch:\n")
        _print_header(threads)
        for row in rows:
            _print_row(row, threads)
    return 0 if all(row.matches for row in rows) else 1


def _print_header(threads: list[int]) -> None:
    torch = "".join(f" torch {count}T GFLOP/s |" for count in threads)
    print(f"| kind | case | kernel | rule | untuned GFLOP/s | scheduled GFLOP/s |{torch} speed-up | max abs diff |")
    print("| --- | --- | --- | --- | ---: | ---: |" + " ---: |" * len(threads) + " ---: | ---: |")


def _print_row(row: KernelRow, threads: list[int]) -> None:
    case = row.case
    speedup = f"{row.untuned_s / row.scheduled_s:.1f}x" if row.untuned_s and row.scheduled_s else "-"
    error = "-" if row.max_error is None else f"{row.max_error:.1e}" + ("" if row.matches else " MISMATCH")
    torch = "".join(f" {_fmt_gflops(case, row.torch_s.get(count))} |" for count in threads)
    print(f"| {case.kind} | {case.label} | {row.kernel} | {row.rule or 'none'} | {_fmt_gflops(case, row.untuned_s)} | "
          f"{_fmt_gflops(case, row.scheduled_s)} |{torch} {speedup} | {error} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
