"""The main job, end to end: load a model, run a pipeline, compile for a target, write an artifact.

This module sits on top of every layer (like the command line) and is what ``optc.compile``,
``optc.load`` and ``optc compile`` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, ModelLoadError
from .ir.graph import Graph
from .ir.interpret import interpret, sample_inputs
from .ir.verify import verify

logger = logging.getLogger(__name__)

DEFAULT_PIPELINE = "cleanup,fuse"

Progress = Callable[[str], None]


def load(
    model: Any,
    *,
    example_inputs: tuple | None = None,
    input_shapes: Mapping[str, tuple] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> Graph:
    """An optc Graph from an ONNX file, an artifact directory, a torch module or a Graph (copied)."""
    if isinstance(model, Graph):
        return model.clone()
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.is_dir() and (path / "manifest.json").exists():
            from .backends.artifact import read_manifest
            from .ir import serialize

            read_manifest(path)
            return serialize.load(path)
        if path.suffix.lower() == ".onnx" or (path.is_file() and not path.suffix):
            from .frontends.onnx import load_onnx

            return load_onnx(path, input_shapes=dict(input_shapes) if input_shapes else None)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file; give an .onnx model or an artifact directory")
        raise ModelLoadError(
            f"{path}: optc reads .onnx files and artifact directories; capture PyTorch models from Python "
            "with optc.capture(module, example_inputs)"
        )
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise ModelLoadError("capturing a torch module needs example_inputs (a tuple of tensors)")
        from .frontends.torch import capture

        return capture(model, tuple(example_inputs), input_names=input_names, output_names=output_names)
    raise ModelLoadError(f"cannot load a model from {type(model).__name__}; give a path, a torch.nn.Module or a Graph")


def compile(  # noqa: A001 - the public name users expect
    model: Any,
    target: str = "cpu",
    passes: str | list = DEFAULT_PIPELINE,
    output: str | Path | None = None,
    *,
    example_inputs: tuple | None = None,
    input_shapes: Mapping[str, tuple] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    check: bool = True,
    target_options: Mapping[str, Any] | None = None,
    source: str | None = None,
    progress: Progress | None = None,
    db: str | Path | None = None,
) -> Any:
    """Compile ``model`` for ``target``; returns a ``backends.artifact.Artifact``.

    ``passes`` is a pipeline string (``"cleanup"``) or a list of passes. With ``output`` the
    artifact is also published there atomically. With ``check`` the pass manager measures every
    pass against the reference interpreter and the compiled library is compared with the
    reference on seeded sample inputs; both go into the manifest. ``db`` is a tuning database
    directory from ``optc tune`` (cpu target): its tuned kernels replace the default schedules
    where it has them, and the artifact keeps a copy of it (``tuning/``, hashed in the manifest).
    """
    from .backends import compile_graph
    from .backends.artifact import Artifact, write_artifact
    from .backends.targets import get_target
    from .passes import PassManager
    from .passes.report import compare_outputs

    say = progress or (lambda message: logger.info(message))
    if db is not None:
        if target != "cpu":
            raise InputError(f"a tuning database (--db) applies to --target cpu, not to --target {target}")
        if not (Path(db) / "database_tuning_record.json").is_file():
            raise InputError(f"{db} is not a tuning database (no database_tuning_record.json); "
                             "create it with 'optc tune ... --db DIR'")
        target_options = {**dict(target_options or {}), "tuning_db": str(db)}
    say("loading model")
    graph = load(model, example_inputs=example_inputs, input_shapes=input_shapes, input_names=input_names,
                 output_names=output_names)
    verify(graph)
    target_object = get_target(target, **dict(target_options or {}))
    pipeline_text = passes if isinstance(passes, str) else ",".join(getattr(p, "pass_name", type(p).__name__) for p in passes)
    say(f"running passes: {pipeline_text or '(none)'}")
    feeds = sample_inputs(graph, seed=0)
    manager = PassManager(passes, verify=True, check_numerics=check, sample_feeds=feeds, progress=say)
    report = manager.run(graph)
    say(f"compiling for {target} ({len(graph.nodes)} nodes)")
    if hasattr(target_object, "compile_graph"):  # a target without the Relax VM (mcu: a C bundle)
        compiled = target_object.compile_graph(graph)
    else:
        compiled = compile_graph(graph, target, **dict(target_options or {}))
    manifest: dict[str, Any] = {
        "target": target_object.describe(),
        "pipeline": pipeline_text,
        "report": report.to_json(),
        "source": source or (str(model) if isinstance(model, (str, Path)) else type(model).__name__),
    }
    if getattr(compiled, "memory", None):
        manifest["memory"] = {key: value for key, value in compiled.memory.items() if key != "steps"}
    if check and not getattr(compiled, "runnable", True):  # e.g. --target cuda on a machine without a GPU
        say("nothing here can run the compiled model: skipping the check against the reference")
        manifest["check_skipped"] = f"no device for target {target} on the build machine"
    elif check:
        say("checking the compiled model against the reference interpreter")
        reference = manager.outputs if manager.outputs is not None else interpret(graph, feeds)
        actual = compiled.run(feeds)
        error, cosine = compare_outputs(reference, actual)
        manifest["check"] = {"max_abs_error": error, "cosine": cosine, "inputs": "seeded random, seed 0"}
        if not np.isfinite(error) or cosine < 0.999:
            logger.warning("compiled output differs from the reference: max|err|=%g cosine=%g", error, cosine)
    artifact = Artifact(manifest=manifest, graph=graph, compiled=compiled, extras={"report": report})
    if output is not None:
        say(f"writing artifact to {output}")
        artifact.path = write_artifact(output, graph, compiled, manifest)
    return artifact


def compile_entries(
    entries: Mapping[str, Any],
    target: str = "cpu",
    passes: str | list = DEFAULT_PIPELINE,
    output: str | Path | None = None,
    *,
    state: Mapping[str, Mapping[str, Any]] | None = None,
    check: bool = True,
    check_feeds: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    target_options: Mapping[str, Any] | None = None,
    source: str | None = None,
    progress: Progress | None = None,
) -> Any:
    """Compile several entry points that share state into one artifact; returns an ``Artifact``.

    ``entries`` maps entry point names to models (Graphs, ONNX paths, ...), the default first;
    ``state`` is the state table of ``backends.entries`` (which input reads and which output
    writes each persistent buffer). Every entry runs ``passes`` on its own; the state inputs and
    outputs must survive them. ``check_feeds`` gives per-entry feeds for the check against the
    reference interpreter (seeded random feeds otherwise, which may be out of range for a
    position input). ``artifact.entry(name)``, ``artifact.session()`` and ``optc run --entry``
    use the result.

        split = derive_kv_cache(graph, prompt_length=8)
        artifact = optc.compile_entries(split.entries, state=split.state, output="out/gpt2-kv")
    """
    from .backends import compile_graph
    from .backends.artifact import Artifact, write_artifact
    from .backends.entries import EntryModel, check_entry_name, resolve_state
    from .backends.targets import get_target
    from .errors import InputError
    from .passes import PassManager
    from .passes.report import compare_outputs

    say = progress or (lambda message: logger.info(message))
    if not entries:
        raise InputError("compile_entries needs at least one entry point")
    graphs: dict[str, Graph] = {}
    for name, model in entries.items():
        graphs[check_entry_name(name)] = load(model)
        verify(graphs[name])
    resolve_state(graphs, state)  # names checked before any pass runs
    target_object = get_target(target, **dict(target_options or {}))
    pipeline_text = passes if isinstance(passes, str) else ",".join(getattr(p, "pass_name", type(p).__name__) for p in passes)
    reports, checks, models = {}, {}, {}
    for name, graph in graphs.items():
        say(f"entry point '{name}': running passes {pipeline_text or '(none)'}")
        feeds = dict((check_feeds or {}).get(name) or sample_inputs(graph, seed=0))
        manager = PassManager(passes, verify=True, check_numerics=check, sample_feeds=feeds, progress=say)
        reports[name] = manager.run(graph)
        say(f"entry point '{name}': compiling for {target} ({len(graph.nodes)} nodes)")
        if hasattr(target_object, "compile_graph"):  # a target without the Relax VM (mcu: a C bundle)
            models[name] = target_object.compile_graph(graph)
        else:
            models[name] = compile_graph(graph, target_object)
        if check and getattr(models[name], "runnable", True):
            reference = manager.outputs if manager.outputs is not None else interpret(graph, feeds)
            error, cosine = compare_outputs(reference, models[name].run(feeds))
            checks[name] = {"max_abs_error": error, "cosine": cosine}
            if not np.isfinite(error) or cosine < 0.999:
                logger.warning("entry point %s differs from the reference: max|err|=%g cosine=%g", name, error, cosine)
    buffers = resolve_state(graphs, state)  # and again: the passes must have kept them
    default = next(iter(graphs))
    manifest: dict[str, Any] = {
        "target": target_object.describe(),
        "pipeline": pipeline_text,
        "report": reports[default].to_json(),
        "entry_reports": {name: report.to_json() for name, report in reports.items()},
        "source": source or type(next(iter(entries.values()))).__name__,
        "state": {name: buffer.to_json() for name, buffer in buffers.items()},
    }
    if check and checks:
        manifest["check"] = dict(checks[default], inputs="seeded random, seed 0, or the caller's check_feeds")
        manifest["entry_checks"] = checks
    artifact = Artifact(manifest=manifest, graph=graphs[default], compiled=models[default],
                        extras={"report": reports[default], "reports": reports},
                        entries=EntryModel(models, buffers))
    if output is not None:
        say(f"writing artifact with entry points {', '.join(graphs)} to {output}")
        artifact.path = write_artifact(output, graphs[default], models[default], manifest,
                                       entries={name: (graphs[name], models[name]) for name in graphs})
    return artifact
