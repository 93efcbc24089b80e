"""Several entry points over shared state: ``EntryModel`` and the ``Session`` that threads state.

An iterative model (a decoder with a KV cache, a denoiser with a feature cache) compiles into a
few graphs, the *entry points*, that pass state to each other. State is functional: an entry
point reads a state buffer as an ordinary input and writes it as an ordinary output, so every
graph keeps static shapes and every backend can run it. The state table says which input reads
and which output writes each buffer, per entry point:

    state = {"key_cache_0": {"init": "zeros",
                             "inputs": {"prefill": "past_key_0", "decode": "past_key_0"},
                             "outputs": {"prefill": "present_key_0", "decode": "present_key_0"}}}

``init`` is ``"zeros"`` (a buffer read before anything wrote it is zeros) or ``"none"`` (reading
it first is an error: a cached denoiser step needs a full step before it). Shape and dtype come
from the graphs and must agree across entry points. A ``Session`` holds the buffers on the device
between calls, so a decode loop never copies its caches through NumPy (for compiled models
without ``run_device``, such as the C bundles of the mcu target, it holds NumPy arrays).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputError
from ..ir.graph import Graph

ENTRY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
STATE_INITS = ("zeros", "none")


@dataclass(frozen=True)
class StateBuffer:
    """One persistent buffer: its type, how it starts, and which entry inputs/outputs carry it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    init: str = "zeros"
    inputs: dict[str, str] = field(default_factory=dict)   # entry -> input name that reads it
    outputs: dict[str, str] = field(default_factory=dict)  # entry -> output name that writes it

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "init": self.init,
                "inputs": dict(self.inputs), "outputs": dict(self.outputs)}


def check_entry_name(name: str) -> str:
    if not isinstance(name, str) or not ENTRY_NAME.fullmatch(name):
        raise InputError(f"entry point name {name!r} must be a letter then letters, digits, '_' or '-' (at most 64)")
    return name


def resolve_state(graphs: Mapping[str, Graph], state: Mapping[str, Mapping[str, Any]] | None) -> dict[str, StateBuffer]:
    """Check a state table against the entry graphs; fill in shapes and dtypes.

    Every named input/output must exist, and every graph value carrying one buffer must have the
    same static shape and dtype. Errors name the buffer, the entry point and what to fix.
    """
    resolved: dict[str, StateBuffer] = {}
    for name, spec in (state or {}).items():
        unknown = set(spec) - {"init", "inputs", "outputs"}
        if unknown:
            raise InputError(f"state '{name}' has unknown key(s) {sorted(unknown)}; use init, inputs, outputs")
        init = spec.get("init", "zeros")
        if init not in STATE_INITS:
            raise InputError(f"state '{name}' has init {init!r}; use one of {STATE_INITS}")
        types = []
        for role, names_by_entry in (("inputs", spec.get("inputs", {})), ("outputs", spec.get("outputs", {}))):
            for entry, value_name in names_by_entry.items():
                if entry not in graphs:
                    raise InputError(f"state '{name}' names entry point '{entry}'; entry points: {sorted(graphs)}")
                values = graphs[entry].inputs if role == "inputs" else graphs[entry].outputs
                match = [value for value in values if value.name == value_name]
                if not match:
                    raise InputError(
                        f"state '{name}': entry point '{entry}' has no {role[:-1]} '{value_name}' "
                        f"({role}: {[value.name for value in values]})"
                    )
                types.append((entry, value_name, match[0].type))
        if not types:
            raise InputError(f"state '{name}' is read and written by no entry point")
        first = types[0][2]
        for entry, value_name, value_type in types:
            if value_type != first or not value_type.is_static:
                raise InputError(
                    f"state '{name}' is {value_type} at '{value_name}' of '{entry}' but {first} at "
                    f"'{types[0][1]}' of '{types[0][0]}'; a state buffer needs one static type"
                )
        resolved[name] = StateBuffer(name, first.static_shape(), first.dtype, init,
                                     dict(spec.get("inputs", {})), dict(spec.get("outputs", {})))
    return resolved


def state_from_json(data: Mapping[str, Any]) -> dict[str, StateBuffer]:
    try:
        return {
            name: StateBuffer(name, tuple(int(dim) for dim in item["shape"]), str(item["dtype"]), str(item["init"]),
                              {str(k): str(v) for k, v in item["inputs"].items()},
                              {str(k): str(v) for k, v in item["outputs"].items()})
            for name, item in data.items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ArtifactError(f"the manifest's state table is malformed ({error}); recompile the model") from error


class EntryModel:
    """Compiled entry points by name (``CompiledModel`` each) and the state they share."""

    def __init__(self, models: Mapping[str, Any], state: Mapping[str, StateBuffer] | None = None) -> None:
        if not models:
            raise InputError("an EntryModel needs at least one entry point")
        self.models = dict(models)
        self.state = dict(state or {})

    @property
    def names(self) -> list[str]:
        return list(self.models)

    @property
    def default(self) -> str:
        return next(iter(self.models))

    def entry(self, name: str | None = None) -> Any:
        """The ``CompiledModel`` of entry point ``name`` (the first one when None)."""
        if name is None:
            return self.models[self.default]
        try:
            return self.models[name]
        except KeyError:
            raise InputError(f"no entry point '{name}'; entry points: {', '.join(self.models)}") from None

    def run(self, feeds: Mapping[str, np.ndarray], entry: str | None = None) -> dict[str, np.ndarray]:
        """Run one entry point statelessly: state inputs must be in ``feeds``."""
        return self.entry(entry).run(feeds)

    def state_inputs(self, entry: str) -> dict[str, str]:
        """Input name -> state buffer name for ``entry``."""
        return {buffer.inputs[entry]: name for name, buffer in self.state.items() if entry in buffer.inputs}

    def state_outputs(self, entry: str) -> dict[str, str]:
        """Output name -> state buffer name for ``entry``."""
        return {buffer.outputs[entry]: name for name, buffer in self.state.items() if entry in buffer.outputs}

    def session(self) -> Session:
        return Session(self)


class Session:
    """Runs entry points with the state buffers held between calls (on the device).

        session = model.session()
        logits = session.run("prefill", {"input_ids": prompt, "position": zero})["logits"]
        logits = session.run("decode", {"input_ids": token, "position": length})["logits"]

    ``run`` takes only the non-state inputs and returns only the non-state outputs; the state
    outputs replace the buffers. ``state(name)`` reads a buffer, ``set_state`` writes one (for
    host-side updates such as extrapolating a cached feature), ``reset`` forgets them all.
    """

    def __init__(self, model: EntryModel) -> None:
        self.model = model
        self._buffers: dict[str, Any] = {}

    def reset(self) -> None:
        self._buffers.clear()

    def has_state(self, name: str) -> bool:
        return name in self._buffers

    def state(self, name: str) -> np.ndarray:
        buffer = self._buffer_spec(name)
        if name not in self._buffers:
            return np.zeros(buffer.shape, buffer.dtype) if buffer.init == "zeros" else self._unset(buffer)
        return _as_numpy(self._buffers[name])

    def set_state(self, name: str, array: np.ndarray) -> None:
        buffer = self._buffer_spec(name)
        array = np.asarray(array)
        if tuple(array.shape) != buffer.shape or array.dtype.name != buffer.dtype:
            raise InputError(f"state '{name}' is {buffer.dtype}{list(buffer.shape)}, got {array.dtype.name}{list(array.shape)}")
        self._buffers[name] = np.require(array, requirements="C")  # moved to the device when read

    def run(self, entry: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.model.entry(entry)
        state_inputs = self.model.state_inputs(entry)
        clashing = sorted(set(feeds) & set(state_inputs))
        if clashing:
            raise InputError(f"inputs {clashing} of '{entry}' are state; the session supplies them (use set_state)")
        on_device = hasattr(model, "run_device")
        all_feeds: dict[str, Any] = dict(feeds)
        for input_name, state_name in state_inputs.items():
            buffer = self.model.state[state_name]
            if state_name not in self._buffers:
                if buffer.init != "zeros":
                    self._unset(buffer, entry)
                self._buffers[state_name] = np.zeros(buffer.shape, buffer.dtype)
            held = self._buffers[state_name]
            if on_device and isinstance(held, np.ndarray):
                held = self._buffers[state_name] = self._to_device(held, model)
            all_feeds[input_name] = held if on_device else _as_numpy(held)
        results = model.run_device(all_feeds) if on_device else model.run(all_feeds)
        state_outputs = self.model.state_outputs(entry)
        outputs = {}
        for name, result in results.items():
            if name in state_outputs:
                self._buffers[state_outputs[name]] = result
            else:
                outputs[name] = _as_numpy(result)
        return outputs

    def _buffer_spec(self, name: str) -> StateBuffer:
        try:
            return self.model.state[name]
        except KeyError:
            raise InputError(f"no state buffer '{name}'; buffers: {sorted(self.model.state)}") from None

    @staticmethod
    def _to_device(array: np.ndarray, model: Any) -> Any:
        import tvm  # run_device exists only on TVM-compiled models, so TVM is loaded already

        return tvm.runtime.tensor(array, model.target.device())

    def _unset(self, buffer: StateBuffer, entry: str | None = None) -> Any:
        writers = ", ".join(f"'{name}'" for name in buffer.outputs) or "no entry point"
        reader = f"entry point '{entry}' reads" if entry else "reading"
        raise InputError(f"{reader} state '{buffer.name}' before anything wrote it; run {writers} first")


def _as_numpy(array: Any) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.numpy()


__all__ = ["EntryModel", "Session", "StateBuffer", "check_entry_name", "resolve_state", "state_from_json"]
