"""ATen op converters, one module per family; importing this package registers them all."""

from . import elementwise, linalg, nn, reduce, tensor  # noqa: F401

__all__ = ["elementwise", "linalg", "nn", "reduce", "tensor"]
