"""``optc compile --calib data.npz``: hand calibration data to the pipeline's ``quant`` passes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ..errors import InputError


def progress_bar(quiet: bool, width: int = 30) -> Callable[[int, int], None]:
    """A one-line calibration progress bar on stderr (nothing when quiet)."""

    def report(done: int, total: int) -> None:
        if quiet:
            return
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\rcalibrating [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


def with_calibration(pipeline: str, calib: str | None, quiet: bool = False) -> str | list[Any]:
    """The pipeline with ``calib`` (and a progress bar) set on every ``quant`` pass that has none.

    Returns the string unchanged when there is no ``--calib``; passes otherwise.
    """
    if not calib:
        return pipeline
    from ..passes import parse_pipeline
    from ..passes.quant import Quantize

    passes = parse_pipeline(pipeline)
    quant_passes = [pass_ for pass_ in passes if isinstance(pass_, Quantize)]
    if not quant_passes:
        raise InputError(f"--calib {calib} is given but the pipeline '{pipeline}' has no quant(...) pass to use it")
    for pass_ in quant_passes:
        if pass_.calib is None and pass_.feeds is None:
            pass_.calib = calib
        pass_.progress = progress_bar(quiet)
    return passes
