"""``optc tune``: auto-tune a model's kernels with MetaSchedule into a database directory.

    optc tune --example resnet18 --trials 8 --db tuned/resnet18
    optc compile --example resnet18 --db tuned/resnet18 -o out/resnet18-tuned

Run it again with the same ``--db`` after an interruption or with more ``--trials``: kernels
that already have their trials are skipped. At the end the tuned kernels are timed inside the
compiled model against optc's default schedules (both builds alternating); a kernel is used
tuned only where it won there. ``--rpc HOST:PORT --key NAME`` measures candidates
on the devices an RPC tracker lends under NAME (builds stay on this machine).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InputError

DEFAULT_DB = "optc-tuning-db"


def cmd_tune(args: argparse.Namespace) -> int:
    from .. import compiler
    from ..backends.tuning import RpcSettings, tune_graph
    from ..passes import PassManager
    from .cli import _progress, model_source

    say = _progress(args.quiet)
    if args.target != "cpu":
        raise InputError(f"optc tune supports --target cpu only, not '{args.target}'")
    rpc = RpcSettings.parse(args.rpc, args.key or "") if args.rpc else None
    if args.key and not args.rpc:
        raise InputError("--key is the device key of --rpc HOST:PORT; give both")
    model, options = model_source(args, say)
    options.pop("source", None)
    graph = compiler.load(model, **options)
    passes: Any = args.passes or compiler.DEFAULT_PIPELINE
    say(f"running passes: {passes} (compile with the same --passes to use the tuned kernels)")
    PassManager(passes, verify=True, check_numerics=False).run(graph)
    say("extracting kernels (MetaSchedule's first start takes about 20 s)")
    summary = tune_graph(graph, args.db, args.trials, rpc=rpc, seed=args.seed, progress=say)
    print(f"tuned {len(summary.tasks)} kernels in {summary.seconds:.1f} s: {summary.trials_run} trials run, "
          f"{summary.trials_skipped} skipped (already in {args.db})")
    validated = summary.validation.by_key() if summary.validation is not None else {}
    for task in summary.tasks:
        best = f"{task.best_ms:.4f} ms" if task.best_ms is not None else "no valid candidate"
        kernel = validated.get(task.key)
        in_model = "" if kernel is None else (
            f"  in model: default {kernel.default_ms:.4f} ms, tuned {kernel.tuned_ms:.4f} ms -> uses "
            f"{'tuned' if kernel.uses_tuned else 'default'}")
        trials = task.trials_before + task.trials_run
        print(f"  {task.name:<48} x{task.weight:<3} {trials:>4} trials  best {best}{in_model}")
    print(_validation_line(summary))
    print(f"database: {args.db} (use it with 'optc compile ... --db {args.db}')")
    return 0


def _validation_line(summary: Any) -> str:
    validation = summary.validation
    if validation is None:
        return f"in-model validation skipped: {summary.validation_skipped}"
    if not validation.kernels:
        return "in-model: no tuned kernel of this model runs in it (nothing to validate)"
    return (f"in-model: {validation.tuned_used} tuned kernels used, {validation.default_kept} keep optc's default; "
            f"model {validation.default_total_ms:.3f} ms default-only vs {validation.chosen_total_ms:.3f} ms "
            f"with the chosen kernels ({validation.all_tuned_total_ms:.3f} ms with every tuned kernel)")


def register_tune(sub: Any) -> None:
    parser = sub.add_parser("tune", help="auto-tune a model's kernels (MetaSchedule) into a database directory")
    parser.add_argument("model", nargs="?", help="an .onnx file")
    parser.add_argument("--example", metavar="NAME[:SIZE]", help="an embedded example model instead of a file (see 'optc examples')")
    parser.add_argument("--target", default="cpu", help="target name (cpu only)")
    parser.add_argument("--trials", type=int, required=True, help="measured candidates per kernel (task)")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"database directory, created or resumed (default {DEFAULT_DB})")
    parser.add_argument("--passes", default=None, help="optc pipeline before tuning (default: cleanup,fuse); "
                        "compile with the same one")
    parser.add_argument("--shape", action="append", help="bind an input shape: NAME=1x3x224x224 (repeatable)")
    parser.add_argument("--rpc", help="HOST:PORT of a TVM RPC tracker: measure on its devices")
    parser.add_argument("--key", help="device key the RPC servers registered with the tracker")
    parser.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=cmd_tune)
