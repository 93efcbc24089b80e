"""The token experiment: what pruning and merging tokens cost a small ViT, without retraining.

    python -m optc.tools.digits_tokens                  # merge and prune at 25% and 40% fewer FLOPs
    python -m optc.tools.digits_tokens --flops 0.25 --json bench/tokens-digits.json

A ViT with a class token (1x1 patches: 64 tokens + 1, 4 pre-norm blocks, width 48, 3 heads) is
trained in plain torch on scikit-learn's digits (seeded, 60 epochs: a few minutes on 2 cores), captured with
the test set as a fixed batch, cleaned up and fused. Each row then rewrites the graph with one
``tokens(...)`` pipeline and measures, with the reference interpreter on the 360 test images,
top-1 accuracy and the fraction of images on which the reduced model predicts what the full one
did. FLOPs are counted from the graphs. Nothing is retrained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..errors import OptcError
from ..frontends.torch import capture
from ..ir.graph import Graph
from ..passes import PassManager, parse_pipeline
from .digits import CLASSES, Digits, accuracy, load_data, predict, train
from .zoo import Block

EPOCHS, LEARNING_RATE = 60, 2e-3


class DigitsTokenViT(nn.Module):
    """One token per pixel plus a class token, learned positions, pre-norm blocks, class-token head."""

    def __init__(self, dim: int = 48, depth: int = 4, heads: int = 3, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, 1)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 65, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def train_token_vit(data: Digits, seed: int = 0, epochs: int = EPOCHS) -> DigitsTokenViT:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsTokenViT()
        return train(model, data.train_images, data.train_labels, epochs=epochs, learning_rate=LEARNING_RATE, seed=seed)


def capture_fixed(model: nn.Module, images: np.ndarray) -> Graph:
    """``model`` captured with ``images``' batch fixed (token passes keep shapes static)."""
    graph = capture(model, (torch.from_numpy(images),), input_names=["image"], output_names=["logits"])
    PassManager("cleanup,fuse", check_numerics=False).run(graph)
    return graph


DEFAULT_PIPELINES = (
    "tokens(merge, r=8)",
    "tokens(merge, flops={flops})",
    "tokens(prune, flops={flops})",
    "tokens(prune, flops={flops}, start=1)",
    "tokens(prune, flops={flops}, start=1, fuse=True)",
    "tokens(prune, flops={flops}, score=norm)",
    "tokens(merge, flops={flops}, stages=3)",
    "tokens(prune, flops={flops}, stages=3)",
)


@dataclass(frozen=True)
class Row:
    pipeline: str
    schedule: str
    tokens: list[int]        # tokens leaving each block
    reduction: float         # FLOPs removed, counted from the graphs
    accuracy: float
    accuracy_full: float
    agreement: float         # fraction of test images predicted as the full model does
    seconds: float
    error: str = ""          # why the pipeline could not run (a FLOP target out of reach)


def run_experiment(flops: Sequence[float] = (0.25, 0.4), pipelines: Sequence[str] = DEFAULT_PIPELINES, seed: int = 0,
                   epochs: int = EPOCHS, data: Digits | None = None, model: nn.Module | None = None,
                   progress: Callable[[str], None] = lambda message: None) -> list[Row]:
    data = data or load_data(seed)
    if model is None:
        progress(f"training the ViT for {epochs} epochs")
        model = train_token_vit(data, seed, epochs)
    graph = capture_fixed(model, data.test_images)
    full = predict(graph, data.test_images)
    full_accuracy = accuracy(full, data.test_labels)
    rows: list[Row] = []
    texts = list(dict.fromkeys(text.format(flops=target) for target in flops for text in pipelines))
    for index, text in enumerate(texts):
        progress(f"[{index + 1}/{len(texts)}] {text}")
        start = time.perf_counter()
        reduced = graph.clone()
        passes = parse_pipeline(text)
        try:
            PassManager(passes, check_numerics=False).run(reduced)
        except OptcError as error:
            rows.append(Row(text, "", [], 0.0, float("nan"), full_accuracy, float("nan"), 0.0, str(error)))
            continue
        report = passes[0].last_report
        predictions = predict(reduced, data.test_images)
        rows.append(Row(text, report.schedule, [row.tokens_out for row in report.layers[:-1]], report.reduction,
                        accuracy(predictions, data.test_labels), full_accuracy,
                        float(np.mean(predictions == full)), time.perf_counter() - start))
    return rows


def table(rows: Sequence[Row]) -> str:
    header = f"{'pipeline':<52} {'tokens per block':<18} {'FLOPs-':>7} {'top-1':>7} {'full':>7} {'agree':>7}"
    lines = [header, "-" * len(header)]
    for row in rows:
        if row.error:
            lines.append(f"{row.pipeline:<52} not reachable: {row.error.split(': ', 1)[-1]}")
            continue
        lines.append(f"{row.pipeline:<52} {'/'.join(map(str, row.tokens)):<18} {row.reduction:>7.1%} "
                     f"{row.accuracy:>7.2%} {row.accuracy_full:>7.2%} {row.agreement:>7.1%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optc.tools.digits_tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--flops", default="0.25,0.4", help="comma-separated FLOP reductions (default: 0.25,0.4)")
    parser.add_argument("--pipeline", action="append", help="a tokens(...) pipeline; {flops} is filled in (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        flops = [float(item) for item in args.flops.split(",") if item.strip()]
        rows = run_experiment(flops, args.pipeline or DEFAULT_PIPELINES, seed=args.seed, epochs=args.epochs,
                              progress=lambda message: print(message, file=sys.stderr, flush=True))
    except (OptcError, ValueError) as error:
        print(f"digits_tokens: error: {error}", file=sys.stderr)
        return 2
    print(table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(row) for row in rows], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
