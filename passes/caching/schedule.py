"""Which sampling steps run the full denoiser, and a step driver over the full/cached entry points.

    flags = uniform_schedule(steps=50, interval=3)          # full at 0, 3, 6, ...
    flags = nonuniform_schedule(steps=50, full_steps=12)    # denser where the feature changes most
    denoise = CachedDenoiser(session, extrapolate=True)     # session: artifact.session()
    eps = denoise(index, flags[index], {"x": x, "t": t})["eps"]

With ``extrapolate`` the cached steps read a 2-step Adams-Bashforth (linear) extrapolation of
the deep feature from the last two full steps instead of the last one (AB-Cache); the first
cached steps after only one full step reuse it as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ...errors import OptcError


class ScheduleError(OptcError):
    """A cache schedule is impossible (no steps, a zero interval, more full steps than steps)."""


def uniform_schedule(steps: int, interval: int) -> list[bool]:
    """Full step every ``interval`` steps, starting with the first (interval 1: all full)."""
    if steps < 1 or interval < 1:
        raise ScheduleError(f"steps ({steps}) and interval ({interval}) must be at least 1")
    return [index % interval == 0 for index in range(steps)]


def nonuniform_schedule(steps: int, full_steps: int, *, center: float = 0.25, power: float = 1.5) -> list[bool]:
    """``full_steps`` full steps, spaced closest around ``center`` (a fraction of the way through).

    DeepCache's non-uniform 1:N strategy: offsets from the center grow like ``|u| ** power`` for
    evenly spaced ``u`` in [-1, 1], so full steps crowd where the deep feature changes fastest.
    The first step is always full (nothing is cached before it).
    """
    if not 1 <= full_steps <= steps:
        raise ScheduleError(f"full_steps ({full_steps}) must be in [1, steps={steps}]")
    if power <= 0 or not 0.0 <= center <= 1.0:
        raise ScheduleError(f"power ({power}) must be positive and center ({center}) in [0, 1]")
    middle = center * (steps - 1)
    spread = np.sign(np.linspace(-1.0, 1.0, full_steps)) * np.abs(np.linspace(-1.0, 1.0, full_steps)) ** power
    # map [-1, 1] to [0, steps - 1] keeping ``middle`` at u = 0
    chosen = np.where(spread < 0, middle + spread * middle, middle + spread * (steps - 1 - middle))
    indices = {0} | {int(round(value)) for value in chosen}
    candidates = iter(index for index in range(steps) if index not in indices)
    while len(indices) < full_steps:  # rounding merged some: fill from the start
        indices.add(next(candidates))
    return [index in indices for index in range(steps)]


class EntrySession(Protocol):
    """What ``CachedDenoiser`` needs: an ``optc.backends.entries.Session``."""

    def run(self, entry: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def state(self, name: str) -> np.ndarray: ...
    def set_state(self, name: str, array: np.ndarray) -> None: ...


@dataclass
class CachedDenoiser:
    """Runs the full or the cached entry point per step and keeps the feature history."""

    session: EntrySession
    full: str = "full"
    cached: str = "cached"
    feature: str = "deep_feature"
    extrapolate: bool = False
    history: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (step, feature) of full steps
    counts: dict[str, int] = field(default_factory=lambda: {"full": 0, "cached": 0})

    def __call__(self, step: int, full: bool, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
        if full or not self.history:
            outputs = self.session.run(self.full, feeds)
            if self.extrapolate:
                self.history = (self.history + [(step, self.session.state(self.feature))])[-2:]
            else:
                self.history = [(step, np.empty(0))]  # only "a full step ran" matters
            self.counts["full"] += 1
            return outputs
        if self.extrapolate and len(self.history) == 2:
            (first_step, first), (last_step, last) = self.history
            slope = (last - first) / float(last_step - first_step)
            self.session.set_state(self.feature, (last + slope * (step - last_step)).astype(last.dtype))
        elif self.extrapolate:
            self.session.set_state(self.feature, self.history[-1][1])
        self.counts["cached"] += 1
        return self.session.run(self.cached, feeds)


__all__ = ["CachedDenoiser", "ScheduleError", "nonuniform_schedule", "uniform_schedule"]
