"""Tensor types: a shape of ints or symbol names, and a dtype named as NumPy names it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from ..errors import VerificationError

Dim = Union[int, str]

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in (
        "float64", "float32", "float16",
        "int64", "int32", "int16", "int8",
        "uint64", "uint32", "uint16", "uint8",
        "bool",
    )
}
FLOAT_DTYPES = frozenset({"float64", "float32", "float16"})
INT_DTYPES = frozenset(
    {"int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8"}
)


def dtype_name(dtype: object) -> str:
    """The optc name of a NumPy dtype (or anything np.dtype accepts)."""
    name = np.dtype(dtype).name  # type: ignore[arg-type]
    if name not in DTYPES:
        raise VerificationError(f"dtype {name} is not supported by optc (use one of {sorted(DTYPES)})")
    return name


@dataclass(frozen=True, slots=True)
class TensorType:
    """A tensor's shape and dtype. Dims are ints, or strings naming a symbolic size."""

    shape: tuple[Dim, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise VerificationError(f"unknown dtype '{self.dtype}'")
        for dim in self.shape:
            if isinstance(dim, bool) or not isinstance(dim, (int, str)):
                raise VerificationError(f"bad dim {dim!r} in shape {self.shape}")
            if isinstance(dim, int) and dim < 0:
                raise VerificationError(f"negative dim in shape {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(dim, int) for dim in self.shape)

    @property
    def numel(self) -> int:
        """Element count; symbolic dims count as 1 (a lower bound for cost estimates)."""
        count = 1
        for dim in self.shape:
            count *= dim if isinstance(dim, int) else 1
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    def static_shape(self) -> tuple[int, ...]:
        if not self.is_static:
            raise VerificationError(f"shape {self.shape} has symbolic dims where a static one is needed")
        return tuple(int(dim) for dim in self.shape)  # type: ignore[arg-type]

    def with_shape(self, shape: tuple[Dim, ...]) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(dim) for dim in self.shape)}]"

    @staticmethod
    def of(array: np.ndarray) -> "TensorType":
        return TensorType(tuple(int(dim) for dim in array.shape), dtype_name(array.dtype))
