"""Caching benchmarks: DeepCache on a digits U-Net and a KV cache on a GPT-2-style decoder.

    python -m optc.tools.bench_caching                           # both parts
    python -m optc.tools.bench_caching --part unet --train-seconds 120
    python -m optc.tools.bench_caching --part gpt2 --size small --tokens 64

U-Net: a TinyUNet (``tools/denoiser.py``) is trained on scikit-learn's digits for a few minutes
(``--train-seconds``; 0 keeps the seeded random weights), captured, split at ``--depth`` into
full and cached entry points, compiled for the CPU into one artifact, and DDIM-sampled
(``--steps``) from the same seeded noise with every step full and with the cached step between
full steps every 2, 3 and 5 steps (plus a non-uniform schedule and AB extrapolation). It prints
the compiled loop's time and speedup, and the MSE and cosine similarity of the final samples
against the all-full samples.

GPT-2: a transformers GPT-2 (``tools/zoo.py``, random weights with a larger scale so greedy
decoding does not repeat one token) captured at the cache capacity, derived into prefill and
decode entry points, compiled into one artifact; greedy generation of ``--tokens`` tokens with
the caches and by recomputing the whole (padded) sequence each step with the captured graph.
It checks that the tokens are identical and prints the median per-token latency of both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.graph import Graph


# ---- decoder ---------------------------------------------------------------------------------------------

def build_decoder(size: str = "tiny", capacity: int = 24, seed: int = 0, weight_scale: float = 8.0) -> Graph:
    """A zoo GPT-2 captured at sequence ``capacity``, fused; matrices scaled by ``weight_scale``.

    transformers initializes weights with std 0.02, which makes a random model repeat one
    token; scaling the matrices gives greedy decoding varied tokens, so a cache bug shows.
    """
    import torch

    from ..frontends.torch import capture
    from ..passes import PassManager
    from . import zoo

    positions = max(zoo.options("gpt2", size)["positions"], capacity)
    model, inputs = zoo.build("gpt2", seed, size=size, sequence=capacity, positions=positions)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "wpe" not in name:
                parameter.mul_(weight_scale)
    graph = capture(model, inputs, input_names=zoo.input_names("gpt2"), output_names=zoo.output_names("gpt2"))
    PassManager("cleanup,fuse").run(graph)
    return graph


def kv_check_feeds(split: Any) -> dict[str, dict[str, np.ndarray]]:
    """In-range feeds for compile_entries' check of the prefill and decode entry points."""
    feeds = {}
    for name, graph in split.entries.items():
        tokens = graph.inputs[0]
        entry_feeds = {tokens.name: np.zeros(tokens.shape, tokens.dtype),
                       "position": np.array([split.info["prompt_length"] if name == "decode" else 0], np.int64)}
        rng = np.random.default_rng(0)
        for value in graph.inputs[2:]:  # the caches: float, or int8 with calibrated scales
            cache = rng.integers(-127, 128, value.shape) if value.dtype == "int8" else rng.standard_normal(value.shape)
            entry_feeds[value.name] = cache.astype(value.dtype)
        feeds[name] = entry_feeds
    return feeds


def greedy_full(model: Any, prompt: np.ndarray, new_tokens: int, capacity: int) -> tuple[list[int], list[float]]:
    """Greedy decoding by running the whole padded sequence each step; (tokens, seconds per token)."""
    ids = np.zeros((1, capacity), np.int64)
    ids[0, : prompt.shape[1]] = prompt
    length, tokens, seconds = prompt.shape[1], [], []
    for _ in range(new_tokens):
        mask = (np.arange(capacity) < length).astype(np.int64)[None]
        started = time.perf_counter()
        logits = model.run({"input_ids": ids, "attention_mask": mask})["logits"]
        token = int(logits[0, length - 1].argmax())
        seconds.append(time.perf_counter() - started)
        tokens.append(token)
        if length < capacity:
            ids[0, length] = token
        length += 1
    return tokens, seconds


def greedy_cached(session: Any, prompt: np.ndarray, new_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy decoding with the prefill and decode entry points; (tokens, seconds per token)."""
    length = prompt.shape[1]
    started = time.perf_counter()
    logits = session.run("prefill", {"input_ids": prompt, "position": np.zeros(1, np.int64)})["logits"]
    tokens, seconds = [int(logits[0, length - 1].argmax())], [time.perf_counter() - started]
    for position in range(length, length + new_tokens - 1):
        started = time.perf_counter()
        logits = session.run("decode", {"input_ids": np.array([[tokens[-1]]], np.int64),
                                        "position": np.array([position], np.int64)})["logits"]
        tokens.append(int(logits[0, 0].argmax()))
        seconds.append(time.perf_counter() - started)
    return tokens, seconds


def bench_decoder(size: str, new_tokens: int, prompt_length: int, seed: int = 0,
                  cache_dtype: str = "float32") -> dict[str, Any]:
    from .. import compiler
    from ..backends import compile_graph
    from ..passes.caching import derive_kv_cache

    capacity = prompt_length + new_tokens
    graph = build_decoder(size, capacity, seed)
    split = derive_kv_cache(graph, prompt_length=prompt_length, cache_dtype=cache_dtype)
    with tempfile.TemporaryDirectory() as scratch:
        artifact = compiler.compile_entries(split.entries, state=split.state, passes="cleanup",
                                            check_feeds=kv_check_feeds(split), output=Path(scratch) / "kv")
        full = compile_graph(graph)
        vocabulary = int(graph.params[next(v for v in graph.params if v.name.endswith("lm_head.weight"))].shape[0])
        prompt = np.random.default_rng(seed).integers(0, vocabulary, (1, prompt_length)).astype(np.int64)
        greedy_cached(artifact.session(), prompt, 2)  # warm up both
        greedy_full(full, prompt, 2, capacity)
        cached_tokens, cached_seconds = greedy_cached(artifact.session(), prompt, new_tokens)
        full_tokens, full_seconds = greedy_full(full, prompt, new_tokens, capacity)
    return {
        "size": size, "capacity": capacity, "prompt_length": prompt_length, "new_tokens": new_tokens,
        "cache_dtype": cache_dtype, "identical_tokens": cached_tokens == full_tokens,
        "matching_tokens": sum(a == b for a, b in zip(cached_tokens, full_tokens)),
        "distinct_tokens": len(set(cached_tokens)),
        "decode_ms_median": 1e3 * float(np.median(cached_seconds[1:])),
        "prefill_ms": 1e3 * cached_seconds[0],
        "full_recompute_ms_median": 1e3 * float(np.median(full_seconds)),
        "flops": split.info["flops"],
    }


# ---- denoiser ----------------------------------------------------------------------------------------------

def bench_denoiser(train_seconds: float, steps: int, depth: int, samples: int, intervals: Sequence[int],
                   seed: int = 0) -> dict[str, Any]:
    from .. import compiler
    from ..passes.caching import CachedDenoiser, nonuniform_schedule, split_deep_cache, uniform_schedule
    from .denoiser import build_unet, capture_unet, ddim_sample, train_on_digits

    model = build_unet(seed)
    training = train_on_digits(model, train_seconds, seed) if train_seconds > 0 else {"steps": 0}
    graph = capture_unet(model)
    split = split_deep_cache(graph, depth)
    with tempfile.TemporaryDirectory() as scratch:
        artifact = compiler.compile_entries(split.entries, state=split.state, passes="cleanup",
                                            output=Path(scratch) / "unet")
    noises = np.random.default_rng(seed).standard_normal((samples, 1, 1, 8, 8)).astype(np.float32)
    schedules: dict[str, list[bool]] = {"full": uniform_schedule(steps, 1)}
    for interval in intervals:
        schedules[f"interval {interval}"] = uniform_schedule(steps, interval)
    full_count = sum(schedules[f"interval {intervals[-1]}"])
    schedules[f"non-uniform ({full_count} full)"] = nonuniform_schedule(steps, full_count)
    schedules[f"interval {intervals[-1]} + AB"] = schedules[f"interval {intervals[-1]}"]

    def sample_all(flags: list[bool], extrapolate: bool) -> tuple[np.ndarray, float]:
        outputs, seconds = [], 0.0
        for noise in noises:
            denoise = CachedDenoiser(artifact.session(), extrapolate=extrapolate)
            started = time.perf_counter()
            outputs.append(ddim_sample(lambda i, x, t: denoise(i, flags[i], {"x": x, "t": t})["eps"], noise, steps))
            seconds += time.perf_counter() - started
        return np.stack(outputs), seconds

    step_ms = {entry: 1e3 * _median_call_seconds(artifact.session(), entry, noises[0]) for entry in ("full", "cached")}
    sample_all(schedules["full"], False)  # warm-up
    results, reference = [], None
    for _round in range(3):  # interleaved rounds; the fastest counts (the machine may be shared)
        for name, flags in schedules.items():
            images, seconds = sample_all(flags, name.endswith("AB"))
            if name == "full":
                reference = images
            row = next((item for item in results if item["schedule"] == name), None)
            if row is None:
                row = {"schedule": name, "full_steps": sum(flags), "seconds": seconds, "images": images}
                results.append(row)
            row["seconds"] = min(row["seconds"], seconds)
    base = results[0]["seconds"]
    for row in results:
        images = row.pop("images").reshape(samples, -1).astype(np.float64)
        want = reference.reshape(samples, -1).astype(np.float64)
        row["speedup"] = base / row["seconds"]
        row["mse"] = float(np.mean((images - want) ** 2))
        cosines = np.sum(images * want, 1) / (np.linalg.norm(images, axis=1) * np.linalg.norm(want, axis=1))
        row["cosine"] = float(np.mean(cosines))
    return {"training": training, "depth": depth, "steps": steps, "samples": samples,
            "flops": split.info["flops"], "step_ms": step_ms, "rows": results}


def _median_call_seconds(session: Any, entry: str, noise: np.ndarray, calls: int = 30) -> float:
    feeds = {"x": noise, "t": np.array([500.0], np.float32)}
    session.run("full", feeds)  # the cached step needs a stored feature
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(entry, feeds)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


# ---- command line ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optc.tools.bench_caching", description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "unet", "gpt2"), default="all")
    parser.add_argument("--train-seconds", type=float, default=120.0, help="U-Net training time (0: random weights)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--depth", type=int, default=1, help="skip branch to cache (1 = outermost)")
    parser.add_argument("--samples", type=int, default=8, help="images sampled per schedule")
    parser.add_argument("--size", default="small", help="zoo gpt2 size (tiny, small, full)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate")
    parser.add_argument("--prompt", type=int, default=8, help="prompt length (prefill tokens)")
    parser.add_argument("--cache-dtype", default="float32", choices=("float32", "int8"), help="KV cache dtype")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if args.part in ("all", "unet"):
        unet = bench_denoiser(args.train_seconds, args.steps, args.depth, args.samples, (2, 3, 5))
        results["unet"] = unet
        flops = unet["flops"]
        print(f"U-Net DDIM, {args.steps} steps, {args.samples} samples, depth {args.depth}; trained "
              f"{unet['training'].get('steps', 0)} steps; FLOPs full {flops['full'] / 1e6:.2f} M, "
              f"cached {flops['cached'] / 1e6:.2f} M; one step: full {unet['step_ms']['full']:.2f} ms, "
              f"cached {unet['step_ms']['cached']:.2f} ms")
        print(f"  {'schedule':<24} {'full steps':>10} {'loop s':>8} {'speedup':>8} {'MSE':>10} {'cosine':>8}")
        for row in unet["rows"]:
            print(f"  {row['schedule']:<24} {row['full_steps']:>10} {row['seconds']:>8.3f} {row['speedup']:>7.2f}x "
                  f"{row['mse']:>10.2e} {row['cosine']:>8.5f}")
    if args.part in ("all", "gpt2"):
        gpt2 = bench_decoder(args.size, args.tokens, args.prompt, cache_dtype=args.cache_dtype)
        results["gpt2"] = gpt2
        print(f"GPT-2 ({args.size}) greedy, prompt {args.prompt}, {args.tokens} new tokens, capacity {gpt2['capacity']}, "
              f"{args.cache_dtype} caches:")
        print(f"  identical tokens: {gpt2['identical_tokens']} ({gpt2['matching_tokens']}/{args.tokens} match, "
              f"{gpt2['distinct_tokens']} distinct)")
        print(f"  per token: KV-cache decode {gpt2['decode_ms_median']:.2f} ms (prefill {gpt2['prefill_ms']:.2f} ms), "
              f"full recompute {gpt2['full_recompute_ms_median']:.2f} ms "
              f"({gpt2['full_recompute_ms_median'] / gpt2['decode_ms_median']:.1f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float) + "\n")
    exact = results.get("gpt2", {}).get("cache_dtype") != "int8"
    return 0 if results.get("gpt2", {}).get("identical_tokens", True) or not exact else 1


if __name__ == "__main__":
    sys.exit(main())
