"""The digits experiment: what slicing costs in accuracy, and what a few seconds of fine-tuning win back.

    python -m optc.tools.digits                        # both models, 30% and 50% fewer FLOPs
    python -m optc.tools.digits --model vit --flops 0.3 --prune drop_blocks

Two small models are trained in plain torch on scikit-learn's ``load_digits`` (8x8 images, 10
classes, a seeded stratified split): a CNN (conv-bn-relu x3, global average pool, linear) and a
tiny ViT (2x2 patches, pre-norm blocks, mean-pooled tokens). Each is captured into optc with a
symbolic batch, cleaned up and fused, then, per FLOP reduction:

1. pruned through the pipeline (``slice(flops=0.3)``, or ``drop_blocks(flops=0.3)``),
2. measured on the test set with the reference interpreter (accuracy without training),
3. fine-tuned for a few epochs through ``to_torch`` (the GraphModule's parameters),
4. brought back twice, by copying the weights into the graph (``with_module_params``) and by
   capturing the GraphModule again, and measured again; the two must agree.

The table reports per model and reduction: the FLOP reduction reached, params, test accuracy
before pruning, after it, after fine-tuning, and the fraction of test images on which the
fine-tuned model predicts what the unpruned one did.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import OptcError
from ..frontends.torch import capture
from ..frontends.torch.export import to_torch, with_module_params
from ..ir.graph import Graph
from ..ir.interpret import interpret
from ..passes import PassManager, parse_pipeline
from ..passes.blocks import DropBlocks
from ..passes.pipeline import Pass
from .zoo import Block

CLASSES = 10


# ---- data --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Digits:
    """Standardized 8x8 images as (N, 1, 8, 8) float32 and int64 labels, split into train and test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_data(seed: int = 0, test_fraction: float = 0.2) -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), values 0..16
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=test_fraction, random_state=seed,
                                                        stratify=labels)
    mean, std = float(train_x.mean()), float(train_x.std())
    return Digits((train_x - mean) / std, train_y, (test_x - mean) / std, test_y)


# ---- models ------------------------------------------------------------------------------------------------

class DigitsCNN(nn.Module):
    """conv-bn-relu x3 (16, 32, 32 channels; the second halves the image), global average pool,
    linear: about 15k parameters."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for index, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, 2 if index == 1 else 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class DigitsViT(nn.Module):
    """A tiny ViT: 2x2 patches (16 tokens), learned positions, pre-norm blocks (zoo's), mean-pooled
    tokens, linear head. No class token, so nothing expands to the symbolic batch."""

    def __init__(self, dim: int = 32, depth: int = 3, heads: int = 2, patch: int = 2, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (8 // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.head(self.norm(self.blocks(x)).mean(1))


MODELS: dict[str, Callable[[], nn.Module]] = {"cnn": DigitsCNN, "vit": DigitsViT}
# epochs and learning rates that train each model in seconds on a laptop CPU
TRAINING: dict[str, tuple[int, float]] = {"cnn": (30, 3e-3), "vit": (60, 3e-3)}


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int, learning_rate: float,
          seed: int = 0, batch_size: int = 64) -> nn.Module:
    """A plain Adam loop with seeded shuffling; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
        schedule.step()
    return model.eval()


def train_model(name: str, data: Digits, seed: int = 0, epochs: int | None = None) -> nn.Module:
    """A freshly initialized, seeded ``MODELS[name]`` trained on the training split."""
    if name not in MODELS:
        raise OptcError(f"unknown digits model '{name}'; known: {', '.join(MODELS)}")
    default_epochs, learning_rate = TRAINING[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[name]()
        return train(model, data.train_images, data.train_labels, epochs=default_epochs if epochs is None else epochs,
                     learning_rate=learning_rate, seed=seed)


# ---- the optc side ------------------------------------------------------------------------------------------

def capture_graph(model: nn.Module, example: np.ndarray) -> Graph:
    """``model`` captured with a symbolic batch, cleaned up and fused."""
    graph = capture(model, (torch.from_numpy(example[:2]),), input_names=["image"], output_names=["logits"], dynamic=True)
    PassManager("cleanup,fuse", check_numerics=False).run(graph)
    return graph


def predict(graph: Graph, images: np.ndarray) -> np.ndarray:
    """Class predictions of the reference interpreter."""
    logits = interpret(graph, {graph.inputs[0].name: images})[graph.outputs[0].name]
    return np.argmax(logits, axis=-1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


Pruner = Callable[[float, dict[str, np.ndarray]], Sequence[Pass]]

PRUNERS: dict[str, Pruner] = {
    # channel and head slicing to a FLOP budget (passes/slicing)
    "slice": lambda flops, calib: parse_pipeline(f"slice(flops={flops})"),
    # whole residual blocks, scored on training images
    "drop_blocks": lambda flops, calib: [DropBlocks(flops=flops, calib=calib)],
}


def prune(graph: Graph, flops: float, method: str = "slice", calib: dict[str, np.ndarray] | None = None) -> Graph:
    """A copy of ``graph`` with ``flops`` (a fraction) of its FLOPs removed by ``method``."""
    if method not in PRUNERS:
        raise OptcError(f"unknown pruning method '{method}'; known: {', '.join(PRUNERS)}")
    pruned = graph.clone()
    if flops > 0:
        PassManager(PRUNERS[method](flops, calib or {}), check_numerics=False).run(pruned)
    return pruned


def fine_tune(graph: Graph, data: Digits, *, epochs: int = 10, learning_rate: float = 3e-3,
              seed: int = 0) -> tuple[Graph, torch.fx.GraphModule]:
    """Train ``graph``'s weights through ``to_torch``; returns the graph with the trained weights
    copied back, and the trained GraphModule."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = to_torch(graph)
        train(module, data.train_images, data.train_labels, epochs=epochs, learning_rate=learning_rate, seed=seed)
    return with_module_params(graph, module), module


# ---- the experiment ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    model: str
    target: float  # the FLOP reduction asked for
    reduction: float  # the FLOP reduction reached
    params: int
    accuracy_before: float
    accuracy_pruned: float
    accuracy_tuned: float
    agreement: float  # fraction of test images where the fine-tuned model predicts what the unpruned one did
    roundtrip_agreement: float  # weights copied back vs the GraphModule captured again: 1.0 when the hand-off is exact
    seconds: float


def run_experiment(name: str, reductions: Sequence[float] = (0.3, 0.5), *, method: str = "slice", seed: int = 0,
                   epochs: int | None = None, tune_epochs: int = 10, tune_learning_rate: float = 3e-3,
                   data: Digits | None = None, model: nn.Module | None = None) -> list[Row]:
    """Train (or take) ``name``'s model, then prune, measure, fine-tune and measure per reduction."""
    data = data or load_data(seed)
    model = model if model is not None else train_model(name, data, seed, epochs)
    graph = capture_graph(model, data.train_images)
    original = predict(graph, data.test_images)
    calib = {graph.inputs[0].name: data.train_images[:256]}
    rows = []
    for target in reductions:
        start = time.perf_counter()
        pruned = prune(graph, target, method, calib)
        pruned_predictions = predict(pruned, data.test_images)
        tuned, module = fine_tune(pruned, data, epochs=tune_epochs, learning_rate=tune_learning_rate, seed=seed)
        tuned_predictions = predict(tuned, data.test_images)
        recaptured = capture_graph(module, data.train_images)
        rows.append(Row(
            model=name, target=target, reduction=1.0 - pruned.flops() / graph.flops(), params=pruned.param_count(),
            accuracy_before=accuracy(original, data.test_labels),
            accuracy_pruned=accuracy(pruned_predictions, data.test_labels),
            accuracy_tuned=accuracy(tuned_predictions, data.test_labels),
            agreement=float(np.mean(tuned_predictions == original)),
            roundtrip_agreement=float(np.mean(predict(recaptured, data.test_images) == tuned_predictions)),
            seconds=time.perf_counter() - start,
        ))
    return rows


def table(rows: Sequence[Row]) -> str:
    header = (f"{'model':<6} {'target':>6} {'FLOPs-':>7} {'params':>8} {'acc before':>10} {'pruned':>7} "
              f"{'tuned':>7} {'agree':>6} {'roundtrip':>9} {'sec':>5}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.model:<6} {row.target:>6.0%} {row.reduction:>7.1%} {row.params:>8,} {row.accuracy_before:>10.2%} "
                     f"{row.accuracy_pruned:>7.2%} {row.accuracy_tuned:>7.2%} {row.agreement:>6.1%} "
                     f"{row.roundtrip_agreement:>9.1%} {row.seconds:>5.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optc.tools.digits", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn,vit", help="comma-separated: cnn, vit (default: both)")
    parser.add_argument("--flops", default="0.3,0.5", help="comma-separated FLOP reductions (default: 0.3,0.5)")
    parser.add_argument("--prune", default="slice", choices=sorted(PRUNERS), help="how to remove FLOPs (default: slice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: per model)")
    parser.add_argument("--tune-epochs", type=int, default=10, help="fine-tuning epochs (default: 10)")
    parser.add_argument("--tune-lr", type=float, default=3e-3, help="fine-tuning learning rate (default: 3e-3)")
    args = parser.parse_args(argv)
    try:
        reductions = [float(item) for item in args.flops.split(",") if item.strip()]
        data = load_data(args.seed)
        rows: list[Row] = []
        for name in [item.strip() for item in args.model.split(",") if item.strip()]:
            rows += run_experiment(name, reductions, method=args.prune, seed=args.seed, epochs=args.epochs,
                                   tune_epochs=args.tune_epochs, tune_learning_rate=args.tune_lr, data=data)
    except (OptcError, ValueError) as error:
        print(f"digits: error: {error}", file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
