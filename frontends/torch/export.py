"""optc Graph -> a trainable ``torch.fx.GraphModule``: the fine-tuning hand-off.

    module = to_torch(graph)                  # float weights are nn.Parameters
    optimizer = torch.optim.Adam(module.parameters(), 1e-3)
    loss = F.cross_entropy(module(images), labels); loss.backward(); optimizer.step()
    tuned = with_module_params(graph, module)  # the same graph with the trained weights
    # or: capture(module, (images,)) to import the module itself again

Every registry op maps to one torch function in ``TORCH_FUNCTIONS`` (op name -> function); the
function takes the node's inputs as tensors and its attributes as keyword arguments, with the
registry's names and NumPy semantics (integer division truncates, ``mod`` follows the divisor, pads
list every begin then every end, ``nn.linear`` weights are (K, N)). The GraphModule's forward takes
the graph inputs in order and returns the output, or a tuple of outputs when there are several.

Params become attributes named after the param with every character outside ``[A-Za-z0-9_]``
replaced by ``_`` (``layer1.0.conv1.weight`` -> ``layer1_0_conv1_weight``);
``module.meta["optc_params"]`` maps attribute names back to param names. The module survives
``copy.deepcopy`` and ``torch.save``/``pickle`` with that mapping.
Which params train is ``trainable``'s choice; the default trains float params of more than one
element except batch-norm running statistics, and keeps the rest (scalars folded from scales and
epsilons, integer and bool tensors) as buffers.
"""

from __future__ import annotations

import keyword
import math
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import OptcError, UnsupportedOpError
from ...ir.graph import Graph, Value
from ...ir.ops import all_ops
from ...ir.ops.nn import ACTIVATIONS
from ...ir.types import FLOAT_DTYPES
from .export_quant import QUANT_TORCH_FUNCTIONS

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint64": torch.uint64, "uint32": torch.uint32, "uint16": torch.uint16, "uint8": torch.uint8,
    "bool": torch.bool,
}

Trainable = Callable[[Graph, Value], bool]

PARAM_NAMES_KEY = "optc_params"  # in GraphModule.meta: attribute name -> graph param name


# ---- elementwise (math.*) ----------------------------------------------------------------------------------

def hard_sigmoid(x: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


def leaky_relu(x: torch.Tensor, *, alpha: float) -> torch.Tensor:
    return F.leaky_relu(x, alpha)


def elu(x: torch.Tensor, *, alpha: float) -> torch.Tensor:
    return F.elu(x, alpha)


def selu(x: torch.Tensor, *, alpha: float, gamma: float) -> torch.Tensor:
    return gamma * F.elu(x, alpha)


def shrink(x: torch.Tensor, *, lambd: float, bias: float) -> torch.Tensor:
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


def clip(x: torch.Tensor, *, min: float | None, max: float | None) -> torch.Tensor:
    if min is None and max is None:
        return x.clone()
    if not x.is_floating_point():
        # NumPy clips to the float bound, then the cast back truncates: the same as a truncated bound
        min = None if min is None else math.trunc(min)
        max = None if max is None else math.trunc(max)
    return torch.clamp(x, min, max).to(x.dtype)


def cast(x: torch.Tensor, *, dtype: str) -> torch.Tensor:
    return x.to(TORCH_DTYPES[dtype])


def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")


def mod(a: torch.Tensor, b: torch.Tensor, *, fmod: bool) -> torch.Tensor:
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, x * slope)


# ---- reductions (reduce.*) ------------------------------------------------------------------------------------

def _dims(x: torch.Tensor, axes: Sequence[int] | None) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(x.dim()))
    return tuple(sorted({axis % max(x.dim(), 1) for axis in axes}))


def _reduction(name: str, reduce: Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor], widen: bool = False):
    """A reduction over ``axes`` (None: all) that keeps the input dtype, as the NumPy references do.
    ``name`` is the module-level name it is bound to, so GraphModule code names and pickles it."""

    def run(x: torch.Tensor, *, axes: Sequence[int] | None, keepdims: bool) -> torch.Tensor:
        dims = _dims(x, axes)
        if not dims:  # NumPy reduces nothing over an empty axis list; torch would reduce everything
            return x.clone() if x.dim() else reduce(x, (), keepdims).to(x.dtype)
        source = x.double() if widen and not x.is_floating_point() else x
        return reduce(source, dims, keepdims).to(x.dtype)

    run.__name__ = run.__qualname__ = name
    return run


def _prod(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    if not dims:
        return torch.prod(x)
    for dim in sorted(dims, reverse=True):  # torch.prod takes one dim at a time
        x = torch.prod(x, dim, keepdim=keepdim)
    return x


reduce_sum = _reduction("reduce_sum", lambda x, dims, keep: torch.sum(x, dim=dims, keepdim=keep))
reduce_mean = _reduction("reduce_mean", lambda x, dims, keep: torch.mean(x, dim=dims, keepdim=keep), widen=True)
reduce_max = _reduction("reduce_max", lambda x, dims, keep: torch.amax(x, dim=dims, keepdim=keep))
reduce_min = _reduction("reduce_min", lambda x, dims, keep: torch.amin(x, dim=dims, keepdim=keep))
reduce_prod = _reduction("reduce_prod", _prod)
reduce_sum_square = _reduction("reduce_sum_square", lambda x, dims, keep: torch.sum(x * x, dim=dims, keepdim=keep))
reduce_l1 = _reduction("reduce_l1", lambda x, dims, keep: torch.sum(torch.abs(x), dim=dims, keepdim=keep))
reduce_l2 = _reduction("reduce_l2", lambda x, dims, keep: torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep)), widen=True)
reduce_log_sum_exp = _reduction("reduce_log_sum_exp", lambda x, dims, keep: torch.logsumexp(x, dim=dims, keepdim=keep),
                                widen=True)


def argmax(x: torch.Tensor, *, axis: int, keepdims: bool) -> torch.Tensor:
    return torch.argmax(x, dim=axis, keepdim=keepdims)


def argmin(x: torch.Tensor, *, axis: int, keepdims: bool) -> torch.Tensor:
    return torch.argmin(x, dim=axis, keepdim=keepdims)


# ---- data movement (tensor.*) ---------------------------------------------------------------------------------

def reshape(x: torch.Tensor, *, shape: Sequence[Any]) -> torch.Tensor:
    # symbols bound to an input's size arrive as ints; one left over is whatever remains, as -1
    unknown = [dim for dim in shape if isinstance(dim, str)]
    if len(unknown) > 1:
        raise OptcError(f"reshape to {tuple(shape)} has {len(unknown)} sizes no graph input fixes")
    return torch.reshape(x, [-1 if isinstance(dim, str) else dim for dim in shape])


def transpose(x: torch.Tensor, *, perm: Sequence[int]) -> torch.Tensor:
    return torch.permute(x, tuple(perm))


def concat(*tensors: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.cat(tensors, dim=axis)


def split(x: torch.Tensor, *, axis: int, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.split(x, list(sizes), dim=axis))


def slice_(x: torch.Tensor, *, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int] | None,
           steps: Sequence[int] | None) -> torch.Tensor:
    axes = tuple(range(len(starts))) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        picked = range(*slice(start, end, step).indices(x.shape[axis]))
        if step > 0:
            index = (slice(None),) * axis + (slice(picked.start, picked.start + len(picked) * step, step),)
            x = x[index]
        else:  # torch slices only forwards
            positions = torch.tensor(list(picked), dtype=torch.int64, device=x.device)
            x = torch.index_select(x, axis, positions)
    return x


def gather(x: torch.Tensor, indices: torch.Tensor, *, axis: int) -> torch.Tensor:
    axis %= x.dim()
    positions = indices.to(torch.int64)
    positions = torch.where(positions < 0, positions + x.shape[axis], positions)
    picked = torch.index_select(x, axis, positions.reshape(-1))
    return picked.reshape(tuple(x.shape[:axis]) + tuple(indices.shape) + tuple(x.shape[axis + 1 :]))


def cache_update(cache: torch.Tensor, update: torch.Tensor, position: torch.Tensor, *, axis: int) -> torch.Tensor:
    axis %= cache.dim()
    slots = position.reshape(()).to(torch.int64) + torch.arange(update.shape[axis], device=cache.device)
    return cache.index_copy(axis, slots, update)


def expand(x: torch.Tensor, *, shape: Sequence[Any]) -> torch.Tensor:
    # NumPy broadcasting both ways (a 1 in ``shape`` keeps x's size); a symbolic size equals x's
    target = torch.broadcast_shapes(tuple(x.shape), tuple(1 if isinstance(dim, str) else dim for dim in shape))
    return x.expand(target).clone()


def tile(x: torch.Tensor, *, repeats: Sequence[int]) -> torch.Tensor:
    return x.repeat(*repeats) if repeats else x.clone()


def _torch_pad_widths(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """F.pad's order: last axis first, (begin, end) per axis."""
    widths: list[int] = []
    for begin, end in zip(reversed(begins), reversed(ends)):
        widths += [int(begin), int(end)]
    return widths


def pad(x: torch.Tensor, *, pads: Sequence[int], mode: str, value: float) -> torch.Tensor:
    rank = x.dim()
    begins, ends = list(pads[:rank]), list(pads[rank:])
    if mode == "constant":
        return F.pad(x, _torch_pad_widths(begins, ends), value=value)  # negative widths crop
    for axis in range(rank):  # crop first, then pad outwards
        if begins[axis] < 0 or ends[axis] < 0:
            start, stop = max(-begins[axis], 0), x.shape[axis] - max(-ends[axis], 0)
            x = x.narrow(axis, start, stop - start)
            begins[axis], ends[axis] = max(begins[axis], 0), max(ends[axis], 0)
    padded = [axis for axis in range(rank) if begins[axis] or ends[axis]]
    if not padded:
        return x.clone()
    first = padded[0]
    spatial = rank - first
    if spatial > 3:
        raise OptcError(f"pad mode '{mode}' over {spatial} trailing axes: torch pads at most 3")
    # torch's reflect/replicate pad wants (batch, *padded axes): fold the leading axes into one
    leading = tuple(x.shape[:first])
    folded = x.reshape((-1,) + tuple(x.shape[first:]))
    out = F.pad(folded, _torch_pad_widths(begins[first:], ends[first:]), mode="reflect" if mode == "reflect" else "replicate")
    return out.reshape(leading + tuple(out.shape[1:]))


# ---- neural-network ops (nn.*) ---------------------------------------------------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _window(rank: int, strides: Sequence[int] | None, pads: Sequence[int] | None,
            dilations: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    pads = tuple(pads or (0,) * (2 * rank))
    return tuple(strides or (1,) * rank), pads[:rank], pads[rank:], tuple(dilations or (1,) * rank)


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    spec = ACTIVATIONS[activation]
    if spec is None:
        return x
    op, attrs = spec
    return TORCH_FUNCTIONS[op](x, **attrs)


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, strides: Sequence[int] | None,
         pads: Sequence[int] | None, dilations: Sequence[int] | None, groups: int, activation: str) -> torch.Tensor:
    rank = weight.dim() - 2
    strides, begins, ends, dilations = _window(rank, strides, pads, dilations)
    if begins != ends:
        x, begins = F.pad(x, _torch_pad_widths(begins, ends)), (0,) * rank
    return _activate(_CONV[rank](x, weight, bias, strides, begins, dilations, groups), activation)


def conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                   strides: Sequence[int] | None, pads: Sequence[int] | None, dilations: Sequence[int] | None,
                   groups: int, output_padding: Sequence[int] | None) -> torch.Tensor:
    rank = weight.dim() - 2
    strides, begins, ends, dilations = _window(rank, strides, pads, dilations)
    # the full result, then output_padding (nothing reaches it but the bias), then the crop:
    # any pads and output padding, without torch's limits on them
    full = _CONV_TRANSPOSE[rank](x, weight, None, strides, 0, 0, groups, dilations)
    extra = tuple(output_padding or (0,) * rank)
    out = F.pad(full, _torch_pad_widths((0,) * rank, extra)) if any(extra) else full
    out = F.pad(out, _torch_pad_widths([-b for b in begins], [-e for e in ends])) if any(begins + ends) else out
    return out if bias is None else out + bias.reshape((1, -1) + (1,) * rank)


def _pool_output(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int, ceil: bool) -> int:
    span = size + begin + end - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + begin:
        out -= 1  # no window starts in the end padding alone (PyTorch and ONNX rule)
    return out


def _explicitly_padded(x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int], begins: Sequence[int],
                       ends: Sequence[int], dilations: Sequence[int], ceil_mode: bool,
                       fill: float) -> tuple[torch.Tensor, list[int]]:
    """x padded with ``fill`` so a plain floor-mode window pass covers every output; the outputs."""
    rank = len(kernel)
    outputs, extra_ends = [], []
    for axis in range(rank):
        size = x.shape[2 + axis]
        out = _pool_output(size, kernel[axis], strides[axis], dilations[axis], begins[axis], ends[axis], ceil_mode)
        needed = (out - 1) * strides[axis] + dilations[axis] * (kernel[axis] - 1) + 1
        extra_ends.append(ends[axis] + max(0, needed - (size + begins[axis] + ends[axis])))
        outputs.append(out)
    return F.pad(x, _torch_pad_widths(begins, extra_ends), value=fill), outputs


def _crop(x: torch.Tensor, outputs: Sequence[int]) -> torch.Tensor:
    for axis, size in enumerate(outputs):
        x = x.narrow(2 + axis, 0, size)
    return x


def _torch_pool_fits(kernel: Sequence[int], begins: Sequence[int], ends: Sequence[int], dilations: Sequence[int]) -> bool:
    """Whether torch's own pooling takes these pads: symmetric, at most half the window."""
    return tuple(begins) == tuple(ends) and all(
        2 * pad <= dilation * (k - 1) + 1 for pad, k, dilation in zip(begins, kernel, dilations))


def max_pool(x: torch.Tensor, *, kernel: Sequence[int], strides: Sequence[int] | None, pads: Sequence[int] | None,
             dilations: Sequence[int] | None, ceil_mode: bool) -> torch.Tensor:
    rank = len(kernel)
    strides, begins, ends, dilations = _window(rank, strides, pads, dilations)
    if _torch_pool_fits(kernel, begins, ends, dilations):
        return _MAX_POOL[rank](x, tuple(kernel), strides, begins, dilations, ceil_mode)
    padded, outputs = _explicitly_padded(x, kernel, strides, begins, ends, dilations, ceil_mode, -math.inf)
    return _crop(_MAX_POOL[rank](padded, tuple(kernel), strides, 0, dilations), outputs)


def avg_pool(x: torch.Tensor, *, kernel: Sequence[int], strides: Sequence[int] | None, pads: Sequence[int] | None,
             dilations: Sequence[int] | None, ceil_mode: bool, count_include_pad: bool) -> torch.Tensor:
    rank = len(kernel)
    strides, begins, ends, dilations = _window(rank, strides, pads, dilations)
    if all(d == 1 for d in dilations) and _torch_pool_fits(kernel, begins, ends, dilations):
        return _AVG_POOL[rank](x, tuple(kernel), strides, begins, ceil_mode, count_include_pad)
    # window sums and counts as depthwise convolutions with a kernel of ones (torch's avg pools
    # have no dilation): explicit pads count when count_include_pad, ceil mode's extra end never does
    channels = x.shape[1]
    padded, outputs = _explicitly_padded(x, kernel, strides, begins, ends, dilations, ceil_mode, 0.0)
    ones_kernel = torch.ones((channels, 1) + tuple(kernel), dtype=x.dtype, device=x.device)
    sums = _crop(_CONV[rank](padded, ones_kernel, None, strides, 0, dilations, channels), outputs)
    covered = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    covered = F.pad(covered, _torch_pad_widths(begins, ends), value=1.0 if count_include_pad else 0.0)
    covered = F.pad(covered, _torch_pad_widths((0,) * rank, [p - c for p, c in zip(padded.shape[2:], covered.shape[2:])]))
    counts = _crop(_CONV[rank](covered, ones_kernel[:1], None, strides, 0, dilations), outputs)
    return sums / counts


def _per_channel(param: torch.Tensor, rank: int) -> torch.Tensor:
    return param.reshape((1, -1) + (1,) * (rank - 2))


def batch_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, *,
               epsilon: float) -> torch.Tensor:
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=epsilon)


def instance_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *, epsilon: float) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=epsilon)


def group_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *, num_groups: int, epsilon: float) -> torch.Tensor:
    return F.group_norm(x, num_groups, scale, bias, epsilon)


def layer_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, *, axis: int,
               epsilon: float) -> torch.Tensor:
    return F.layer_norm(x, tuple(x.shape[axis % x.dim():]), scale, bias, epsilon)


def rms_norm(x: torch.Tensor, scale: torch.Tensor, *, axis: int, epsilon: float) -> torch.Tensor:
    return F.rms_norm(x, tuple(x.shape[axis % x.dim():]), scale, epsilon)


def lrn(x: torch.Tensor, *, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    # ONNX's window: (size-1)//2 channels before, size//2 after (torch's own differs for even sizes)
    channels = x.shape[1]
    square = x * x
    widths = [0, 0] * (x.dim() - 2) + [(size - 1) // 2, size // 2]
    padded = F.pad(square, widths)
    total = sum(padded.narrow(1, offset, channels) for offset in range(size))
    return x / (bias + alpha / size * total) ** beta


def softmax(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    return torch.softmax(x, dim=axis)


def log_softmax(x: torch.Tensor, *, axis: int) -> torch.Tensor:
    return torch.log_softmax(x, dim=axis)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, activation: str) -> torch.Tensor:
    out = torch.matmul(x, weight)  # weight is (K, N), as in the registry
    return _activate(out if bias is None else out + bias, activation)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None, *,
              scale: float | None, causal: bool) -> torch.Tensor:
    if causal:  # SDPA refuses a mask together with is_causal: fold the causal part into the mask
        keep = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        if mask is None:
            mask = keep
        elif mask.dtype == torch.bool:
            mask = mask & keep
        else:
            mask = mask + torch.zeros_like(keep, dtype=mask.dtype).masked_fill(~keep, -math.inf)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


# ---- the table: every registry op -> the torch function that computes it --------------------------------------

TORCH_FUNCTIONS: dict[str, Callable[..., Any]] = {
    # math.*: unary on floats
    "math.exp": torch.exp, "math.log": torch.log, "math.sqrt": torch.sqrt, "math.rsqrt": torch.rsqrt,
    "math.reciprocal": torch.reciprocal, "math.sin": torch.sin, "math.cos": torch.cos, "math.tanh": torch.tanh,
    "math.erf": torch.erf, "math.sigmoid": torch.sigmoid, "math.floor": torch.floor, "math.ceil": torch.ceil,
    "math.round": torch.round,  # half to even, as NumPy
    "math.softplus": F.softplus, "math.softsign": F.softsign, "math.silu": F.silu,
    "math.gelu": F.gelu,  # takes approximate="none" | "tanh" as the registry does
    "math.hard_sigmoid": hard_sigmoid, "math.hard_swish": F.hardswish, "math.leaky_relu": leaky_relu,
    "math.elu": elu, "math.selu": selu, "math.shrink": shrink,
    # math.*: unary on any dtype
    "math.neg": torch.neg, "math.abs": torch.abs, "math.sign": torch.sign, "math.relu": torch.relu, "math.clip": clip,
    "math.not": torch.logical_not, "math.isnan": torch.isnan, "math.cast": cast,
    # math.*: binary, broadcasting
    "math.add": torch.add, "math.sub": torch.sub, "math.mul": torch.mul, "math.div": div, "math.pow": torch.pow,
    "math.maximum": torch.maximum, "math.minimum": torch.minimum, "math.mod": mod,
    "math.equal": torch.eq, "math.less": torch.lt, "math.less_equal": torch.le, "math.greater": torch.gt,
    "math.greater_equal": torch.ge, "math.and": torch.logical_and, "math.or": torch.logical_or,
    "math.xor": torch.logical_xor, "math.prelu": prelu, "math.where": torch.where,
    # linalg.*
    "linalg.matmul": torch.matmul,
    # reduce.*
    "reduce.sum": reduce_sum, "reduce.mean": reduce_mean, "reduce.max": reduce_max, "reduce.min": reduce_min,
    "reduce.prod": reduce_prod, "reduce.sum_square": reduce_sum_square, "reduce.l1": reduce_l1, "reduce.l2": reduce_l2,
    "reduce.log_sum_exp": reduce_log_sum_exp, "reduce.argmax": argmax, "reduce.argmin": argmin,
    # tensor.*
    "tensor.reshape": reshape, "tensor.transpose": transpose, "tensor.concat": concat, "tensor.split": split,
    "cache.update": cache_update,
    "tensor.slice": slice_, "tensor.gather": gather, "tensor.expand": expand, "tensor.tile": tile, "tensor.pad": pad,
    # nn.*
    "nn.conv": conv, "nn.conv_transpose": conv_transpose, "nn.max_pool": max_pool, "nn.avg_pool": avg_pool,
    "nn.batch_norm": batch_norm, "nn.instance_norm": instance_norm, "nn.group_norm": group_norm,
    "nn.layer_norm": layer_norm, "nn.rms_norm": rms_norm, "nn.lrn": lrn, "nn.softmax": softmax,
    "nn.log_softmax": log_softmax, "nn.linear": linear, "nn.attention": attention,
}
TORCH_FUNCTIONS.update(QUANT_TORCH_FUNCTIONS)  # quant.*: frontends/torch/export_quant.py

# inputs that hold statistics, not weights: exported as buffers by the default ``trainable``
NOT_TRAINED_INPUTS: dict[str, frozenset[int]] = {"nn.batch_norm": frozenset({3, 4})}


class ExportTracer(torch.fx.Tracer):
    """Keeps ``TORCH_FUNCTIONS`` as leaves when fx traces a module ``to_torch`` made (as unpickling
    does: a GraphModule is saved as code and traced again when loaded)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("autowrap_functions", tuple({id(f): f for f in TORCH_FUNCTIONS.values()}.values()))
        super().__init__(*args, **kwargs)


def missing_torch_functions() -> list[str]:
    """Registry ops without a torch function (empty when the table covers the registry)."""
    return sorted(name for name in all_ops() if name not in TORCH_FUNCTIONS)


def default_trainable(graph: Graph, param: Value) -> bool:
    """Float params of more than one element train, except batch-norm running statistics."""
    if param.dtype not in FLOAT_DTYPES or param.type.numel <= 1:
        return False
    return not any(position in NOT_TRAINED_INPUTS.get(node.op, ()) for node, position in param.uses)


# ---- graph -> GraphModule ----------------------------------------------------------------------------------------

_ILLEGAL = re.compile(r"[^0-9A-Za-z_]")


def _identifier(name: str, taken: set[str], reserved: Callable[[str], bool] = lambda _: False) -> str:
    base = _ILLEGAL.sub("_", name) or "v"
    if base[0].isdigit():
        base = f"v_{base}"
    chosen, counter = base, 1
    while chosen in taken or reserved(chosen) or keyword.iskeyword(chosen) or chosen == "self":
        chosen = f"{base}_{counter}"
        counter += 1
    taken.add(chosen)
    return chosen


def _taken_by_graph_module(name: str) -> bool:
    """Names a param attribute must not shadow (``graph``, ``code``, ``meta``, ``forward``, ...)."""
    return hasattr(torch.fx.GraphModule, name) or name in ("meta", "training", PARAM_NAMES_KEY)


def to_torch(graph: Graph, *, trainable: Trainable | None = None) -> torch.fx.GraphModule:
    """A GraphModule computing ``graph``: forward(*inputs) -> output or tuple of outputs.

    ``trainable(graph, param)`` decides which params become ``nn.Parameter`` (the rest become
    buffers); the default is ``default_trainable``. The module starts in train mode, which changes
    nothing: the IR has no dropout and its batch norm is the inference one.
    """
    unsupported: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op not in TORCH_FUNCTIONS:
            unsupported.setdefault(node.op, []).append(node.name)
    if unsupported:
        raise UnsupportedOpError(unsupported, source=f"to_torch({graph.name})")
    trainable = trainable or default_trainable
    root = torch.nn.Module()
    fx_graph = torch.fx.Graph()
    env: dict[int, torch.fx.Node] = {}
    taken: set[str] = set()
    symbols: dict[str, torch.fx.Node] = {}

    for value in graph.inputs:
        placeholder = fx_graph.placeholder(_identifier(value.name, taken))
        env[id(value)] = placeholder
    for value in graph.inputs:  # symbolic sizes, read from the inputs that carry them
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, str) and dim not in symbols:
                symbols[dim] = fx_graph.call_method("size", (env[id(value)], axis))

    param_names: dict[str, str] = {}
    for value, array in graph.params.items():
        if not value.uses and not any(value is out for out in graph.outputs):
            continue
        attribute = _identifier(value.name, taken, reserved=_taken_by_graph_module)
        tensor = torch.from_numpy(np.array(array, copy=True))
        if trainable(graph, value):
            root.register_parameter(attribute, torch.nn.Parameter(tensor))
        else:
            root.register_buffer(attribute, tensor)
        param_names[attribute] = value.name
        env[id(value)] = fx_graph.get_attr(attribute)

    for node in graph.nodes:
        opdef = node.opdef
        kwargs = {}
        for attr_name, attr_value in node.attrs.items():
            if opdef.attrs[attr_name].kind == "dims":
                attr_value = tuple(symbols.get(dim, dim) if isinstance(dim, str) else dim for dim in attr_value)
            kwargs[attr_name] = attr_value
        args = tuple(env[id(value)] for value in node.inputs)
        name = _identifier(node.outputs[0].name if len(node.outputs) == 1 else node.name, taken)
        call = fx_graph.create_node("call_function", TORCH_FUNCTIONS[node.op], args, kwargs, name=name)
        if len(node.outputs) == 1:
            env[id(node.outputs[0])] = call
        else:
            for index, value in enumerate(node.outputs):
                env[id(value)] = fx_graph.create_node(
                    "call_function", operator.getitem, (call, index), name=_identifier(value.name, taken))

    results = [env[id(value)] for value in graph.outputs]
    fx_graph.output(results[0] if len(results) == 1 else tuple(results))
    fx_graph.eliminate_dead_code()  # size reads no reshape needed
    module = torch.fx.GraphModule(root, fx_graph, class_name=_identifier(graph.name, set()))
    # deepcopy keeps meta, pickling keeps plain attributes: the mapping rides in both
    module.meta[PARAM_NAMES_KEY] = param_names
    setattr(module, PARAM_NAMES_KEY, param_names)
    module._tracer_cls = ExportTracer  # what pickle's reload traces the code with
    return module


def with_module_params(graph: Graph, module: torch.nn.Module) -> Graph:
    """A copy of ``graph`` whose params hold the current values of ``module`` (from ``to_torch``).

    This is how trained weights come back: the structure stays the graph's, only the arrays change.
    """
    meta = getattr(module, "meta", {})
    names: dict[str, str] | None = meta.get(PARAM_NAMES_KEY) or getattr(module, PARAM_NAMES_KEY, None)
    if names is None:
        raise OptcError(f"the module was not made by to_torch (it has no '{PARAM_NAMES_KEY}'); capture it instead")
    state = module.state_dict()
    result = graph.clone()
    by_name = {value.name: value for value in result.params}
    for attribute, param_name in names.items():
        value = by_name.get(param_name)
        if value is None:
            raise OptcError(f"graph {graph.name} has no param '{param_name}' (module attribute {attribute})")
        array = state[attribute].detach().cpu().numpy()
        if tuple(array.shape) != tuple(value.shape) or array.dtype.name != value.dtype:
            raise OptcError(
                f"module attribute {attribute} is {array.dtype.name}{list(array.shape)}, "
                f"param {param_name} is {value.type}: the module no longer matches the graph"
            )
        result.params[value] = np.array(array, copy=True)  # a new array; the clone's others stay shared
    return result


__all__ = ["TORCH_FUNCTIONS", "default_trainable", "missing_torch_functions", "to_torch", "with_module_params"]
