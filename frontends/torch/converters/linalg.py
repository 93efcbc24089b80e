"""Linear-algebra ATen ops: mm, bmm, addmm and addmv."""

from __future__ import annotations

import torch

from ....ir.graph import Value
from ..aten import Context, Scalar, _binary, converts

aten = torch.ops.aten


# ---- linear algebra --------------------------------------------------------------------------------------


@converts(aten.mm.default, aten.bmm.default)
def matmul(ctx: Context, self: Value, mat2: Value) -> Value:
    dtype = ctx.out_dtype()
    return ctx.op("linalg.matmul", ctx.cast(self, dtype), ctx.cast(mat2, dtype))


def _affine(ctx: Context, product: Value, bias: Value | None, beta: Scalar, alpha: Scalar) -> Value:
    if alpha != 1:
        product = _binary(ctx, "math.mul", product, alpha, product.dtype)
    if bias is None or beta == 0:
        return product
    bias = ctx.cast(bias, product.dtype)
    if beta != 1:
        bias = _binary(ctx, "math.mul", bias, beta, product.dtype)
    return ctx.op("math.add", product, bias)


@converts(aten.addmm.default, aten.addmv.default)
def addmm(ctx: Context, self: Value, beta: Scalar = 1, alpha: Scalar = 1, mat1: Value | None = None,
          mat2: Value | None = None, mat: Value | None = None, vec: Value | None = None) -> Value:
    left, right = (mat1, mat2) if mat1 is not None else (mat, vec)
    assert left is not None and right is not None
    dtype = ctx.out_dtype()
    product = ctx.op("linalg.matmul", ctx.cast(left, dtype), ctx.cast(right, dtype))
    return _affine(ctx, product, self, beta, alpha)
