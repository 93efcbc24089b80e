"""Named passes and pipeline strings such as ``cleanup,fuse,slice(ratio=0.3)``.

A pass is registered under a name with ``register_pass``; its factory is usually a frozen
dataclass whose fields are the pass options, so ``slice(ratio=0.3)`` builds ``Slice(ratio=0.3)``.
Positional arguments fill fields in declaration order. Values are parsed as Python literals when
they are ones (numbers, True/False, None, quoted strings) and kept as bare strings otherwise
(``quant(int8,calib=data.npz)``).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import PipelineError
from ..ir.graph import Graph

Pass = Callable[[Graph], bool]

_PASSES: dict[str, Callable[..., Pass]] = {}


def register_pass(name: str) -> Callable[[Callable[..., Pass]], Callable[..., Pass]]:
    def register(factory: Callable[..., Pass]) -> Callable[..., Pass]:
        if name in _PASSES:
            raise ValueError(f"pass {name} is registered twice")
        _PASSES[name] = factory
        if isinstance(factory, type):
            factory.pass_name = name  # type: ignore[attr-defined]  (instances report it)
        return factory

    return register


def available_passes() -> dict[str, str]:
    """Name -> first line of the pass's docstring."""
    _load_builtin_passes()
    return {name: (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else "" for name, factory in sorted(_PASSES.items())}


def pass_name(pass_: Pass) -> str:
    return getattr(pass_, "pass_name", None) or getattr(pass_, "__name__", None) or type(pass_).__name__


def _literal(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced ')' in pipeline '{text}'")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if depth:
        raise PipelineError(f"unbalanced '(' in pipeline '{text}'")
    if current.strip():
        parts.append(current.strip())
    return parts


def parse_pipeline(text: str) -> list[Pass]:
    """Build the passes a pipeline string names; errors say which pass and what is known."""
    _load_builtin_passes()
    passes: list[Pass] = []
    for item in _split(text or ""):
        name, _, rest = item.partition("(")
        name = name.strip()
        if name not in _PASSES:
            raise PipelineError(f"unknown pass '{name}'; known passes: {', '.join(sorted(_PASSES))}")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        if rest:
            if not rest.endswith(")"):
                raise PipelineError(f"'{item}' must end with ')'")
            for argument in _split(rest[:-1]):
                key, equals, value = argument.partition("=")
                if equals:
                    kwargs[key.strip()] = _literal(value)
                else:
                    args.append(_literal(argument))
        factory = _PASSES[name]
        try:
            built = factory(*args, **kwargs)
        except TypeError as error:
            options = [f.name for f in dataclasses.fields(factory)] if dataclasses.is_dataclass(factory) else []
            raise PipelineError(f"bad options for pass '{name}': {error}; options: {options}") from error
        try:
            setattr(built, "pass_name", item)
        except (AttributeError, dataclasses.FrozenInstanceError):
            object.__setattr__(built, "pass_name", item)
        passes.append(built)
    return passes


_builtin_loaded = False


def _load_builtin_passes() -> None:
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        from . import blocks, cleanup, fusion, presets, quant, recognize, slicing, tokens  # noqa: F401  (registers passes)
