"""GPTQ (Frantar et al., 2022): quantize a weight one input row at a time, and push each row's
rounding error onto the rows not quantized yet, weighted by the inverse Hessian of the layer's
calibration inputs, so the layer's *output* error (not the weight error) is what is minimized.

For a linear layer ``y = x @ W`` (W is (K, N)) and calibration inputs X (rows, K), the Hessian
of the squared output error is ``H = 2 X^T X / rows``. With ``U`` the upper Cholesky factor of
``H^-1`` (dampened by 1% of its mean diagonal), for k = 0..K-1::

    q_k   = quantize(W[k])                      # group scale taken from the updated rows at group start
    err   = (W[k] - q_k) / U[k, k]
    W[k+1:] -= U[k, k+1:]^T  err                # compensate in the rows still to come

This is the paper's algorithm without its lazy-batch blocking (the layers here are small) and
without act-order. Calibration inputs come from the float model (not re-run through the
quantized prefix).
"""

from __future__ import annotations

import numpy as np

from ...errors import OptcError
from .weight_only import level_range


def hessian(activations: np.ndarray) -> np.ndarray:
    rows = max(activations.shape[0], 1)
    return 2.0 * activations.T @ activations / rows


def gptq_quantize(weight: np.ndarray, activations: np.ndarray, bits: int, group_size: int,
                  damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(int values (K, N) in the ``bits`` range, float32 scales (K / group_size, N)) for ``weight`` (K, N)."""
    depth, width = weight.shape
    if activations.shape[1] != depth:
        raise OptcError(f"GPTQ: calibration inputs have {activations.shape[1]} features, the weight {depth}")
    low, high = level_range(bits)
    work = weight.astype(np.float64).T.copy()  # (N, K): one column per input row of W
    h = hessian(activations.astype(np.float64))
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    work[:, dead] = 0.0
    h[np.diag_indices(depth)] += damp * float(np.mean(np.diag(h)))
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError as error:
        raise OptcError(f"GPTQ: the calibration Hessian is not positive definite ({error}); give more calibration data") from error
    values = np.zeros((width, depth), dtype=np.int8)
    scales = np.zeros((depth // group_size, width), dtype=np.float32)
    scale = np.ones(width)
    for k in range(depth):
        if k % group_size == 0:
            peak = np.max(np.abs(work[:, k : k + group_size]), axis=1)
            scale = np.where(peak > 0, peak / high, 1.0).astype(np.float32).astype(np.float64)
            scales[k // group_size] = scale
        column = work[:, k]
        quantized = np.clip(np.rint(column / scale), low, high)
        values[:, k] = quantized
        error = (column - quantized * scale) / upper[k, k]
        work[:, k + 1 :] -= np.outer(error, upper[k, k + 1 :])
    return values.T.copy(), scales
