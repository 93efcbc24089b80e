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

from .errors import ModelLoadError
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
) -> Any:
    """Compile ``model`` for ``target``; returns a ``backends.artifact.Artifact``.

    ``passes`` is a pipeline string (``"cleanup"``) or a list of passes. With ``output`` the
    artifact is also published there atomically. With ``check`` the pass manager measures every
    pass against the reference interpreter and the compiled library is compared with the
    reference on seeded sample inputs; both go into the manifest.
    """
    from .backends import compile_graph
    from .backends.artifact import Artifact, write_artifact
    from .backends.targets import get_target
    from .passes import PassManager
    from .passes.report import compare_outputs

    say = progress or (lambda message: logger.info(message))
    say("loading model")
    graph = load(model, example_inputs=example_inputs, input_shapes=input_shapes, input_names=input_names,
                 output_names=output_names)
    verify(graph)
    target_object = get_target(target)
    pipeline_text = passes if isinstance(passes, str) else ",".join(getattr(p, "pass_name", type(p).__name__) for p in passes)
    say(f"running passes: {pipeline_text or '(none)'}")
    feeds = sample_inputs(graph, seed=0)
    manager = PassManager(passes, verify=True, check_numerics=check, sample_feeds=feeds, progress=say)
    report = manager.run(graph)
    say(f"compiling for {target} ({len(graph.nodes)} nodes)")
    compiled = compile_graph(graph, target, **dict(target_options or {}))
    manifest: dict[str, Any] = {
        "target": target_object.describe(),
        "pipeline": pipeline_text,
        "report": report.to_json(),
        "source": source or (str(model) if isinstance(model, (str, Path)) else type(model).__name__),
    }
    if check:
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
