"""In-model validation of tuned kernels: does the tuned build really run faster than the untuned one?

    validation = validate_in_model(graph, get_target("cpu"), "tuned-db")   # end of tune_graph
    optc.compile(graph, db="tuned-db")      # a kernel is tuned only where it won inside the model

Tuning compares each candidate with optc's default schedule in isolation: a 20-100 µs kernel
measured 3 times in a loop of itself, with its own weights in cache. That picks the minimum of
many noisy candidates against one noisy default (the winner's curse), and in the model the caches
hold the previous kernel's output instead: MobileNetV2 with 8 trials per task ran 1.27x slower
tuned than untuned although every applied kernel had won its isolated measurement.

So this compiles the model twice (optc's default schedules only; every tuned kernel of the
database) and times each kernel inside the running model with the Relax VM instrument
(``profile.profile_kernels``), alternating the two builds for a few rounds. Each tuned kernel's
medians go into the state file as ``model_default_ms`` / ``model_tuned_ms``, where
``ApplyTuningDatabase`` reads them. Then the build with the kernels chosen that way is timed
against the default-only build, so the user sees the effect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from ..errors import LoweringError
from ..ir.graph import Graph
from .tuning import ApplyTuningDatabase, _read_state, _write_state

logger = logging.getLogger(__name__)

ROUNDS = 5  # alternations of the two builds
RUNS = 10  # profiled runs of a build per round (after 2 warm-ups)
# the compiled model may call a kernel under another symbol: weights packed at load time
KERNEL_SUFFIXES = ("_prepacked",)

Progress = Callable[[str], None]


@dataclass
class KernelValidation:
    key: str  # the workload's key in the state file
    names: list[str]  # the kernel's function names in the model
    default_ms: float  # per run, summed over its calls (median over rounds)
    tuned_ms: float
    uses_tuned: bool  # what ApplyTuningDatabase now takes


@dataclass
class ModelValidation:
    kernels: list[KernelValidation] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)  # tuned kernels the profile did not show (no in-model times)
    default_total_ms: float | None = None  # one run of the default-only build (median)
    chosen_total_ms: float | None = None  # one run of the build with the chosen kernels (median)
    all_tuned_total_ms: float | None = None  # one run of the build with every tuned kernel (median)
    seconds: float = 0.0

    @property
    def tuned_used(self) -> int:
        return sum(kernel.uses_tuned for kernel in self.kernels)

    @property
    def default_kept(self) -> int:
        return len(self.kernels) - self.tuned_used

    def by_key(self) -> dict[str, KernelValidation]:
        return {kernel.key: kernel for kernel in self.kernels}


def validate_in_model(graph: Graph, target: Any, database_dir: str | Path, *, rounds: int = ROUNDS, runs: int = RUNS,
                      seed: int = 0, progress: Progress | None = None) -> ModelValidation:
    """Time every tuned kernel of ``database_dir`` inside ``graph``'s compiled model (cpu ``target``)
    against optc's default schedule of it, note both in the state file, and time the chosen build."""
    from ..ir.interpret import sample_inputs  # noqa: PLC0415

    say = progress or logger.info
    started = time.perf_counter()
    feeds = sample_inputs(graph, seed=seed)
    every_tuned = ApplyTuningDatabase(database_dir, choose=False)
    say("in-model validation: compiling the model with optc's default schedules only and with every tuned kernel")
    default_build = _build(graph, target, None)
    tuned_build = _build(graph, target, every_tuned)
    keys = {name: every_tuned.keys[name] for name in every_tuned.applied}
    validation = ModelValidation()
    if not keys:
        say("in-model validation: the database has no tuned kernel for this model")
    else:
        say(f"validating {len(set(keys.values()))} tuned kernels in the model: {rounds} rounds x {runs} runs "
            "of each build, alternating")
        times = _kernel_times(default_build, tuned_build, feeds, keys, rounds, runs)
        measured = {key: (float(np.median(default)), float(np.median(tuned)))
                    for key, (default, tuned) in times.items() if default and tuned}
        _note_model_times(Path(database_dir), measured)
        names: dict[str, list[str]] = {}
        for name, key in keys.items():
            names.setdefault(key, []).append(name)
        validation.unseen = sorted(name for name, key in keys.items() if key not in measured)
        if validation.unseen:
            say(f"in-model validation: {len(validation.unseen)} tuned kernels do not run as such in the model "
                f"(isolated times decide them): {', '.join(validation.unseen)}")
        chosen = ApplyTuningDatabase(database_dir)
        chosen_build = _build(graph, target, chosen)
        validation.kernels = [KernelValidation(key, sorted(names[key]), default_ms, tuned_ms,
                                               any(name in chosen.applied for name in names[key]))
                              for key, (default_ms, tuned_ms) in measured.items()]
        validation.kernels.sort(key=lambda kernel: -kernel.default_ms)
        (validation.default_total_ms, validation.chosen_total_ms,
         validation.all_tuned_total_ms) = _model_times([default_build, chosen_build, tuned_build], feeds, rounds, runs)
    validation.seconds = time.perf_counter() - started
    if validation.kernels:
        say(f"in-model: {validation.tuned_used} tuned kernels used, {validation.default_kept} keep optc's default; "
            f"model {validation.default_total_ms:.3f} ms default-only vs {validation.chosen_total_ms:.3f} ms "
            f"with the chosen kernels, {validation.all_tuned_total_ms:.3f} ms with every tuned kernel "
            f"({validation.seconds:.0f} s)")
    return validation


def _build(graph: Graph, target: Any, tuning: ApplyTuningDatabase | None) -> Any:
    """``graph`` compiled as ``target`` (a CpuTarget) compiles it, with ``tuning`` before its schedules."""
    from .lower import lower_graph  # noqa: PLC0415
    from .runtime import CompiledModel  # noqa: PLC0415

    tvm_target = target.tvm_target()
    passes = [*target.fusion_passes(), *([tuning] if tuning is not None else []), *target.schedule_passes()]
    try:
        with tvm_target:
            module = tvm.transform.Sequential(passes)(lower_graph(graph))
        executable = tvm.compile(module, tvm_target, relax_pipeline="default_build")
    except Exception as error:
        raise LoweringError(f"in-model validation could not compile the model: {error}") from error
    return CompiledModel(graph, target, executable)


def _kernel_times(default_build: Any, tuned_build: Any, feeds: Mapping[str, np.ndarray], keys: Mapping[str, str],
                  rounds: int, runs: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per workload key: the per-round medians of its kernels' time per run in the two builds."""
    from .profile import profile_kernels  # noqa: PLC0415

    times: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for key in set(keys.values())}
    for _ in range(rounds):
        for column, build in enumerate((default_build, tuned_build)):
            per_key: dict[str, float] = {}
            for row in profile_kernels(build, feeds, runs=runs):
                key = keys.get(_kernel_name(row.name))
                if key is not None:  # one PrimFunc called several times is one row; kernels sharing a workload add up
                    per_key[key] = per_key.get(key, 0.0) + row.ms
            for key, milliseconds in per_key.items():
                times[key][column].append(milliseconds)
    return times


def _kernel_name(symbol: str) -> str:
    for suffix in KERNEL_SUFFIXES:
        if symbol.endswith(suffix):
            return symbol[: -len(suffix)]
    return symbol


def _model_times(builds: list[Any], feeds: Mapping[str, np.ndarray], rounds: int, runs: int) -> list[float]:
    """Median milliseconds of one plain run (no instrument) of each build, alternating ``rounds`` times."""
    times: list[list[float]] = [[] for _ in builds]
    calls = [(build._main, [*build._arguments(feeds), *build._params])  # pylint: disable=protected-access
             for build in builds]
    for main, arguments in calls:  # warm-up
        main(*arguments)
    for _ in range(rounds):
        for column, (main, arguments) in enumerate(calls):
            for _ in range(runs):
                started = time.perf_counter()
                main(*arguments)
                times[column].append(1e3 * (time.perf_counter() - started))
    return [float(np.median(column)) for column in times]


def _note_model_times(work_dir: Path, measured: Mapping[str, tuple[float, float]]) -> None:
    state = _read_state(work_dir)
    for key, (default_ms, tuned_ms) in measured.items():
        state.setdefault(key, {}).update(model_default_ms=round(default_ms, 6), model_tuned_ms=round(tuned_ms, 6))
    _write_state(work_dir, state)


__all__ = ["KernelValidation", "ModelValidation", "validate_in_model"]
