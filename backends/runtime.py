"""Running compiled models: ``compile_graph``, ``load_compiled`` and ``CompiledModel``.

A CompiledModel holds a Relax VM over the target's library and the graph's params as device
tensors. The graph supplies the signature (input and output names, shapes, dtypes) and the
params, which the library does not contain: ``main`` takes the inputs, then the params.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..errors import ArtifactError, InputError
from ..ir.graph import Graph
from ..ir.interpret import check_inputs
from .library import copy_library_files
from .lower import ENTRY, TRANSFORM_PARAMS, function_params, lower_graph, parameter_name
from .targets import BuildTarget, get_target
from .targets.cpu import use_every_core

logger = logging.getLogger(__name__)


class CompiledModel:
    """A graph compiled for one target, ready to run on NumPy feeds.

    Build one with ``compile_graph`` or ``load_compiled``; ``run`` checks the feeds against the
    graph's signature (an ``InputError`` says what is wrong) and returns the outputs by name.
    """

    def __init__(
        self,
        graph: Graph,
        target: BuildTarget,
        library: tvm.runtime.Module | relax.VMExecutable,
        *,
        source_directory: Path | None = None,
        build_seconds: float | None = None,
    ) -> None:
        self.graph = graph.clone()  # the caller may go on rewriting theirs
        self.target = target
        self.build_seconds = build_seconds
        self._library = library
        self._source_directory = source_directory
        self._device = target.device()
        use_every_core()  # before the first kernel starts TVM's thread pool
        self._vm = relax.VirtualMachine(library, self._device)
        self._main = self._vm[ENTRY]
        self._check_signature()
        params = function_params(self.graph)[len(self.graph.inputs):]
        self._params = [tvm.runtime.tensor(_contiguous(self.graph.params[value]), self._device) for value in params]
        if self._has_function(TRANSFORM_PARAMS):
            # weights the kernels read in another layout (packed panels, transposed tied weights):
            # transformed once here, as the library's own main_transform_params says
            self._params = list(self._vm[TRANSFORM_PARAMS](self._params))

    @property
    def input_names(self) -> list[str]:
        return [value.name for value in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [value.name for value in self.graph.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; ``feeds`` maps every input name to an array of the declared dtype and shape."""
        result = self._main(*self._arguments(feeds), *self._params)
        return {value.name: result[index].numpy() for index, value in enumerate(self.graph.outputs)}

    def run_device(self, feeds: Mapping[str, Any]) -> dict[str, tvm.runtime.Tensor]:
        """Like ``run``, but the outputs stay device tensors and a feed may be one already.

        A ``Session`` keeps state buffers on the device between calls with it.
        """
        on_device = {name: value for name, value in feeds.items() if isinstance(value, tvm.runtime.Tensor)}
        for value in self.graph.inputs:
            tensor = on_device.get(value.name)
            if tensor is not None and (str(tensor.dtype) != value.dtype or len(tensor.shape) != value.type.rank or any(
                    isinstance(dim, int) and dim != actual for dim, actual in zip(value.shape, tensor.shape))):
                raise InputError(
                    f"input '{value.name}' must be {value.dtype}{list(value.shape)}, got {tensor.dtype}{list(tensor.shape)}"
                )
        placeholders = {name: np.empty(tuple(t.shape), str(t.dtype)) for name, t in on_device.items()}
        arrays = {name: value for name, value in feeds.items() if name not in on_device}
        converted = dict(zip(self.input_names, self._arguments({**arrays, **placeholders}, skip=set(on_device))))
        converted.update(on_device)
        result = self._main(*[converted[name] for name in self.input_names], *self._params)
        return {value.name: result[index] for index, value in enumerate(self.graph.outputs)}

    def runner(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A zero-argument callable that runs the model once on ``feeds`` (checked and converted now).

        For benchmarks: a call only invokes the VM and returns its raw result (device tensors in
        output order), without converting anything to NumPy.
        """
        arguments = self._arguments(feeds) + self._params
        main = self._main

        def run_once() -> Any:
            return main(*arguments)

        return run_once

    def export(self, directory: str | Path) -> list[Path]:
        """Write the compiled library file(s) into ``directory`` (params are not written)."""
        directory = Path(directory)
        if isinstance(self._library, relax.VMExecutable):
            return self.target.export(self._library, directory)
        # loaded from disk: the library already exists as files, so copy them
        assert self._source_directory is not None
        return copy_library_files(self.target.library_files(self._source_directory), directory)

    def _has_function(self, name: str) -> bool:
        try:
            self._vm.module["get_function_arity"](name)
        except Exception:  # pylint: disable=broad-except  (the VM raises for unknown functions)
            return False
        return True

    def _check_signature(self) -> None:
        """The library's ``main`` must take this graph's inputs and params, in order (with
        ``main_transform_params``, main takes the inputs and then the transformed params)."""
        expected = [parameter_name(value) for value in function_params(self.graph)]
        arity = int(self._vm.module["get_function_arity"](ENTRY))
        actual = [str(self._vm.module["get_function_param_name"](ENTRY, index)) for index in range(arity)]
        if self._has_function(TRANSFORM_PARAMS):
            expected, actual = expected[:len(self.graph.inputs)], actual[:len(self.graph.inputs)]
        if actual != expected:
            raise ArtifactError(
                f"the compiled library does not match graph {self.graph.name}: its {ENTRY} takes "
                f"{_shorten(actual)}, the graph gives {_shorten(expected)} (recompile the graph)"
            )

    def _arguments(self, feeds: Mapping[str, np.ndarray], skip: set[str] | None = None) -> list[Any]:
        """Checked feeds as device tensors in input order (names in ``skip`` are checked only)."""
        checked = check_inputs(self.graph, feeds)
        self._check_symbols(checked)
        return [
            None if skip and value.name in skip else tvm.runtime.tensor(_contiguous(checked[value.name]), self._device)
            for value in self.graph.inputs
        ]

    def _check_symbols(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Every use of a symbolic dim must get the same size (the VM would fail less clearly)."""
        bound: dict[str, tuple[int, str]] = {}
        for value in self.graph.inputs:
            for dim, size in zip(value.shape, feeds[value.name].shape):
                if not isinstance(dim, str):
                    continue
                if dim in bound and bound[dim][0] != size:
                    first_size, first_input = bound[dim]
                    raise InputError(
                        f"dim '{dim}' is {first_size} in input '{first_input}' but {size} in input '{value.name}'"
                    )
                bound.setdefault(dim, (size, value.name))

    def __repr__(self) -> str:
        return f"<CompiledModel {self.graph.name} for {self.target.name}: {self.input_names} -> {self.output_names}>"


def _contiguous(array: np.ndarray) -> np.ndarray:
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return np.asarray(array, order="C")


def _shorten(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} parameters)"


def compile_graph(graph: Graph, target: str | BuildTarget = "cpu", **target_options: object) -> CompiledModel:
    """Lower ``graph`` to Relax, compile it for ``target`` and load it, ready to run."""
    build_target = get_target(target, **target_options)
    started = time.perf_counter()
    module = lower_graph(graph)
    executable = build_target.build(module)
    seconds = time.perf_counter() - started
    logger.info("compiled graph %s for %s in %.2f s", graph.name, build_target.name, seconds)
    return CompiledModel(graph, build_target, executable, build_seconds=seconds)


def load_compiled(directory: str | Path, graph: Graph, target: str | BuildTarget = "cpu") -> CompiledModel:
    """Load a library ``CompiledModel.export`` wrote; ``graph`` gives the signature and params.

    The library must have been compiled from this graph: only then do its inputs and params
    line up with ``main``'s parameters.
    """
    build_target = get_target(target)
    directory = Path(directory)
    return CompiledModel(graph, build_target, build_target.load_library(directory), source_directory=directory)


__all__ = ["CompiledModel", "compile_graph", "load_compiled"]
