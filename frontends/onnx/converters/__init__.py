"""ONNX op converters, one module per family; importing this package registers them all."""

from . import control, elementwise, nn, quant, reduce, resize, sequence, tensor  # noqa: F401

__all__ = ["control", "elementwise", "nn", "quant", "reduce", "resize", "sequence", "tensor"]
