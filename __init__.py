"""optc: a compiler-style graph rewriting toolkit for deep learning models.

Heavy dependencies (torch, TVM, onnx) load only when the function that needs them is called.
"""

from __future__ import annotations

from .errors import OptcError

__version__ = "0.1.0"
__all__ = ["OptcError", "__version__"]
