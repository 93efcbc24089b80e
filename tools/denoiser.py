"""A small U-Net denoiser for 8x8 digits in plain torch, its DDPM training and DDIM sampling.

The reference model of the caching work (``optc.passes.caching.split_deep_cache``):

    model = TinyUNet()                                 # seeded random weights
    train_on_digits(model, seconds=60)                 # DDPM noise prediction on sklearn digits
    graph = capture_unet(model)                        # inputs x [1,1,8,8], t [1]; output eps
    samples = ddim_sample(step_fn, noise, steps=50)    # step_fn(index, x, t) -> eps

Three resolutions (8x8, 4x4, 2x2) joined by two concatenating skips, so there are two skip
branches to cache: depth 1 (the 8x8 skip; the cached step runs only the 8x8 path) and depth 2.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TRAIN_STEPS = 1000  # DDPM timesteps; DDIM samples a subsequence


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, time_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(4, in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.time = nn.Linear(time_dim, channels)
        self.norm2 = nn.GroupNorm(4, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, channels, 1) if in_channels != channels else nn.Identity()

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(time)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class TinyUNet(nn.Module):
    """conv_in -> down1 (8x8) -> down2 (4x4) -> mid (2x2) -> up2 (4x4, cat down2) -> up1 (8x8, cat down1)."""

    def __init__(self, width: int = 32, time_dim: int = 64) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(1, width, 3, padding=1)
        self.down1 = ResBlock(width, width, time_dim)
        self.pool1 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.down2 = ResBlock(width, 2 * width, time_dim)
        self.pool2 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * width, 2 * width, time_dim)
        self.up2 = ResBlock(4 * width, 2 * width, time_dim)
        self.up1 = ResBlock(3 * width, width, time_dim)
        self.norm_out = nn.GroupNorm(4, width)
        self.conv_out = nn.Conv2d(width, 1, 3, padding=1)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        angles = t[:, None] * frequencies[None, :]
        return self.time_mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = self.embed_time(t)
        skip1 = self.down1(self.conv_in(x), time)
        skip2 = self.down2(self.pool1(skip1), time)
        h = self.mid(self.pool2(skip2), time)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skip2], dim=1), time)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skip1], dim=1), time)
        return self.conv_out(F.silu(self.norm_out(h)))


def build_unet(seed: int = 0, width: int = 32) -> TinyUNet:
    torch.manual_seed(seed)
    return TinyUNet(width).eval()


def capture_unet(model: TinyUNet):
    """The optc graph (cleaned up and fused) of ``model`` for one 8x8 image: x [1,1,8,8], t [1] -> eps."""
    from ..frontends.torch import capture
    from ..passes import PassManager

    example = (torch.zeros(1, 1, 8, 8), torch.tensor([500.0]))
    graph = capture(model, example, input_names=["x", "t"], output_names=["eps"])
    PassManager("cleanup,fuse").run(graph)
    return graph


# ---- DDPM training and DDIM sampling --------------------------------------------------------------


def alphas_cumprod(steps: int = TRAIN_STEPS) -> np.ndarray:
    betas = np.linspace(1e-4, 0.02, steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def digits_images() -> np.ndarray:
    """scikit-learn's 8x8 digits scaled to [-1, 1], shape (N, 1, 8, 8) float32."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0
    return (images * 2.0 - 1.0)[:, None]


def train_on_digits(model: TinyUNet, seconds: float = 60.0, seed: int = 0, batch: int = 64,
                    learning_rate: float = 2e-3, threads: int = 1) -> dict[str, float]:
    """DDPM noise prediction on the digits for ``seconds`` of wall time; returns steps and last loss.

    One torch thread by default: on a shared 2-core machine two spinning threads ran 10x slower.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(model, seconds, seed, batch, learning_rate)
    finally:
        torch.set_num_threads(previous_threads)


def _train(model: TinyUNet, seconds: float, seed: int, batch: int, learning_rate: float) -> dict[str, float]:
    images = torch.from_numpy(digits_images())
    cumulative = torch.from_numpy(alphas_cumprod()).float()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    started, steps, loss_value = time.perf_counter(), 0, float("nan")
    while time.perf_counter() - started < seconds:
        index = torch.randint(0, len(images), (batch,), generator=generator)
        t = torch.randint(0, TRAIN_STEPS, (batch,), generator=generator)
        noise = torch.randn((batch, 1, 8, 8), generator=generator)
        alpha = cumulative[t][:, None, None, None]
        noisy = alpha.sqrt() * images[index] + (1 - alpha).sqrt() * noise
        loss = F.mse_loss(model(noisy, t.float()), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps, loss_value = steps + 1, loss.item()
    model.eval()
    return {"steps": steps, "loss": loss_value, "seconds": time.perf_counter() - started}


def ddim_timesteps(steps: int) -> np.ndarray:
    """The DDIM subsequence of ``steps`` timesteps, from the noisiest down."""
    return np.linspace(TRAIN_STEPS - 1, 0, steps).round().astype(np.int64)


StepFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray]  # (index, x, t) -> eps


def ddim_sample(step: StepFn, noise: np.ndarray, steps: int = 50) -> np.ndarray:
    """Deterministic DDIM (eta = 0) from ``noise``; ``step`` predicts the noise at each timestep."""
    cumulative = alphas_cumprod()
    timesteps = ddim_timesteps(steps)
    x = noise.astype(np.float32)
    for index, t in enumerate(timesteps):
        eps = step(index, x, np.array([float(t)], np.float32)).astype(np.float64)
        alpha = cumulative[t]
        alpha_next = cumulative[timesteps[index + 1]] if index + 1 < len(timesteps) else 1.0
        x0 = (x - np.sqrt(1 - alpha) * eps) / np.sqrt(alpha)
        x = (np.sqrt(alpha_next) * x0 + np.sqrt(1 - alpha_next) * eps).astype(np.float32)
    return x


__all__ = ["TinyUNet", "build_unet", "capture_unet", "ddim_sample", "ddim_timesteps", "train_on_digits"]
