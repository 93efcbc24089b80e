"""Auto-tuning with MetaSchedule: tune a graph's fused kernels into a database kept as files.

    summary = tune_graph(graph, "tuned-db", trials=8)      # tunes what the database lacks
    optc.compile(graph, db="tuned-db")                     # tuned kernels win, the rest keep
                                                           # optc's default schedules

The database is MetaSchedule's ``JSONDatabase``: ``database_workload.json`` and
``database_tuning_record.json`` in one directory (one JSON line per workload / measured
candidate). Tuning is per task (one fused PrimFunc of TVM's ``zero`` pipeline) and resumable:
the trials a task already has in the database count towards ``trials``, so a second run with
the same directory only tunes what is missing.

Which kernels a compile takes from the database is decided per kernel from the state file
(``optc_tuning_state.json``): by the in-model times ``validate_in_model`` (``tuning_validation``)
measures at the end of ``tune_graph`` where it has them, else by the isolated times of optc's
default schedule and the best candidate.

TVM 0.27 workarounds (see TVM_NOTES "MetaSchedule"): the builder uses ``build_kernel`` below
instead of MetaSchedule's default (whose workers import ``tvm.s_tir.tensor_intrin`` for a minute
and time out); tasks are extracted after ``zero`` (fusion), or there are none; the database is
applied with ``MetaScheduleApplyDatabase`` under the target and the database.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm_ffi import structural_hash
from tvm import relax

from ..errors import LoweringError, OptcError
from .targets.cpu import use_every_core

logger = logging.getLogger(__name__)

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
# optc's own note of the trials each task was given: a task whose search space ran out before its
# trials (a plain reshape has one candidate) has fewer records than asked, and is still done
STATE_FILE = "optc_tuning_state.json"
BUILD_TIMEOUT_S = 60.0
# a tuned kernel must be this much faster in the model than optc's default to replace it: smaller
# differences are within the run-to-run noise of the per-kernel medians
IN_MODEL_MARGIN = 0.03
MODEL_TIMES = ("model_default_ms", "model_tuned_ms")

Progress = Callable[[str], None]


class TuningError(OptcError):
    """Tuning could not start or run (missing packages, bad database directory, RPC failures)."""


@dataclass(frozen=True)
class RpcSettings:
    """Where candidates run: an RPC tracker ``host:port`` and the device key its servers registered."""

    host: str
    port: int
    key: str
    session_timeout_s: float = 60.0

    @classmethod
    def parse(cls, address: str, key: str) -> RpcSettings:
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise TuningError(f"--rpc '{address}' must look like HOST:PORT (the RPC tracker's address)")
        if not key:
            raise TuningError("--rpc needs --key NAME: the key the RPC servers registered with the tracker")
        return cls(host, int(port), key)


@dataclass
class TaskResult:
    name: str
    weight: int
    trials_before: int
    trials_run: int
    best_ms: float | None
    seconds: float
    key: str = ""  # the workload's key in the state file


@dataclass
class TuneSummary:
    database: Path
    trials_per_task: int
    tasks: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0
    validation: Any = None  # tuning_validation.ModelValidation after tune_graph's in-model validation
    validation_skipped: str | None = None  # why there is none

    @property
    def trials_run(self) -> int:
        return sum(task.trials_run for task in self.tasks)

    @property
    def trials_skipped(self) -> int:
        return sum(min(task.trials_before, self.trials_per_task) for task in self.tasks)


def build_kernel(mod: tvm.IRModule, target: tvm.target.Target, _params: Any = None) -> tvm.runtime.Module:
    """MetaSchedule's default build without the slow ``tvm.s_tir.tensor_intrin`` import."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415

    return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def check_requirements() -> None:
    missing = []
    for name in ("xgboost", "cloudpickle", "tornado", "psutil"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise TuningError(f"tuning needs the Python packages {', '.join(missing)}: pip install {' '.join(missing)}")


def open_database(directory: str | Path, create: bool = True) -> Any:
    """The JSONDatabase in ``directory`` (created when ``create``; else it must hold the files)."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    path = Path(directory)
    if not create and not all((path / name).is_file() for name in DATABASE_FILES):
        raise TuningError(f"{path} is not a tuning database (expected {' and '.join(DATABASE_FILES)}); "
                          "create one with 'optc tune ... --db DIR'")
    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(path), module_equality="structural")


def database_files(directory: str | Path) -> list[Path]:
    return [Path(directory) / name for name in DATABASE_FILES]


def copy_database(directory: str | Path, destination: Path) -> list[Path]:
    """Copy the database files (not the logs) into ``destination``; returns the copies."""
    destination.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in database_files(directory):
        if not source.is_file():
            raise TuningError(f"{source} is missing: {directory} is not a complete tuning database")
        copy = destination / source.name
        shutil.copyfile(source, copy)
        copies.append(copy)
    return copies


def fuse_for_tuning(module: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The module as the CPU target sees it before scheduling (``CpuTarget.fusion_passes``), so that
    the tasks tuned are the kernels a compile builds."""
    from .targets.cpu import CpuTarget  # noqa: PLC0415

    with target:
        return tvm.transform.Sequential(CpuTarget.fusion_passes())(module)


def _trials_in_database(database: Any, work_dir: Path) -> dict[str, int]:
    """Trials per workload (keyed by the structural hash of its module, as text): records, or the
    trials a finished search was given when that is more."""
    counts: dict[str, int] = {}
    for record in database.get_all_tuning_records():
        key = str(structural_hash(record.workload.mod))
        counts[key] = counts.get(key, 0) + 1
    for key, entry in _read_state(work_dir).items():
        counts[key] = max(counts.get(key, 0), int(entry.get("trials", 0)))
    return counts


def _read_state(work_dir: Path) -> dict[str, dict[str, Any]]:
    path = work_dir / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("ignoring the unreadable %s (the records themselves are kept)", path)
        return {}
    return state if isinstance(state, dict) else {}


def _note_finished(work_dir: Path, finished: dict[str, tuple[str, int]]) -> None:
    state = _read_state(work_dir)
    for key, (name, trials) in finished.items():
        entry = state.setdefault(key, {})
        entry.update(task=name, trials=max(trials, int(entry.get("trials", 0))))
    _write_state(work_dir, state)


def _forget_model_times(work_dir: Path, keys: set[str]) -> None:
    """Drop the in-model times of kernels about to get more trials: they judged the old best candidate."""
    state = _read_state(work_dir)
    changed = False
    for key in keys & set(state):
        for name in MODEL_TIMES:
            changed = state[key].pop(name, None) is not None or changed
    if changed:
        _write_state(work_dir, state)


def _note_defaults(work_dir: Path, defaults: dict[str, tuple[str, float]]) -> None:
    state = _read_state(work_dir)
    for key, (name, milliseconds) in defaults.items():
        state.setdefault(key, {}).update(task=name, default_ms=milliseconds)
    _write_state(work_dir, state)


def _write_state(work_dir: Path, state: dict[str, dict[str, Any]]) -> None:
    temporary = work_dir / (STATE_FILE + ".tmp")
    temporary.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    temporary.replace(work_dir / STATE_FILE)


def _runner(rpc: RpcSettings | None) -> Any:
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0, enable_cpu_cache_flush=False)
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=30)
    config = ms.runner.RPCConfig(tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key,
                                 session_timeout_sec=rpc.session_timeout_s)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


def tune_module(
    module: tvm.IRModule,
    target: tvm.target.Target,
    database_dir: str | Path,
    trials: int,
    *,
    rpc: RpcSettings | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> TuneSummary:
    """Tune every fused kernel of ``module`` (a lowered, unfused Relax module) to ``trials`` each.

    Kernels that already have ``trials`` measured candidates in the database are skipped; the
    others get the missing trials. Progress (per task, with an estimate of time left from the
    trials done so far) goes to ``progress``.
    """
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    check_requirements()
    if trials < 1:
        raise TuningError(f"--trials must be at least 1, got {trials}")
    say = progress or logger.info
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    if ms_logger.level == logging.NOTSET:  # its console handler takes this level; full logs go to DIR/logs
        ms_logger.setLevel(logging.WARNING)
    started = time.perf_counter()
    fused = fuse_for_tuning(module, target)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    if not tasks:
        raise TuningError("MetaSchedule found no kernels to tune in this model")
    from .schedules.winograd import is_winograd_kernel  # noqa: PLC0415

    kept = [task for task in tasks if not is_winograd_kernel(task.task_name)]
    if len(kept) < len(tasks):
        # their multi-stage TE is not a workload MetaSchedule's rules can take (its space generation
        # fails on the transform blocks), and the weight transform runs once at load time
        say(f"{len(tasks) - len(kept)} Winograd kernels keep optc's schedule (not tuned)")
        tasks = kept
    if not tasks:
        raise TuningError("no kernels to tune in this model: all are Winograd convs, which keep optc's schedule")
    work_dir = Path(database_dir)
    database = open_database(work_dir)
    done = _trials_in_database(database, work_dir)
    summary = TuneSummary(database=work_dir, trials_per_task=trials)
    pending = []
    for task in tasks:
        before = done.get(str(structural_hash(task.dispatched[0])), 0)
        pending.append((task, before, max(0, trials - before)))
    total_missing = sum(missing for _, _, missing in pending)
    skipped = sum(min(before, trials) for _, before, _ in pending)
    say(f"{len(tasks)} tasks, {trials} trials each: {total_missing} to run, {skipped} already in {work_dir}")
    builder = ms.builder.LocalBuilder(f_build=build_kernel, timeout_sec=BUILD_TIMEOUT_S)
    use_every_core()  # the runner's worker processes measure with the threads a compiled model gets
    runner = _runner(rpc)
    state = _read_state(work_dir)
    unmeasured = [task for task, _, _ in pending
                  if "default_ms" not in state.get(str(structural_hash(task.dispatched[0])), {})]
    if unmeasured:
        say(f"measuring optc's default schedules of {len(unmeasured)} kernels (tuned kernels must beat them)")
        try:
            _note_defaults(work_dir, _measure_defaults(unmeasured, target, builder, runner, _weight_args(fused)))
        except Exception as error:  # without a default time the tuned kernel simply wins
            logger.warning("could not measure optc's default schedules: %s", " ".join(str(error).split())[-300:])
    _forget_model_times(work_dir, {str(structural_hash(task.dispatched[0])) for task, _, missing in pending if missing})
    meter = _ProgressMeter(total_missing, say)
    for index, (task, before, missing) in enumerate(pending, 1):
        if missing == 0:
            summary.tasks.append(TaskResult(task.task_name, int(task.weight), before, 0, _best_ms(database, task), 0.0,
                                            str(structural_hash(task.dispatched[0]))))
            say(f"task {index}/{len(tasks)} {task.task_name}: {before} trials in the database, skipped")
    # one MetaSchedule run per distinct number of missing trials (one run when nothing was tuned before):
    # every run restarts builder pools and cost model, which costs seconds per run
    for missing in sorted({missing for _, _, missing in pending if missing}):
        group = [(index, task, before) for index, (task, before, count) in enumerate(pending, 1) if count == missing]
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [task for _, task, _ in group], str(work_dir), seed=seed)
        meter.labels = [f"task {index}/{len(tasks)} {task.task_name}" for index, task, _ in group]
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"), meter.callback()]
        try:
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(work_dir),
                max_trials_global=missing * len(contexts), max_trials_per_task=missing,
                num_trials_per_iter=min(missing, 64), builder=builder, runner=runner, database=database,
                cost_model="xgb", measure_callbacks=callbacks, task_scheduler="round-robin",
            )
        except OptcError:
            raise
        except Exception as error:  # TVM raises TVMError/RuntimeError from its workers
            raise TuningError(f"tuning failed: {' '.join(str(error).split())[-400:]}") from error
        _note_finished(work_dir, {str(structural_hash(task.dispatched[0])): (task.task_name, before + missing)
                                  for _, task, before in group})
        for _, task, before in group:
            summary.tasks.append(TaskResult(task.task_name, int(task.weight), before,
                                            meter.counts.get(task.task_name, 0),
                                            _best_ms(database, task), meter.seconds.get(task.task_name, 0.0),
                                            str(structural_hash(task.dispatched[0]))))
    summary.seconds = time.perf_counter() - started
    return summary


def _weight_args(fused: tvm.IRModule) -> dict[str, Any]:
    """Kernel name -> the arguments ``MarkWeightArgs`` marks as weights (what the default schedules pack)."""
    from .schedules.weights import WEIGHT_ARGS_ATTR, MarkWeightArgs  # noqa: PLC0415

    marked = MarkWeightArgs()(fused)
    return {gvar.name_hint: func.attrs[WEIGHT_ARGS_ATTR] for gvar, func in marked.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and WEIGHT_ARGS_ATTR in func.attrs}


def _measure_defaults(tasks: list[Any], target: tvm.target.Target, builder: Any, runner: Any,
                      weight_args: dict[str, Any] | None = None) -> dict[str, tuple[str, float]]:
    """Milliseconds of each task's kernel under optc's default schedules (as the cpu target builds it:
    weights packed where ``weight_args`` marks them), measured like the candidates; keyed like the
    state file. Kernels that fail to build or run are left out."""
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock  # noqa: PLC0415

    from .schedules import rewrite_fast_math, schedule_func  # noqa: PLC0415
    from .schedules.weights import WEIGHT_ARGS_ATTR  # noqa: PLC0415

    inputs, arg_infos = [], []
    for task in tasks:
        func = task.dispatched[0]["main"]
        rewritten, _ = rewrite_fast_math(func)
        if (weight_args or {}).get(task.task_name) is not None:
            rewritten = rewritten.with_attr(WEIGHT_ARGS_ATTR, weight_args[task.task_name])
        scheduled = schedule_func(rewritten, target)
        kernel = scheduled[0] if scheduled else rewritten
        inputs.append(ms.builder.BuilderInput(tvm.IRModule({"main": kernel}), target))
        # the arguments as build_kernel compiles it: weights packed by the schedule (optc.packed_args)
        # or by a layout-rewrite block (which build_kernel drops: the kernel then takes the packed weight)
        built = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(tvm.IRModule({"main": kernel}))
        arg_infos.append(ms.arg_info.ArgInfo.from_prim_func(built["main"]))
    built = builder.build(inputs)
    runnable = [(task, result, info) for task, result, info in zip(tasks, built, arg_infos) if result.error_msg is None]
    futures = runner.run([ms.runner.RunnerInput(result.artifact_path, "cpu", info)
                          for _, result, info in runnable])
    measured = {}
    for (task, result, _), future in zip(runnable, futures):
        outcome = future.result()
        if outcome.error_msg is None and outcome.run_secs:
            milliseconds = 1e3 * sum(float(t) for t in outcome.run_secs) / len(outcome.run_secs)
            measured[str(structural_hash(task.dispatched[0]))] = (task.task_name, milliseconds)
        shutil.rmtree(Path(result.artifact_path).parent, ignore_errors=True)
    return measured


def _best_ms(database: Any, task: Any) -> float | None:
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return None
    records = database.get_top_k(database.commit_workload(mod), 1)
    if not records or not records[0].run_secs:
        return None
    seconds = [float(value) for value in records[0].run_secs]
    return 1e3 * sum(seconds) / len(seconds)


class _ProgressMeter:
    """Says after every measured batch: trials done, the batch's best, an estimate of time left."""

    def __init__(self, total: int, say: Progress) -> None:
        self.total = total
        self.say = say
        self.done = 0
        self.labels: list[str] = []
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}  # measured candidates per task name
        self.started = time.perf_counter()
        self.last = self.started

    def callback(self) -> Any:
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback  # noqa: PLC0415
        from tvm.ir.utils import derived_object  # noqa: PLC0415

        meter = self

        @derived_object
        class Progress(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
                meter.measured(int(task_id), runner_results)

        return Progress()

    def measured(self, task_id: int, runner_results: list) -> None:
        if not runner_results:  # the search space ran out: nothing was measured
            return
        now = time.perf_counter()
        label = self.labels[task_id] if task_id < len(self.labels) else f"task #{task_id}"
        self.seconds[label.rsplit(" ", 1)[-1]] = self.seconds.get(label.rsplit(" ", 1)[-1], 0.0) + now - self.last
        self.last = now
        self.done += len(runner_results)
        name = label.rsplit(" ", 1)[-1]
        self.counts[name] = self.counts.get(name, 0) + len(runner_results)
        times = [1e3 * sum(float(t) for t in result.run_secs) / len(result.run_secs)
                 for result in runner_results if result.error_msg is None and result.run_secs]
        best = f"best of batch {min(times):.4f} ms" if times else "no candidate ran"
        left = (now - self.started) / self.done * max(0, self.total - self.done)
        self.say(f"{label}: {len(runner_results)} trials, {best}; {self.done}/{self.total} trials done, "
                 f"about {left:.0f} s left")


@tvm.transform.module_pass(opt_level=0, name="optc.ApplyTuningDatabase")
class ApplyTuningDatabase:
    """Replace every kernel the database has a tuned schedule for (run under the target).

    Before: fused PrimFuncs from ``zero``, unscheduled. After: the tuned ones carry MetaSchedule's
    best schedule and ``tirx.is_scheduled``, so optc's default schedules leave them alone and
    schedule only the rest. A kernel keeps optc's default schedule where the state file says it is
    faster: by the in-model times (``model_default_ms``/``model_tuned_ms``, the tuned one must win
    by ``IN_MODEL_MARGIN``) where it has them, else by the isolated ``default_ms`` against the best
    candidate. ``choose=False`` applies every tuned kernel (the build in-model validation times).
    ``applied`` lists the tuned function names of the last run, ``kept_default`` the ones left to
    optc's default, ``keys`` maps both to their workload's key in the state file.
    """

    def __init__(self, database_dir: str | Path, *, choose: bool = True) -> None:
        self.database_dir = Path(database_dir)
        self.choose = choose
        self.applied: list[str] = []
        self.kept_default: list[str] = []  # in the database, but optc's default schedule is faster
        self.by_model_times: list[str] = []  # the kernels of both lists decided by in-model times
        self.keys: dict[str, str] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from tvm.s_tir.meta_schedule.tune_context import _normalize_mod  # noqa: PLC0415  (as tuning normalizes)

        check_requirements()
        target = tvm.target.Target.current(allow_none=False)
        database = open_database(self.database_dir, create=False)
        state = _read_state(self.database_dir)
        self.applied, self.kept_default, self.by_model_times, self.keys = [], [], [], {}
        updates = {}
        try:
            for gvar, func in mod.functions_items():
                if not isinstance(func, tvm.tirx.PrimFunc) or _is_scheduled(func):
                    continue
                workload_mod = _normalize_mod(func)
                if not database.has_workload(workload_mod):
                    continue
                record = database.query_tuning_record(workload_mod, target, "main")
                if record is None or not record.run_secs:
                    continue
                tuned_ms = 1e3 * sum(float(t) for t in record.run_secs) / len(record.run_secs)
                key = str(structural_hash(record.workload.mod))
                self.keys[gvar.name_hint] = key
                entry = state.get(key, {})
                if self.choose and all(name in entry for name in MODEL_TIMES):
                    self.by_model_times.append(gvar.name_hint)
                if self.choose and default_is_faster(entry, tuned_ms):
                    self.kept_default.append(gvar.name_hint)
                    continue
                schedule = database.query_schedule(workload_mod, target, "main")
                if schedule is None:
                    continue
                updates[gvar] = _with_attrs_of(schedule.mod["main"], func).with_attr("tirx.is_scheduled", True)
                self.applied.append(gvar.name_hint)
        except OptcError:
            raise
        except Exception as error:
            raise LoweringError(f"applying the tuning database {self.database_dir} failed: {error}") from error
        for gvar, func in updates.items():
            mod[gvar] = func
        logger.info("tuning database %s: %d tuned kernel(s) applied: %s; %d kept optc's faster default schedule: %s "
                    "(%d decided by in-model times, the rest by isolated times)", self.database_dir,
                    len(self.applied), ", ".join(self.applied), len(self.kept_default), ", ".join(self.kept_default),
                    len(self.by_model_times))
        return mod


def default_is_faster(entry: dict[str, Any], tuned_ms: float) -> bool:
    """Whether a kernel keeps optc's default schedule, from its state ``entry`` and the best candidate's
    isolated ``tuned_ms``: in-model times decide where validation measured them (the tuned kernel must
    be ``IN_MODEL_MARGIN`` faster), else the isolated default time (the tuned one must be faster)."""
    if all(name in entry for name in MODEL_TIMES):
        return not float(entry["model_tuned_ms"]) < float(entry["model_default_ms"]) * (1 - IN_MODEL_MARGIN)
    default_ms = entry.get("default_ms")
    return default_ms is not None and float(default_ms) <= tuned_ms


def _with_attrs_of(tuned: Any, original: Any) -> Any:
    """``tuned`` with the attributes of ``original`` (not the ``main`` symbol the workload got)."""
    attrs = dict(original.attrs.items()) if original.attrs is not None else {}
    if "global_symbol" not in attrs and tuned.attrs is not None and "global_symbol" in tuned.attrs:
        tuned = tuned.without_attr("global_symbol")
    for key, value in attrs.items():
        tuned = tuned.with_attr(key, value)
    return tuned


def _is_scheduled(func: Any) -> bool:
    return (isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
            and "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"]))


__all__ = ["ApplyTuningDatabase", "RpcSettings", "TaskResult", "TuneSummary", "TuningError", "build_kernel",
           "check_requirements", "copy_database", "database_files", "default_is_faster", "open_database", "tune_graph",
           "tune_module"]


def tune_graph(
    graph: Any,
    database_dir: str | Path,
    trials: int,
    *,
    target_options: dict[str, Any] | None = None,
    rpc: RpcSettings | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> TuneSummary:
    """Tune an optc Graph (after its passes: compile it with the same pipeline) for the cpu target,
    then validate the tuned kernels inside the model (``validate_in_model``; not with ``rpc``, whose
    candidates ran on another device): the state file gets their in-model times, which decide what
    ``optc compile --db`` takes. Validation also runs when every task was already tuned."""
    from .lower import lower_graph  # noqa: PLC0415
    from .targets import get_target  # noqa: PLC0415
    from .tuning_validation import validate_in_model  # noqa: PLC0415

    say = progress or logger.info
    target = get_target("cpu", **dict(target_options or {}))
    summary = tune_module(lower_graph(graph), target.tvm_target(), database_dir, trials, rpc=rpc, seed=seed,
                          progress=progress)
    if rpc is not None:
        summary.validation_skipped = "--rpc: the candidates were measured on the remote device, the model runs here"
        say(f"skipping in-model validation ({summary.validation_skipped}); compile --db uses the isolated times")
        return summary
    try:
        summary.validation = validate_in_model(graph, target, database_dir, progress=say)
    except Exception as error:  # noqa: BLE001  the tuning records stand; compile --db falls back to isolated times
        summary.validation_skipped = f"in-model validation failed: {' '.join(str(error).split())[-300:]}"
        logger.warning("%s", summary.validation_skipped)
        say(f"{summary.validation_skipped}; compile --db uses the isolated times")
    return summary
