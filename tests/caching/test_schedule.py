"""Cache schedules and the step driver with Adams-Bashforth extrapolation."""

from __future__ import annotations

import numpy as np
import pytest

from optc.passes.caching import CachedDenoiser, nonuniform_schedule, uniform_schedule
from optc.passes.caching.schedule import ScheduleError


def test_uniform_schedule_runs_a_full_step_every_interval():
    assert uniform_schedule(7, 3) == [True, False, False, True, False, False, True]
    assert all(uniform_schedule(5, 1))
    with pytest.raises(ScheduleError):
        uniform_schedule(5, 0)


@pytest.mark.parametrize("full_steps", [1, 5, 10, 17, 50])
def test_nonuniform_schedule_has_the_requested_full_steps(full_steps):
    flags = nonuniform_schedule(50, full_steps, center=0.3)
    assert len(flags) == 50 and sum(flags) == full_steps and flags[0]


def test_nonuniform_schedule_crowds_full_steps_around_the_center():
    indices = [index for index, full in enumerate(nonuniform_schedule(50, 10, center=0.3)) if full]
    gaps = np.diff(indices)
    near = min(range(len(indices)), key=lambda k: abs(indices[k] - 15))
    assert gaps[max(near - 1, 0)] < gaps[-1]
    with pytest.raises(ScheduleError):
        nonuniform_schedule(5, 6)


class FakeSession:
    """Full step writes the feature step * ones; the cached step returns the feature it reads."""

    def __init__(self) -> None:
        self.feature = None
        self.step = 0

    def run(self, entry, feeds):
        if entry == "full":
            self.feature = np.full(3, float(feeds["step"]), np.float32)
            return {"out": self.feature.copy()}
        assert self.feature is not None
        return {"out": self.feature.copy()}

    def state(self, name):
        return self.feature.copy()

    def set_state(self, name, array):
        self.feature = np.asarray(array)


def _run(extrapolate: bool, flags: list[bool]) -> tuple[list[float], dict]:
    denoise = CachedDenoiser(FakeSession(), extrapolate=extrapolate)
    outputs = [float(denoise(step, full, {"step": step})["out"][0]) for step, full in enumerate(flags)]
    return outputs, denoise.counts


def test_plain_reuse_reads_the_last_full_steps_feature():
    outputs, counts = _run(False, uniform_schedule(7, 3))
    assert outputs == [0, 0, 0, 3, 3, 3, 6]
    assert counts == {"full": 3, "cached": 4}


def test_adams_bashforth_extrapolates_linearly_from_two_full_steps():
    outputs, _ = _run(True, uniform_schedule(7, 3))
    assert outputs == [0, 0, 0, 3, 4, 5, 6]  # one full step: reuse; then the line through (0, 0), (3, 3)


def test_a_cached_step_first_runs_the_full_step_instead():
    outputs, counts = _run(False, [False, False])
    assert counts == {"full": 1, "cached": 1} and outputs == [0, 0]
