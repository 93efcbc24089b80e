"""Reference models for examples, tests and benchmarks, written in plain torch.

Every model is built from a seed (no downloads): convolutional nets get seeded weights and
batch-norm statistics calibrated on seeded random images, so folding batch norm is not a no-op;
the transformer language models come from ``transformers`` configs with random weights.

    model, inputs = zoo.build("resnet18")            # real size: 224x224, 1000 classes
    model, inputs = zoo.build("gpt2", size="tiny")   # what the tests use
    zoo.export_onnx("resnet18", "resnet18.onnx")      # the same model for ONNX Runtime

Each model has named sizes (``zoo.sizes(name)``); the default of the convolutional nets is the
real architecture, the default of the transformers is small enough to compile in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# ---- ResNet-18 -------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (BasicBlock, layers 2-2-2-2); ``width`` scales every stage."""

    def __init__(self, num_classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        in_channels = width
        for index, channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if index == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels, 1)))
            in_channels = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- MobileNetV2 -----------------------------------------------------------------------------------


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width multiplier, channels rounded to multiples of 8)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        in_channels = _make_divisible(32 * width_mult)
        last_channels = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, in_channels, stride=2)]
        for expand, channels, repeats, stride in self.SETTINGS:
            out_channels = _make_divisible(channels * width_mult)
            for index in range(repeats):
                features.append(InvertedResidual(in_channels, out_channels, stride if index == 0 else 1, expand))
                in_channels = out_channels
        features.append(ConvBNReLU6(in_channels, last_channels, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---- ViT -------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # written out rather than F.scaled_dot_product_attention so the graph shows the pattern
        # the attention-fusion and token-pruning passes look for (timm's non-fused path)
        attn = (q * (dim // self.heads) ** -0.5) @ k.transpose(-2, -1)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A timm-style ViT: conv patch embedding, class token, learned positions, pre-norm blocks."""

    def __init__(self, image_size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
                 mlp_ratio: float = 4.0, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (image_size // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# ---- transformers language models -------------------------------------------------------------------


class CausalLMLogits(nn.Module):
    """A transformers causal LM that returns only its logits (no cache, no output dict)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class EncoderHiddenStates(nn.Module):
    """A transformers encoder that returns only its last hidden state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _language_inputs(generator: torch.Generator, batch: int, sequence: int, vocab: int) -> tuple[torch.Tensor, ...]:
    input_ids = torch.randint(0, vocab, (batch, sequence), generator=generator, dtype=torch.int64)
    attention_mask = torch.ones(batch, sequence, dtype=torch.int64)
    if sequence > 2:
        attention_mask[:, -(sequence // 4):] = 0  # padded tail, so the mask matters
    return input_ids, attention_mask


def _gpt2(options: dict[str, Any], generator: torch.Generator) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = options["vocab"]
    config = GPT2Config(
        n_layer=options["layers"], n_embd=options["dim"], n_head=options["heads"], vocab_size=vocab,
        n_positions=options["positions"], bos_token_id=vocab - 1, eos_token_id=vocab - 1, use_cache=False,
    )
    config._attn_implementation = "eager"
    model = CausalLMLogits(GPT2LMHeadModel(config))
    return model, _language_inputs(generator, options["batch"], options["sequence"], vocab)


def _bert(options: dict[str, Any], generator: torch.Generator) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from transformers import BertConfig, BertModel

    vocab = options["vocab"]
    config = BertConfig(
        num_hidden_layers=options["layers"], hidden_size=options["dim"], num_attention_heads=options["heads"],
        intermediate_size=4 * options["dim"], vocab_size=vocab, max_position_embeddings=options["positions"],
    )
    config._attn_implementation = "eager"
    model = EncoderHiddenStates(BertModel(config, add_pooling_layer=False))
    return model, _language_inputs(generator, options["batch"], options["sequence"], vocab)


# ---- the registry of models ------------------------------------------------------------------------


def _calibrate_batch_norm(model: nn.Module, generator: torch.Generator, shape: tuple[int, ...]) -> None:
    """Give batch norms non-trivial affine params and running statistics of seeded random images."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(1.0 + 0.1 * torch.randn(norm.weight.shape, generator=generator))
            norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=generator))
            norm.momentum = None  # cumulative average over the calibration batches
            norm.reset_running_stats()
        model.train()
        for _ in range(2):
            model(torch.randn(shape, generator=generator))
        for norm in norms:
            norm.momentum = 0.1
    model.eval()


def _image_model(factory: Callable[[dict[str, Any]], nn.Module], calibrate: bool):
    def build(options: dict[str, Any], generator: torch.Generator) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        model = factory(options)
        size = options["image_size"]
        if calibrate:
            _calibrate_batch_norm(model, generator, (max(options["batch"], 2), 3, size, size))
        return model, (torch.randn((options["batch"], 3, size, size), generator=generator),)

    return build


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[dict[str, Any], torch.Generator], tuple[nn.Module, tuple[torch.Tensor, ...]]]
    sizes: dict[str, dict[str, Any]]
    default_size: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


_MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(
        _image_model(lambda o: ResNet18(o["classes"], o["width"]), calibrate=True),
        {
            "full": {"width": 64, "image_size": 224, "classes": 1000, "batch": 1},
            "tiny": {"width": 8, "image_size": 32, "classes": 10, "batch": 1},
        },
        "full", ("input",), ("logits",),
    ),
    "mobilenetv2": ModelSpec(
        _image_model(lambda o: MobileNetV2(o["classes"], o["width_mult"]), calibrate=True),
        {
            "full": {"width_mult": 1.0, "image_size": 224, "classes": 1000, "batch": 1},
            "tiny": {"width_mult": 0.25, "image_size": 32, "classes": 10, "batch": 1},
        },
        "full", ("input",), ("logits",),
    ),
    "vit": ModelSpec(
        _image_model(
            lambda o: VisionTransformer(o["image_size"], o["patch"], o["dim"], o["depth"], o["heads"], 4.0, o["classes"]),
            calibrate=False,
        ),
        {
            # ViT-Tiny (timm vit_tiny_patch16_224) dims; "small" keeps 4 of its 12 blocks
            "full": {"image_size": 224, "patch": 16, "dim": 192, "depth": 12, "heads": 3, "classes": 1000, "batch": 1},
            "small": {"image_size": 224, "patch": 16, "dim": 192, "depth": 4, "heads": 3, "classes": 1000, "batch": 1},
            "tiny": {"image_size": 32, "patch": 8, "dim": 32, "depth": 2, "heads": 2, "classes": 10, "batch": 1},
        },
        "small", ("input",), ("logits",),
    ),
    "gpt2": ModelSpec(
        _gpt2,
        {
            # GPT-2 small's architecture (124M parameters)
            "full": {"layers": 12, "dim": 768, "heads": 12, "vocab": 50257, "positions": 1024, "batch": 1, "sequence": 128},
            "small": {"layers": 4, "dim": 256, "heads": 4, "vocab": 8192, "positions": 256, "batch": 1, "sequence": 64},
            "tiny": {"layers": 2, "dim": 64, "heads": 2, "vocab": 1000, "positions": 64, "batch": 1, "sequence": 16},
        },
        "small", ("input_ids", "attention_mask"), ("logits",),
    ),
    "bert": ModelSpec(
        _bert,
        {
            # BERT-base's architecture
            "full": {"layers": 12, "dim": 768, "heads": 12, "vocab": 30522, "positions": 512, "batch": 1, "sequence": 128},
            "small": {"layers": 4, "dim": 256, "heads": 4, "vocab": 8192, "positions": 256, "batch": 1, "sequence": 64},
            "tiny": {"layers": 2, "dim": 64, "heads": 2, "vocab": 1000, "positions": 64, "batch": 1, "sequence": 16},
        },
        "small", ("input_ids", "attention_mask"), ("last_hidden_state",),
    ),
}


def names() -> list[str]:
    """The model names ``build`` accepts."""
    return list(_MODELS)


def split_name(name: str, size: str | None = None) -> tuple[str, str | None]:
    """``"gpt2:full"`` -> ``("gpt2", "full")``: examples can be named with a size (CLI ``--example``)."""
    base, _, suffix = name.partition(":")
    if suffix and size and suffix != size:
        raise ValueError(f"'{name}' names size '{suffix}' but size='{size}' was also given")
    return base, suffix or size


def check_example(name: str) -> tuple[str, str]:
    """The model and size that ``name`` (``NAME`` or ``NAME:SIZE``) picks; ValueError listing the
    known ones when there is no such model or size."""
    base, size = split_name(name)
    if base not in _MODELS:
        raise ValueError(f"unknown example '{base}'; examples: {', '.join(_MODELS)} (optionally NAME:SIZE)")
    options(base, size)  # raises for an unknown size
    return base, size or _MODELS[base].default_size


def _spec(name: str) -> ModelSpec:
    name = split_name(name)[0]
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown zoo model '{name}'; known: {', '.join(_MODELS)}") from None


def sizes(name: str) -> list[str]:
    """The named sizes of a model; the first is its default."""
    spec = _spec(name)
    return [spec.default_size] + [size for size in spec.sizes if size != spec.default_size]


def options(name: str, size: str | None = None) -> dict[str, Any]:
    """The hyper-parameters of one size of a model (dims, depth, image size, batch, ...)."""
    spec = _spec(name)
    chosen = split_name(name, size)[1] or spec.default_size
    if chosen not in spec.sizes:
        raise ValueError(f"model '{name}' has no size '{chosen}'; known: {', '.join(sizes(name))}")
    return dict(spec.sizes[chosen])


def build(name: str, seed: int = 0, *, size: str | None = None, batch: int | None = None,
          **overrides: Any) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A seeded model in eval mode and seeded example inputs.

    ``size`` picks a named size (``sizes(name)``); ``batch`` and keyword ``overrides`` (any key
    of ``options(name, size)``) change single hyper-parameters. ``name`` may carry the size
    (``"gpt2:full"``).
    """
    name, size = split_name(name, size)
    chosen = options(name, size)
    unknown = set(overrides) - set(chosen)
    if unknown:
        raise ValueError(f"model '{name}' has no option(s) {sorted(unknown)}; known: {sorted(chosen)}")
    chosen.update(overrides)
    if batch is not None:
        chosen["batch"] = batch
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, inputs = _spec(name).build(chosen, generator)
    return model.eval(), inputs


def input_names(name: str) -> list[str]:
    return list(_spec(name).input_names)


def output_names(name: str) -> list[str]:
    return list(_spec(name).output_names)


def export_onnx(name: str, path: str | os.PathLike[str], seed: int = 0, *, size: str | None = None,
                batch: int | None = None, **overrides: Any) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Write the model ``build`` returns as ONNX (opset 17, static shapes); returns (model, inputs).

    Uses the TorchScript exporter: its opset-17 output needs no version conversion and it handles
    every zoo model with static shapes.
    """
    name, size = split_name(name, size)
    model, inputs = build(name, seed, size=size, batch=batch, **overrides)
    with torch.no_grad():
        torch.onnx.export(
            model, inputs, os.fspath(path), input_names=input_names(name), output_names=output_names(name),
            opset_version=17, dynamo=False, do_constant_folding=True,
        )
    return model, inputs


__all__ = ["build", "check_example", "export_onnx", "input_names", "names", "options", "output_names", "sizes", "split_name"]

