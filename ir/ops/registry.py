"""The op registry: per op, its attribute schema, type inference, NumPy reference and cost.

One op, one place. Frontends convert into these ops and ``backends/lower`` converts out of them;
adding an op means one ``define`` call in the family file, nothing else in ``ir/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ShapeError, VerificationError
from ..types import DTYPES, TensorType

REQUIRED = object()

# Attribute kinds and the Python values they accept. Attributes are never arrays.
_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, (bool, np.bool_)),
    "str": lambda v: isinstance(v, str),
    "dtype": lambda v: isinstance(v, str) and v in DTYPES,
    "ints": lambda v: isinstance(v, (tuple, list)) and all(_KIND_CHECKS["int"](x) for x in v),
    "floats": lambda v: isinstance(v, (tuple, list)) and all(_KIND_CHECKS["float"](x) for x in v),
    # a shape: ints or symbol names
    "dims": lambda v: isinstance(v, (tuple, list)) and all(_KIND_CHECKS["int"](x) or isinstance(x, str) for x in v),
    "optional_int": lambda v: v is None or _KIND_CHECKS["int"](v),
    "optional_float": lambda v: v is None or _KIND_CHECKS["float"](v),
    "optional_ints": lambda v: v is None or _KIND_CHECKS["ints"](v),
}


def _normalize(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "int" or kind == "optional_int":
        return int(value)
    if kind == "float" or kind == "optional_float":
        return float(value)
    if kind == "bool":
        return bool(value)
    if kind in ("ints", "optional_ints"):
        return tuple(int(x) for x in value)
    if kind == "floats":
        return tuple(float(x) for x in value)
    if kind == "dims":
        return tuple(x if isinstance(x, str) else int(x) for x in value)
    return value


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = REQUIRED

    def __post_init__(self) -> None:
        if self.kind not in _KIND_CHECKS:
            raise ValueError(f"unknown attribute kind {self.kind}")


InferFn = Callable[[list[TensorType], dict[str, Any]], "TensorType | list[TensorType]"]
ReferenceFn = Callable[..., "np.ndarray | tuple[np.ndarray, ...]"]
FlopsFn = Callable[[list[TensorType], list[TensorType], dict[str, Any]], int]


def no_flops(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
    return 0


def flops_per_output(per_element: int = 1) -> FlopsFn:
    def count(inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
        return per_element * sum(out.numel for out in outputs)

    return count


@dataclass(frozen=True)
class OpDef:
    name: str
    infer_fn: InferFn
    reference_fn: ReferenceFn
    min_inputs: int = 1
    max_inputs: int | None = 1  # None: variadic
    attrs: dict[str, Attr] = field(default_factory=dict)
    flops_fn: FlopsFn = no_flops
    doc: str = ""

    def check_attrs(self, attrs: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Validate against the schema, fill defaults, normalize lists to tuples."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise VerificationError(
                f"{where}: {self.name} has no attribute(s) {sorted(unknown)}; known: {sorted(self.attrs)}"
            )
        checked: dict[str, Any] = {}
        for attr_name, spec in self.attrs.items():
            if attr_name in attrs:
                value = attrs[attr_name]
                if not _KIND_CHECKS[spec.kind](value):
                    raise VerificationError(
                        f"{where}: attribute {attr_name}={value!r} of {self.name} must be {spec.kind}"
                    )
                checked[attr_name] = _normalize(spec.kind, value)
            elif spec.default is REQUIRED:
                raise VerificationError(f"{where}: {self.name} needs attribute '{attr_name}'")
            else:
                checked[attr_name] = spec.default
        return checked

    def check_arity(self, count: int, where: str) -> None:
        if count < self.min_inputs or (self.max_inputs is not None and count > self.max_inputs):
            expected = (
                f"{self.min_inputs}" if self.max_inputs == self.min_inputs
                else f"{self.min_inputs}..{self.max_inputs if self.max_inputs is not None else 'n'}"
            )
            raise ShapeError(f"{where}: {self.name} takes {expected} inputs, got {count}")

    def infer(self, input_types: Sequence[TensorType], attrs: dict[str, Any], where: str = "") -> list[TensorType]:
        """Output types for these input types; failures become a ShapeError naming ``where``."""
        input_types = list(input_types)
        self.check_arity(len(input_types), where or self.name)
        try:
            out = self.infer_fn(input_types, attrs)
        except ShapeError as error:
            raise ShapeError(f"{where or self.name}: {error}") from error
        except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError, VerificationError) as error:
            shown = ", ".join(str(t) for t in input_types)
            raise ShapeError(f"{where or self.name}: cannot infer {self.name}({shown}) with {attrs}: {error}") from error
        return [out] if isinstance(out, TensorType) else list(out)

    def count_flops(self, inputs: list[TensorType], outputs: list[TensorType], attrs: dict[str, Any]) -> int:
        return int(self.flops_fn(inputs, outputs, attrs))

    def run(self, arrays: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        """Run the NumPy reference; always returns a list of arrays."""
        out = self.reference_fn(*arrays, **attrs)
        if isinstance(out, (tuple, list)):
            return [np.asarray(item) for item in out]
        return [np.asarray(out)]


_REGISTRY: dict[str, OpDef] = {}


def define(
    name: str,
    infer: InferFn,
    reference: ReferenceFn,
    *,
    inputs: int | tuple[int, int | None] = 1,
    attrs: dict[str, Attr] | None = None,
    flops: FlopsFn = no_flops,
    doc: str = "",
) -> OpDef:
    """Register an op. ``inputs`` is a count or (min, max) with max None for variadic."""
    if name in _REGISTRY:
        raise ValueError(f"op {name} is defined twice")
    low, high = (inputs, inputs) if isinstance(inputs, int) else inputs
    opdef = OpDef(name, infer, reference, low, high, dict(attrs or {}), flops, doc)
    _REGISTRY[name] = opdef
    return opdef


def get(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise VerificationError(f"unknown op '{name}' (not in the op registry)") from None


def is_registered(name: str) -> bool:
    _ensure_loaded()
    return name in _REGISTRY


def all_ops() -> dict[str, OpDef]:
    _ensure_loaded()
    return dict(_REGISTRY)


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import cache, elementwise, linalg, nn, quant, reduce, tensor  # noqa: F401  (registers ops)


# ---- shape helpers shared by the family files --------------------------------------------------

def broadcast_shapes(*shapes: Sequence[Any]) -> tuple:
    """NumPy broadcasting over dims that may be symbol names."""
    rank = max((len(shape) for shape in shapes), default=0)
    result = []
    for axis in range(rank):
        dims = []
        for shape in shapes:
            offset = axis - (rank - len(shape))
            dims.append(shape[offset] if offset >= 0 else 1)
        chosen: Any = 1
        for dim in dims:
            if dim == 1:
                continue
            if chosen == 1:
                chosen = dim
            elif chosen != dim:
                raise ShapeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
        result.append(chosen)
    return tuple(result)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0
