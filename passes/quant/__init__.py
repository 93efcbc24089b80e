"""Quantization: calibration and observers, static int8 PTQ, dynamic int8, weight-only int8/int4
(RTN and GPTQ), mixed precision under an accuracy budget. ``quant(...)`` in a pipeline string."""

from .calibrate import load_calibration, observe_values
from .gptq import gptq_quantize
from .layers import LayerRow, QuantReport
from .qdq import fold_qdq
from .observers import OBSERVERS, make_observer
from .quantize import Quantize, output_error
from .weight_only import rtn_quantize

__all__ = ["OBSERVERS", "LayerRow", "QuantReport", "Quantize", "fold_qdq", "gptq_quantize", "load_calibration", "make_observer",
           "observe_values", "output_error", "rtn_quantize"]
