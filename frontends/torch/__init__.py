"""PyTorch frontend: ``torch.export`` -> core ATen -> an optc ``Graph``.

    graph = capture(model, (images,), input_names=["input"])
    graph = capture(model, (ids, mask), dynamic=True)       # dim 0 of every input is "batch"
    graph = from_fx(torch.fx.symbolic_trace(model), (images,))

The module is exported in eval mode (``strict=False``) and decomposed to core ATen; parameters,
buffers and lifted constants become graph params (NumPy arrays named by their state-dict keys),
tensor inputs become graph inputs and the (possibly nested) outputs are flattened into graph
outputs named ``out0, out1, ...`` or by their dict keys. Every ATen op goes through one converter
in ``aten.CONVERTERS``; an op without one is evaluated with torch when all its inputs are
constants, and otherwise reported: all unsupported ops of a model come back in one
``UnsupportedOpError``.
"""

from __future__ import annotations

import inspect
import logging
import operator
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch.utils import _pytree as pytree

from ...errors import ModelLoadError, OptcError, UnsupportedOpError
from ...ir.builder import DEFAULT_FOLD_LIMIT
from ...ir.graph import Graph, Value
from ...ir.types import TensorType
from . import aten as aten_converters
from .aten import CONVERTERS, IGNORED, PRESERVED, Context, Unavailable, Unsupported, optc_dtype
from . import converters  # noqa: F401  (registers the converters into aten.CONVERTERS)

logger = logging.getLogger(__name__)

Dynamic = Union[bool, Mapping[str, Mapping[int, str]]]

# a param used by several ops (tied embeddings) is never folded through when at least this big
SHARED_PARAM_ELEMENTS = 4096


def capture(
    module: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic: Dynamic = False,
) -> Graph:
    """Export ``module`` (in eval mode) on ``example_inputs`` and convert it to an optc graph.

    ``example_kwargs`` are keyword inputs (``attention_mask=...``, ``use_cache=False``); tensors
    among them become graph inputs after the positional ones, non-tensors are baked in.
    ``input_names`` name the tensor inputs in that order (default: the forward's parameter
    names); ``output_names`` name the flattened tensor outputs. ``dynamic=True`` makes dim 0 of
    every tensor input a symbol named ``batch``; a mapping ``{input name: {axis: symbol}}``
    chooses the axes and names (one name on several inputs means one size). Example inputs need
    a size of at least 2 on dynamic axes, since torch specializes sizes 0 and 1.
    """
    example_inputs = _as_tuple(example_inputs)
    kwargs = dict(example_kwargs or {})
    entries = _named_entries(module, example_inputs, kwargs)
    names = [name for name, item in entries if isinstance(item, torch.Tensor)]
    if input_names is not None:
        if len(input_names) != len(names):
            raise OptcError(f"input_names has {len(input_names)} names for {len(names)} tensor inputs {names}")
        names = list(input_names)
    dynamic_shapes, dim_names = _dynamic_shapes(entries, names, dynamic, keyed=bool(kwargs))
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings():
            # torch's own pytree deprecation notice, raised inside export; nothing a user can act on
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            exported = torch.export.export(module, example_inputs, kwargs or None, dynamic_shapes=dynamic_shapes, strict=False)
    except OptcError:
        raise
    except Exception as error:
        hint = " (dynamic axes need example sizes of at least 2 and a model valid for every size)" if dynamic_shapes else ""
        raise ModelLoadError(f"torch.export could not capture {type(module).__name__}{hint}: {error}") from error
    finally:
        module.train(was_training)
    return from_exported(
        exported, input_names=input_names, output_names=output_names, dim_names=dim_names, name=type(module).__name__
    )


def from_fx(
    graph_module: torch.fx.GraphModule,
    example_inputs: tuple[Any, ...],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic: Dynamic = False,
) -> Graph:
    """Convert a symbolically traced (and possibly rewritten) ``torch.fx.GraphModule``.

    A GraphModule is an ``nn.Module``, so it goes through the same ``torch.export`` path as
    ``capture``: its module calls, functions and methods all reach optc as core ATen ops, and one
    converter table serves both. Inputs are named after the fx placeholders unless named here.
    """
    if input_names is None:
        placeholders = [node.name for node in graph_module.graph.nodes if node.op == "placeholder"]
        tensors = [name for name, item in zip(placeholders, _as_tuple(example_inputs)) if isinstance(item, torch.Tensor)]
        input_names = tensors or None
    return capture(graph_module, _as_tuple(example_inputs), input_names=input_names, output_names=output_names,
                   dynamic=dynamic)


def from_exported(
    exported: torch.export.ExportedProgram,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dim_names: Sequence[Mapping[int, str]] | None = None,
    name: str = "main",
) -> Graph:
    """Convert an ``ExportedProgram`` (decomposed to core ATen here) into an optc graph.

    ``dim_names`` gives, per tensor input, names for its dynamic axes (``[{0: "batch"}, ...]``);
    other symbolic dims keep torch's names (``s0``).
    """
    table = torch.export.default_decompositions()
    for target in PRESERVED:
        table.pop(target, None)
    try:
        decomposed = exported.run_decompositions(table)
    except Exception as error:
        raise ModelLoadError(f"decomposing the exported program to core ATen failed: {error}") from error
    return _Importer(decomposed, input_names, output_names, list(dim_names or []), name).run()


# ---- input handling --------------------------------------------------------------------------------


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def _named_entries(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every example input with its forward parameter name: positional ones first, then keywords."""
    try:
        parameters = [
            name for name, parameter in inspect.signature(module.forward).parameters.items()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        parameters = []
    positional = [(parameters[i] if i < len(parameters) else f"input{i}", item) for i, item in enumerate(args)]
    return positional + list(kwargs.items())


def _dynamic_shapes(
    entries: list[tuple[str, Any]], names: list[str], dynamic: Dynamic, keyed: bool
) -> tuple[Any, list[dict[int, str]]]:
    """torch.export's dynamic_shapes for our ``dynamic`` argument, and per tensor input its dim names.

    ``names`` are the tensor inputs' (possibly user-given) names; ``keyed`` asks for torch's dict
    form, keyed by forward parameter names (needed once keyword inputs are present).
    """
    if dynamic is False or dynamic is None:
        return None, []
    wanted: dict[str, dict[int, str]]
    if dynamic is True:
        wanted = {name: {0: "batch"} for name in names}
    else:
        unknown = set(dynamic) - set(names)
        if unknown:
            raise OptcError(f"dynamic names unknown input(s) {sorted(unknown)}; inputs are {names}")
        wanted = {name: dict(axes) for name, axes in dynamic.items()}
    dims: dict[str, Any] = {}
    specs: list[Any] = []
    dim_names: list[dict[int, str]] = []
    tensors = iter(names)
    for _, item in entries:
        if not isinstance(item, torch.Tensor):
            specs.append(None)
            continue
        axes = {axis % item.dim(): symbol for axis, symbol in wanted.get(next(tensors), {}).items()}
        for symbol in axes.values():
            if not symbol.isidentifier():
                raise OptcError(f"dynamic dim name '{symbol}' must be an identifier")
            dims.setdefault(symbol, torch.export.Dim(symbol))
        specs.append({axis: dims[symbol] for axis, symbol in axes.items()} or None)
        dim_names.append(axes)
    if keyed:
        return {name: spec for (name, _), spec in zip(entries, specs)}, dim_names
    return tuple(specs), dim_names


# ---- the importer ------------------------------------------------------------------------------------


class _Poisoned:
    """The value of a node downstream of an unsupported op: it is skipped, not reported again."""


_POISONED = _Poisoned()


class _Importer:
    def __init__(self, exported: torch.export.ExportedProgram, input_names: Sequence[str] | None,
                 output_names: Sequence[str] | None, dim_names: list[dict[int, str]], name: str) -> None:
        self.exported = exported
        self.input_names = list(input_names) if input_names is not None else None
        self.output_names = list(output_names) if output_names is not None else None
        self.graph = Graph(name if name.isidentifier() else "main")
        self.ctx = Context(self.graph)
        self.dim_names = dim_names
        self.env: dict[str, Any] = {}
        self.unsupported: dict[str, list[str]] = {}

    def run(self) -> Graph:
        self._add_inputs_and_params()
        for node in self.exported.graph.nodes:
            if node.op == "call_function":
                self._convert(node)
        if self.unsupported:
            raise UnsupportedOpError(self.unsupported, source=f"torch model {self.graph.name}")
        self._set_outputs()
        self.graph.remove_unused_params()
        return self.graph

    # ---- inputs ----
    def _add_inputs_and_params(self) -> None:
        signature = self.exported.graph_signature
        placeholders = {node.name: node for node in self.exported.graph.nodes if node.op == "placeholder"}
        user_inputs = [spec for spec in signature.input_specs if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT]
        tensor_inputs = [spec for spec in user_inputs if isinstance(spec.arg, torch.export.graph_signature.TensorArgument)]
        if self.input_names is not None and len(self.input_names) != len(tensor_inputs):
            raise OptcError(f"input_names has {len(self.input_names)} names for {len(tensor_inputs)} tensor inputs")
        self._name_symbols(tensor_inputs, placeholders)
        for position, spec in enumerate(tensor_inputs):
            node = placeholders[spec.arg.name]
            name = self.input_names[position] if self.input_names is not None else spec.arg.name
            meta = node.meta["val"]
            try:
                dtype = optc_dtype(meta.dtype)
            except Unsupported as error:
                raise OptcError(f"input '{name}' has unsupported {error}") from None
            self.env[node.name] = self.graph.add_input(name, TensorType(tuple(self.ctx.dim(d) for d in meta.shape), dtype))
        for spec in signature.input_specs:
            kind = spec.kind.name
            if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
                node = placeholders[spec.arg.name]
                tensor = self._state(spec.target)
                value = self.graph.add_param(spec.target, _to_numpy(tensor, spec.target))
                if len(node.users) > 1 and value.type.numel >= SHARED_PARAM_ELEMENTS:
                    self.ctx.keep_unfolded.add(id(value))
                self.ctx.model_params.add(id(value))
                self.env[node.name] = value
            elif kind == "USER_INPUT" and not isinstance(spec.arg, torch.export.graph_signature.TensorArgument):
                self.env[spec.arg.name] = getattr(spec.arg, "value", None)
            elif kind != "USER_INPUT":
                raise OptcError(f"exported program has an input of kind {kind} ({spec.arg.name}), which optc cannot import")

    def _state(self, target: str) -> torch.Tensor:
        if target in self.exported.state_dict:
            return self.exported.state_dict[target]
        if target in self.exported.constants:
            return self.exported.constants[target]
        raise OptcError(f"exported program has no tensor for '{target}'")

    def _name_symbols(self, tensor_inputs: list[Any], placeholders: dict[str, torch.fx.Node]) -> None:
        """Map torch's symbols (s0, s77) to the names the caller chose for dynamic dims."""
        for spec, names in zip(tensor_inputs, self.dim_names):
            shape = placeholders[spec.arg.name].meta["val"].shape
            for axis, chosen in names.items():
                size = shape[axis]
                if isinstance(size, torch.SymInt) and size.node.expr.is_symbol:
                    self.ctx.symbols.setdefault(str(size.node.expr), chosen)

    # ---- nodes ----
    def _resolve(self, argument: Any) -> tuple[Any, bool]:
        """Arguments with fx nodes replaced by what they converted to; True when one was poisoned."""
        poisoned = False

        def lookup(node: torch.fx.Node) -> Any:
            nonlocal poisoned
            value = self.env.get(node.name, _POISONED)
            if value is _POISONED:
                poisoned = True
            return value

        return torch.fx.node.map_arg(argument, lookup), poisoned

    def _report(self, op: str, node: torch.fx.Node, reason: str | None = None) -> None:
        self.unsupported.setdefault(op, []).append(f"{node.name} ({reason})" if reason else node.name)
        self.env[node.name] = _POISONED

    def _convert(self, node: torch.fx.Node) -> None:
        target = node.target
        if target in IGNORED:
            return
        args, poisoned_args = self._resolve(node.args)
        kwargs, poisoned_kwargs = self._resolve(node.kwargs)
        if poisoned_args or poisoned_kwargs:
            self.env[node.name] = _POISONED
            return
        meta = node.meta.get("val")
        if target is operator.getitem:
            self._getitem(node, args)
            return
        missing = [item for item in pytree.tree_leaves((args, kwargs)) if isinstance(item, Unavailable)]
        if missing:
            self._report(_op_name(target), node, f"uses {missing[0].reason}")
            return
        if target is torch.ops.aten._local_scalar_dense.default:
            self._report(_op_name(target), node, "a scalar read from tensor data")
            return
        if isinstance(meta, (torch.SymInt, int)) and not isinstance(meta, bool):
            # size queries and size arithmetic (sym_size, mul of sizes): torch knows the answer
            self.env[node.name] = self.ctx.dim(meta)
            return
        if isinstance(meta, (torch.SymFloat, torch.SymBool, float, bool)):
            # conditions on sizes feed runtime asserts, which optc drops; anything else reports
            self.env[node.name] = Unavailable(f"the symbolic scalar {node.name}")
            return
        self.ctx.node = node
        first_new_node = len(self.graph.nodes)
        op_name = _op_name(target)
        result: Any = None
        reason: str | None = None
        try:
            if target in CONVERTERS:
                result = aten_converters.call(self.ctx, target, args, kwargs)
        except Unsupported as error:
            reason = str(error)
        except OptcError as error:
            raise OptcError(f"converting {node.name} ({op_name}): {error}") from error
        if result is None:
            result = self._fold_with_torch(node, args, kwargs)
        if result is None:
            self._report(op_name, node, reason)
            return
        result = self._check(node, result)
        if isinstance(result, Value):
            self._name_after(node.name, result, self.graph.nodes[first_new_node:])
        self.env[node.name] = result

    @staticmethod
    def _name_after(name: str, result: Value, new_nodes: list[Any]) -> None:
        """Give the fx node's name to the value (and node) a converter ended with, not its first one."""
        if result.producer is None or result.producer not in new_nodes or result.name == name:
            return
        for candidate in new_nodes:
            for value in candidate.outputs:
                if value.name == name and value is not result:
                    value.name, result.name = result.name, value.name
                    if candidate.name == name:
                        candidate.name, result.producer.name = result.producer.name, candidate.name
                    return

    def _getitem(self, node: torch.fx.Node, args: tuple[Any, ...]) -> None:
        container, index = args
        item = container[index]
        if isinstance(item, Unavailable):
            producer = node.args[0]
            self._report(_op_name(getattr(producer, "target", operator.getitem)), node, f"uses the {item.reason}")
            return
        self.env[node.name] = item

    def _fold_with_torch(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        """Run an op without a converter in torch when every input is a constant (arange, tril, ...)."""
        target = node.target
        if not isinstance(target, torch._ops.OpOverload) or torch.Tag.nondeterministic_seeded in target.tags:
            return None
        if target.name().split("::")[-1].split(".")[0].startswith("empty"):
            return None
        meta = node.meta.get("val")
        metas = meta if isinstance(meta, (list, tuple)) else [meta]
        for item in metas:
            if not isinstance(item, torch.Tensor) or any(not isinstance(d, int) for d in item.shape):
                return None
            if item.numel() > DEFAULT_FOLD_LIMIT or item.dtype not in aten_converters.TORCH_DTYPES:
                return None
        constant = True

        def to_torch(item: Any) -> Any:
            nonlocal constant
            if isinstance(item, Value):
                array = self.graph.params.get(item)
                if array is None:
                    constant = False
                    return None
                return torch.from_numpy(np.array(array))
            if isinstance(item, str):  # a symbolic size
                constant = False
            return item

        torch_args = pytree.tree_map(to_torch, args)
        torch_kwargs = pytree.tree_map(to_torch, kwargs)
        if not constant:
            return None
        try:
            with torch.no_grad():
                out = target(*torch_args, **torch_kwargs)
        except Exception as error:  # the op rejected what we gave it: report it as unsupported
            logger.debug("folding %s with torch failed: %s", node.name, error)
            return None
        outputs = out if isinstance(out, (list, tuple)) else [out]
        values = [self.graph.add_param(node.name, item.detach().contiguous().numpy().copy()) for item in outputs]
        return values if isinstance(out, (list, tuple)) else values[0]

    def _check(self, node: torch.fx.Node, result: Any) -> Any:
        """Hold converter output to torch's metadata: cast dtype mismatches, reject shape ones."""
        meta = node.meta.get("val")
        if isinstance(result, list):
            metas = list(meta) if isinstance(meta, (list, tuple)) else [None] * len(result)
            return [self._check_one(node, item, item_meta) for item, item_meta in zip(result, metas)]
        return self._check_one(node, result, meta)

    def _check_one(self, node: torch.fx.Node, value: Any, meta: Any) -> Any:
        if not isinstance(value, Value) or not isinstance(meta, torch.Tensor):
            return value
        expected = tuple(self.ctx.dim(d) for d in meta.shape)
        if len(expected) != len(value.shape) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(expected, value.shape)
        ):
            raise OptcError(
                f"converting {node.name} ({node.target}) gave shape {list(value.shape)}, torch says {list(expected)}"
            )
        dtype = optc_dtype(meta.dtype)
        if value.dtype != dtype:
            self.ctx.node = node
            value = self.ctx.cast(value, dtype)
        return value

    # ---- outputs ----
    def _set_outputs(self) -> None:
        output_node = next(node for node in self.exported.graph.nodes if node.op == "output")
        flat_outputs = list(output_node.args[0])
        specs = self.exported.graph_signature.output_specs
        user = [(spec, node) for spec, node in zip(specs, flat_outputs)
                if spec.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT]
        if len(user) != len(specs):
            kinds = sorted({spec.kind.name for spec in specs} - {"USER_OUTPUT"})
            raise OptcError(f"the exported program mutates state ({', '.join(kinds)}); optc imports inference graphs only")
        names = self._output_names(len(user))
        values: list[Value] = []
        chosen: list[str] = []
        for (spec, node), name in zip(user, names):
            if not isinstance(node, torch.fx.Node):
                continue  # a constant (None, an int) among the outputs
            value = self.env[node.name]
            if not isinstance(value, Value):
                raise OptcError(f"output {name} is not a tensor")
            values.append(value)
            chosen.append(name)
        if self.output_names is not None and len(self.output_names) != len(values):
            raise OptcError(f"output_names has {len(self.output_names)} names for {len(values)} tensor outputs")
        if self.output_names is not None:
            chosen = list(self.output_names)
        self.graph.outputs = []
        for value, name in zip(values, chosen):
            self.graph.outputs.append(self._named_output(value, name))

    def _output_names(self, count: int) -> list[str]:
        spec = self.exported.call_spec.out_spec
        if spec is None:
            return [f"out{index}" for index in range(count)]
        tree = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
        paths = [path for path, _ in pytree.tree_flatten_with_path(tree)[0]]
        names = []
        for index, path in enumerate(paths):
            keys = [getattr(key, "key", getattr(key, "name", None)) for key in path]
            if keys and all(key is not None for key in keys) and any(isinstance(k, str) for k in keys):
                names.append(".".join(str(key) for key in keys))
            else:
                names.append(f"out{index}")
        return names if len(names) == count else [f"out{index}" for index in range(count)]

    def _named_output(self, value: Value, name: str) -> Value:
        """``value`` renamed ``name``; inputs, params and repeated outputs get a copy first."""
        already = any(value is out for out in self.graph.outputs)
        if value.producer is None or already:
            value = self.graph.add_node("tensor.reshape", [value], {"shape": tuple(value.shape)}, name=name).output
        if value.name != name:
            value.name = self.graph.unique_name(name)  # the old name stays reserved, unused
        return value


def _op_name(target: Any) -> str:
    """``aten.sort.default`` for ATen ops, ``operator.mul`` for Python's size arithmetic."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    if getattr(operator, getattr(target, "__name__", ""), None) is target:
        return f"operator.{target.__name__}"
    return getattr(target, "__qualname__", None) or str(target)


def _to_numpy(tensor: torch.Tensor, name: str) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype not in aten_converters.TORCH_DTYPES:
        raise OptcError(f"param '{name}' is {tensor.dtype}; convert the model to float32 first")
    return tensor.contiguous().numpy().copy()


__all__ = ["capture", "from_exported", "from_fx"]
