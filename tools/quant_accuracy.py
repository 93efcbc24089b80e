"""What quantization costs on real data: top-1 on digits (CNN, ViT), perplexity of a char-level LM.

    python -m optc.tools.quant_accuracy                      # all three models, every scheme
    python -m optc.tools.quant_accuracy --model lm --group 64

Models (seeded, trained with plain torch; about a minute each on a busy 2-core machine):

* ``cnn`` / ``vit``: ``tools/digits.py``'s models on scikit-learn's digits, test split top-1;
* ``lm``: a character-level language model (embedding of a 32-character context, two GELU
  layers, a softmax over the characters) trained on Python's own source text (stdlib modules
  that ship with every Python), perplexity on a held-out tail of the text.

Each is captured into optc, cleaned up and fused, then quantized with every scheme: float,
``quant(int8)`` (static, calibrated on training samples: 256 images, 2048 LM windows, which
GPTQ also uses), ``quant(int8,dynamic)``,
``quant(w8)``, ``quant(w4,group=G)`` (RTN) and ``quant(w4,gptq,group=G)``, and measured with the
reference interpreter (its integer semantics are what the compiled kernels compute bit for bit).
Columns: the metric, the relative L2 output error against float on the test data, and the
weight bytes the artifact stores (all params) with the ratio to float.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import OptcError
from ..frontends.torch import capture
from ..ir.graph import Graph
from ..ir.interpret import interpret
from ..passes import PassManager
from ..passes.quant import Quantize
from ..passes.quant.mixed import relative_error
from . import digits

CONTEXT = 32
CORPUS_MODULES = ("argparse.py", "textwrap.py", "functools.py", "dataclasses.py")


# ---- the char-level language model ---------------------------------------------------------------------

def load_corpus() -> str:
    """Python's own source text: a few stdlib modules, read from this interpreter's install."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in CORPUS_MODULES:
        path = stdlib / name
        if path.is_file():
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    if not parts:
        raise OptcError(f"no corpus: none of {CORPUS_MODULES} found in {stdlib}")
    return "\n".join(parts)


@dataclass(frozen=True)
class Corpus:
    vocabulary: str
    train: np.ndarray  # int64 character ids
    test: np.ndarray

    def windows(self, ids: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` (context, next character) pairs at seeded positions."""
        starts = np.random.default_rng(seed).integers(0, len(ids) - CONTEXT - 1, count)
        contexts = np.stack([ids[start : start + CONTEXT] for start in starts])
        return contexts.astype(np.int64), ids[starts + CONTEXT].astype(np.int64)


def make_corpus(test_fraction: float = 0.1) -> Corpus:
    text = load_corpus()
    vocabulary = "".join(sorted(set(text)))
    index = {char: position for position, char in enumerate(vocabulary)}
    ids = np.array([index[char] for char in text], dtype=np.int64)
    split = int(len(ids) * (1 - test_fraction))
    return Corpus(vocabulary, ids[:split], ids[split:])


class CharLM(nn.Module):
    """Embedding of a fixed context, flattened, two GELU layers, logits over the vocabulary."""

    def __init__(self, vocabulary: int, embedding: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, embedding)
        self.fc1 = nn.Linear(CONTEXT * embedding, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, vocabulary)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        x = self.embed(context).flatten(1)
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def train_lm(corpus: Corpus, seed: int = 0, steps: int = 1500, batch: int = 128) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CharLM(len(corpus.vocabulary))
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        contexts, targets = corpus.windows(corpus.train, steps * batch, seed)
        for step in range(steps):
            part = slice(step * batch, (step + 1) * batch)
            optimizer.zero_grad()
            F.cross_entropy(model(torch.from_numpy(contexts[part])), torch.from_numpy(targets[part])).backward()
            optimizer.step()
    return model.eval()


def perplexity(logits: np.ndarray, targets: np.ndarray) -> float:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(np.exp(-np.mean(log_probs[np.arange(len(targets)), targets])))


# ---- the experiment -------------------------------------------------------------------------------------

@dataclass
class Task:
    """A trained, captured model with its data: calibration feeds, test inputs, and the metric."""

    name: str
    graph: Graph
    calibration: list[dict[str, np.ndarray]]
    test_inputs: np.ndarray
    metric_name: str
    metric: Callable[[np.ndarray], float]  # logits on the test inputs -> the number


def digits_task(name: str, seed: int, epochs: int | None) -> Task:
    data = digits.load_data(seed)
    model = digits.train_model(name, data, seed, epochs)
    graph = digits.capture_graph(model, data.train_images)
    feeds = [{graph.inputs[0].name: data.train_images[start : start + 64]} for start in range(0, 256, 64)]
    return Task(name, graph, feeds, data.test_images, "top-1",
                lambda logits: float(np.mean(np.argmax(logits, -1) == data.test_labels)))


def lm_task(seed: int, steps: int) -> Task:
    corpus = make_corpus()
    model = train_lm(corpus, seed, steps)
    # GPTQ's Hessian for fc1 (K = 1024) needs more rows than K: 2048 calibration windows
    train_contexts, _ = corpus.windows(corpus.train, 2048, seed + 1)
    test_contexts, test_targets = corpus.windows(corpus.test, 4000, seed + 2)
    graph = capture(model, (torch.from_numpy(train_contexts[:2]),), input_names=["context"], output_names=["logits"],
                    dynamic=True)
    PassManager("cleanup,fuse", check_numerics=False).run(graph)
    feeds = [{"context": train_contexts[start : start + 256]} for start in range(0, 2048, 256)]
    return Task("lm", graph, feeds, test_contexts, "perplexity", lambda logits: perplexity(logits, test_targets))


def schemes(group: int) -> dict[str, dict]:
    return {
        "float": {},
        "int8 static": {"mode": "int8"},
        "int8 dynamic": {"mode": "int8", "method": "dynamic"},
        "w8": {"mode": "w8", "group": group},
        f"w4 RTN g{group}": {"mode": "w4", "group": group},
        f"w4 GPTQ g{group}": {"mode": "w4", "method": "gptq", "group": group},
    }


@dataclass(frozen=True)
class Row:
    model: str
    scheme: str
    metric_name: str
    metric: float
    output_error: float
    weight_bytes: int
    ratio: float
    seconds: float


def logits_of(graph: Graph, inputs: np.ndarray, batch: int = 500) -> np.ndarray:
    name = graph.inputs[0].name
    parts = [interpret(graph, {name: inputs[start : start + batch]})[graph.outputs[0].name]
             for start in range(0, len(inputs), batch)]
    return np.concatenate(parts)


def evaluate(task: Task, group: int) -> list[Row]:
    reference = logits_of(task.graph, task.test_inputs)
    rows = []
    for label, options in schemes(group).items():
        start = time.perf_counter()
        graph = task.graph.clone()
        if options:
            PassManager([Quantize(**options, feeds=task.calibration)], check_numerics=False).run(graph)
        logits = logits_of(graph, task.test_inputs)
        rows.append(Row(task.name, label, task.metric_name, task.metric(logits),
                        relative_error([{"y": reference}], [{"y": logits}]), graph.param_bytes(),
                        task.graph.param_bytes() / graph.param_bytes(), time.perf_counter() - start))
    return rows


def table(rows: Sequence[Row]) -> str:
    header = f"{'model':<5} {'scheme':<14} {'metric':<10} {'value':>8} {'out err':>8} {'weight bytes':>13} {'x smaller':>9} {'sec':>5}"
    lines = [header, "-" * len(header)]
    for row in rows:
        value = f"{row.metric:.2%}" if row.metric_name == "top-1" else f"{row.metric:.3f}"
        lines.append(f"{row.model:<5} {row.scheme:<14} {row.metric_name:<10} {value:>8} {row.output_error:>8.4f} "
                     f"{row.weight_bytes:>13,} {row.ratio:>9.2f} {row.seconds:>5.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optc.tools.quant_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn,vit,lm", help="comma-separated: cnn, vit, lm (default: all)")
    parser.add_argument("--group", type=int, default=128, help="weight-only group size (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="digits training epochs (default: per model)")
    parser.add_argument("--lm-steps", type=int, default=1500, help="LM training steps (default 1500)")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    try:
        for name in [item.strip() for item in args.model.split(",") if item.strip()]:
            if name not in ("cnn", "vit", "lm"):
                raise OptcError(f"unknown model '{name}'; use cnn, vit, lm")
            task = lm_task(args.seed, args.lm_steps) if name == "lm" else digits_task(name, args.seed, args.epochs)
            rows += evaluate(task, args.group)
            print(table([row for row in rows if row.model == name]), flush=True)
    except (OptcError, ValueError) as error:
        print(f"quant_accuracy: error: {error}", file=sys.stderr)
        return 2
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
