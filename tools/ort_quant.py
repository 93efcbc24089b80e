"""ONNX Runtime's own int8 quantization of an ONNX model: the peer optc's quantized builds are timed against.

Used by ``optc bench --vs ort-int8,ort-int8-dynamic`` and ``tools/quant_bench.py``:

* ``static``: ``quantize_static``, QDQ format, per-channel weights, activation ranges from a
  ``CalibrationDataReader`` over the given calibration feeds (the same ones optc calibrates on);
* ``dynamic``: ``quantize_dynamic`` (weights int8 ahead of time, activations quantized per run).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import OptcError

METHODS = ("static", "dynamic")
DESCRIPTIONS = {"static": "int8 QDQ static per-channel", "dynamic": "int8 dynamic"}


class OrtQuantizationError(OptcError):
    """onnxruntime.quantization could not quantize the model."""


def describe(method: str, calibration: str = "") -> str:
    """What the table notes for the peer, e.g. ``int8 QDQ static per-channel, calibrated on data.npz``."""
    text = DESCRIPTIONS[method]
    return f"{text}, calibrated on {calibration}" if method == "static" and calibration else text


def quantize_with_ort(onnx_path: str | Path, output: str | Path, method: str,
                      feeds: Iterable[Mapping[str, np.ndarray]] | None = None) -> str:
    """Write ``onnx_path`` quantized by ``onnxruntime.quantization`` to ``output``; returns the path.

    ``feeds`` (calibration samples keyed by input name) are required for ``static``; inputs the
    ONNX model does not have are dropped from them.
    """
    if method not in METHODS:
        raise OptcError(f"unknown ONNX Runtime quantization {method!r}; use one of {', '.join(METHODS)}")
    try:
        from onnxruntime import quantization
    except ImportError as error:
        raise OrtQuantizationError(f"onnxruntime.quantization is not importable ({error}); install onnxruntime") from error
    # the quantizer logs pre-processing advice on the root logger at WARNING for every model
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        if method == "dynamic":
            quantization.quantize_dynamic(str(onnx_path), str(output))
            return str(output)
        import onnx

        names = {value.name for value in onnx.load(str(onnx_path), load_external_data=False).graph.input}
        samples = [{name: np.asarray(array) for name, array in feed.items() if name in names} for feed in feeds or ()]
        if not samples:
            raise OrtQuantizationError("static ONNX Runtime quantization needs calibration feeds (--calib or random ones)")

        class Reader(quantization.CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(samples)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.items, None)

        quantization.quantize_static(str(onnx_path), str(output), Reader(),
                                     quant_format=quantization.QuantFormat.QDQ, per_channel=True)
    except OptcError:
        raise
    except Exception as error:  # onnxruntime raises plain exceptions of many kinds
        message = " ".join(str(error).split())[:300]
        raise OrtQuantizationError(
            f"onnxruntime {method} quantization of {onnx_path} failed: {type(error).__name__}: {message}") from error
    finally:
        root.setLevel(level)
    return str(output)


__all__ = ["DESCRIPTIONS", "METHODS", "OrtQuantizationError", "describe", "quantize_with_ort"]
