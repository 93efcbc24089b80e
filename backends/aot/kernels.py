"""C kernels from TVM's ``c`` target and the static call sequence that runs them.

Route (TVM 0.27 has no microTVM, AOT executor or USMP): lower the optc graph to Relax, bind the
params as constants, ``DecomposeOpsForInference`` + ``zero`` (legalize, fold constants, fuse)
+ ``AttachGlobalSymbol``; every ``call_tir`` binding of ``main`` becomes one step (kernel,
argument tensors, output tensors); the PrimFuncs are built with ``{"kind": "c"}`` and the
assertions off. Each kernel has TVM-FFI's packed signature with ``DLTensor*`` arguments and asks
``TVMBackendAllocWorkspace`` for scratch; its workspace is the sum of those requests.

``schedule.memory_schedule`` keeps the kernels' scratch small first; the TIR of each kernel then
says which outputs may overwrite which inputs (``inplace.inplace_pairs``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx

from ...errors import LoweringError
from ...ir.graph import Graph
from ..lower import lower_graph, parameter_name
from .inplace import inplace_pairs
from .program import ALIGNMENT, Program, Step, Tensor, align
from .schedule import memory_schedule

logger = logging.getLogger(__name__)

C_TARGET = {"kind": "c"}


@dataclass(frozen=True)
class Call:
    """One kernel call: the C symbol and its arguments in order (tensor or constant names)."""

    symbol: str
    arguments: tuple[str, ...]


@dataclass
class Kernels:
    """What the C generator needs: the call sequence, the constants, and the kernels' C source."""

    program: Program
    calls: list[Call]
    constants: dict[str, np.ndarray]
    source: str


def build_kernels(graph: Graph, *, target: dict | None = None, schedule: bool = True) -> Kernels:
    """Compile ``graph`` into C kernels plus the call sequence that runs them (see module doc).

    ``schedule`` applies ``memory_schedule`` to every kernel (no full-size padding or epilogue
    buffers in workspace); without it the kernels are TVM's unscheduled ones.
    """
    module = _fused_module(graph)
    if schedule:
        for global_var, func in list(module.functions.items()):
            if isinstance(func, tirx.PrimFunc):
                module[global_var] = memory_schedule(func)
    kernels = tvm.IRModule({gv: f for gv, f in module.functions.items() if isinstance(f, tirx.PrimFunc)})
    if not kernels.functions:
        raise LoweringError(f"graph {graph.name} has no computation to compile for a microcontroller")
    try:
        with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
            library = tvm.tirx.build(kernels, tvm.target.Target(target or C_TARGET))
    except Exception as error:
        raise LoweringError(f"TVM could not emit C kernels for {graph.name}: {_first_line(error)}") from error
    source = portable_c(library.inspect_source())
    workspaces = kernel_workspaces(source)
    return _call_sequence(graph, module, kernels, source, workspaces)


def _fused_module(graph: Graph) -> tvm.IRModule:
    module = lower_graph(graph)
    params = {parameter_name(value): tvm.runtime.tensor(np.asarray(array, order="C"))
              for value, array in graph.params.items()}
    try:
        module = relax.transform.BindParams("main", params)(module)
        module = relax.transform.DecomposeOpsForInference()(module)
        with tvm.target.Target({"kind": "llvm"}):  # legalization rules are looked up per target kind
            module = relax.get_pipeline("zero")(module)
        module = _fuse_pads_into_convs(module)
        module = relax.transform.AttachGlobalSymbol()(module)
    except Exception as error:
        raise LoweringError(f"TVM could not fuse {graph.name} for the C target: {_first_line(error)}") from error
    return module


# TVM's fusion patterns (op_pattern): elementwise, injective, reduction, opaque
ELEMWISE, INJECTIVE, COMM_REDUCE, OPAQUE = 0, 2, 3, 8


def _fuse_pads_into_convs(module: tvm.IRModule) -> tvm.IRModule:
    """Fuse a stand-alone ``pad`` kernel into the conv kernel that reads it.

    The int8 conv lowering pads with the zero point in its own op, and ``FuseOps`` never fuses a
    producer into a conv: the padded copy then lives as a full tensor beside the conv's output
    (257 KB at MobileNetV2-0.35's widest layer). A second fusion round where pads count as
    elementwise, convs as reductions (which take elementwise producers) and everything else as
    opaque merges exactly those pairs; ``memory_schedule`` then inlines the pad.
    """
    def is_pad(name: str) -> bool:  # "pad", or a slice + pad of a patch ("fused_strided_slice_pad")
        return "pad" in name and "conv2d" not in name

    if not any(is_pad(gv.name_hint) for gv, f in module.functions.items() if isinstance(f, tirx.PrimFunc)):
        return module
    regrouped = tvm.IRModule(dict(module.functions.items()))
    for global_var, func in module.functions.items():
        if isinstance(func, tirx.PrimFunc):
            name = global_var.name_hint
            pattern = ELEMWISE if is_pad(name) else COMM_REDUCE if "conv2d" in name else OPAQUE
            regrouped[global_var] = func.with_attr("op_pattern", pattern)
    try:
        regrouped = relax.transform.FuseOps()(regrouped)
        regrouped = relax.transform.FuseTIR()(regrouped)
        return relax.transform.DeadCodeElimination()(regrouped)
    except Exception as error:  # keep the unfused module: correct, only bigger
        logger.info("pads stay unfused: %s", _first_line(error))
        return module

# TVM's C codegen prints float infinities and NaNs as C literals that do not exist ("inff", "nanf")
NON_FINITE = {"inff": "INFINITY", "nanf": "NAN", "inf": "((double)INFINITY)", "nan": "((double)NAN)"}


def portable_c(source: str) -> str:
    """TVM's C output with its non-finite float literals as ``<math.h>``'s INFINITY / NAN.

    An attention kernel's mask (``-inf`` where a position may not be attended) comes out as
    ``-inff``, which no C compiler knows; the rewrite touches only those whole words outside
    identifiers and adds ``#include <math.h>`` when it changed anything.
    """
    pattern = re.compile(r"(?<![\w.])(" + "|".join(NON_FINITE) + r")(?![\w.(])")
    rewritten, count = pattern.subn(lambda match: NON_FINITE[match.group(1)], source)
    if not count:
        return source
    return "#include <math.h>\n" + rewritten


def kernel_workspaces(source: str) -> dict[str, int]:
    """Bytes of ``TVMBackendAllocWorkspace`` scratch per kernel symbol (requests summed, aligned)."""
    sizes: dict[str, int] = {}
    symbol = None
    for line in source.splitlines():
        match = re.match(r"TVM_DLL int32_t (\w+)\(.*\) \{$", line)
        if match:
            symbol = match.group(1)
            sizes[symbol] = 0
            continue
        request = re.search(r"TVMBackendAllocWorkspace\(\d+, \w+, \(uint64_t\)(\d+)ULL", line)
        if request and symbol is not None:
            sizes[symbol] += align(int(request.group(1)), ALIGNMENT)
    return sizes


def _call_sequence(graph: Graph, module: tvm.IRModule, kernels: tvm.IRModule, source: str,
                   workspaces: dict[str, int]) -> Kernels:
    main = module["main"]
    tensors: dict[str, Tensor] = {}
    constants: dict[str, np.ndarray] = {}
    constant_names: dict[str, str] = {}
    names: dict[relax.Var, str] = {}
    tuples: dict[relax.Var, list[str]] = {}  # a kernel with several outputs: its tuple's fields
    inputs = []
    for param, value in zip(main.params, graph.inputs):
        names[param] = value.name
        tensors[value.name] = Tensor(value.name, tuple(int(d) for d in value.shape), value.dtype)
        inputs.append(value.name)

    def argument(expr: relax.Expr) -> str:
        if isinstance(expr, tvm.ir.expr.GenericConst):
            array = expr.value.numpy()
            digest = hashlib.sha256(array.tobytes() + str((array.dtype, array.shape)).encode()).hexdigest()
            if digest not in constant_names:
                name = f"const{len(constants)}"
                constant_names[digest] = name
                constants[name] = array
            return constant_names[digest]
        if isinstance(expr, relax.Var) and expr in names:
            return names[expr]
        raise LoweringError(f"the C target cannot pass {type(expr).__name__} {expr} to a kernel yet")

    steps: list[Step] = []
    calls: list[Call] = []
    call_tir = tvm.ir.Op.get("relax.call_tir")
    result = None
    for block in main.body.blocks:
        for binding in block.bindings:
            value, var = binding.value, binding.var
            if isinstance(value, relax.Call) and value.op.same_as(call_tir):
                kernel = value.args[0]
                arguments = [argument(arg) for arg in value.args[1].fields]
                outputs = _output_names(var, value, tensors)
                if _returns_tuple(value):
                    tuples[var] = outputs
                else:
                    names[var] = outputs[0]
                symbol = f"__tvm_ffi_{kernel.name_hint}"
                func = kernels[kernel.name_hint]
                activation_inputs = tuple(dict.fromkeys(a for a in arguments if a not in constants))
                pairs = tuple(pair for pair in inplace_pairs(func, arguments, outputs) if pair[1] not in constants)
                steps.append(Step(
                    name=_name(var), kernel=kernel.name_hint, inputs=activation_inputs, outputs=tuple(outputs),
                    workspace=workspaces.get(symbol, 0), inplace=pairs,
                ))
                calls.append(Call(symbol, tuple(arguments) + tuple(outputs)))
            elif isinstance(value, relax.Var) and value in names:
                names[var] = names[value]
            elif isinstance(value, relax.Var) and value in tuples:
                tuples[var] = tuples[value]
            elif isinstance(value, relax.TupleGetItem) and value.tuple_value in tuples:
                names[var] = tuples[value.tuple_value][int(value.index)]
            elif isinstance(value, relax.Tuple):
                result = [argument(field) for field in value.fields]
                names[var] = _name(var)
            else:
                raise LoweringError(
                    f"the C target cannot run the Relax binding {_name(var)} = {type(value).__name__} yet "
                    "(only kernel calls are supported on microcontrollers)"
                )
    body_result = main.body.body
    if result is None or not (isinstance(body_result, relax.Var) and names.get(body_result) == _name(body_result)):
        raise LoweringError("main does not return a tuple of kernel outputs; the C target cannot run it")
    outputs = _rename_outputs(graph, result, tensors, steps, calls, inputs, constants)
    program = Program(tensors, tuple(steps), tuple(inputs), tuple(outputs), graph.name)
    return Kernels(program, calls, constants, source)


def _returns_tuple(call: relax.Call) -> bool:
    return isinstance(call.ty_args[0], relax.TupleType)


def _output_names(var: relax.Var, call: relax.Call, tensors: dict[str, Tensor]) -> list[str]:
    infos = call.ty_args[0]
    fields = list(infos.fields) if isinstance(infos, relax.TupleType) else [infos]
    names = []
    for index, info in enumerate(fields):
        name = _name(var) if len(fields) == 1 else f"{_name(var)}_{index}"
        base, suffix = name, 1
        while name in tensors:
            name, suffix = f"{base}_{suffix}", suffix + 1
        shape = tuple(int(dim) for dim in info.shape.values)
        tensors[name] = Tensor(name, shape, str(info.dtype))
        names.append(name)
    return names


def _rename_outputs(graph: Graph, result: list[str], tensors: dict[str, Tensor], steps: list[Step],
                    calls: list[Call], inputs: list[str], constants: dict[str, np.ndarray]) -> list[str]:
    """The graph's output names for the returned tensors (each must come from a kernel, once)."""
    if len(result) != len(graph.outputs):
        raise LoweringError(f"main returns {len(result)} values for {len(graph.outputs)} graph outputs")
    for name, value in zip(result, graph.outputs):
        if name in inputs or name in constants or result.count(name) > 1:
            raise LoweringError(
                f"output {value.name} is an input, a constant or another output; the C target needs every "
                "output computed by its own kernel (add an identity op or remove the output)"
            )
    renames = {old: new.name for old, new in zip(result, graph.outputs) if old != new.name}
    for old, new in renames.items():
        if new in tensors and new not in renames:
            raise LoweringError(f"output name {new} clashes with an intermediate tensor")
    if not renames:
        return list(result)

    def swap(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(renames.get(n, n) for n in names)

    for old, new in renames.items():
        tensor = tensors.pop(old)
        tensors[new] = Tensor(new, tensor.shape, tensor.dtype)
    for index, step in enumerate(steps):
        steps[index] = Step(step.name, step.kernel, swap(step.inputs), swap(step.outputs), step.workspace,
                            tuple((renames.get(o, o), renames.get(i, i)) for o, i in step.inplace),
                            step.inplace_workspace, step.window, step.macs)
        calls[index] = Call(calls[index].symbol, swap(calls[index].arguments))
    return [renames.get(name, name) for name in result]

def _name(var: relax.Var) -> str:
    name = getattr(var, "name_hint", None)
    return str(name if name is not None else var.name)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:400]
