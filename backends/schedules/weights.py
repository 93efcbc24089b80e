"""Weights in the layout the kernels read, computed once when the model loads, not per run.

Weights reach the compiled ``main`` as parameters (the artifact stores them; the runtime passes
them in), so TVM's constant folding never sees them: a transpose of a tied weight or a packing
of a matrix would run on every call. Three passes fix that (``weight_passes``), around the
schedule rules:

``MarkWeightArgs`` (before the schedules)
    Before: ``main`` calls fused PrimFuncs; nothing says which arguments are weights.
    After: a PrimFunc whose argument ``p`` is, at every call site, a weight (a parameter of
    ``main`` after its ``num_input`` inputs, or computed from weights and constants only) carries
    ``optc.weight_args = [p, ...]``. The ``Matmul`` rule then packs such a ``B[K, N]`` operand
    as ``[N / nr, K, nr]`` (``sch.transform_layout`` on the PrimFunc's parameter), so each tile
    streams one contiguous panel instead of K rows strided by N, and records
    ``optc.packed_args = {p: nr}``.

``PackWeights`` (after the schedules)
    Before: ``call_tir(fused_matmul, (x, w, bias))`` with ``w: [K, N]`` but the PrimFunc now
    reading ``[N / nr, K, nr]``. After: ``w_packed = permute_dims(reshape(w, [K, N / nr, nr]),
    [1, 0, 2])`` emitted before the call and passed instead (legalized to TIR right away).

``relax.transform.LiftTransformParams`` (TVM's)
    Moves everything computed from weights alone (the packings above, transposed tied weights,
    masks built from constants) into ``main_transform_params``, which ``CompiledModel`` runs once
    when it loads the library; ``main`` then takes the transformed weights.

Only modules whose one Relax function is ``main`` are transformed (the multi-entry modules of
``compile_entries`` share weights across entries and keep the plain layout).
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.ir import IRModule

from ..lower.module import ENTRY

WEIGHT_ARGS_ATTR = "optc.weight_args"
PACKED_ARGS_ATTR = "optc.packed_args"
PACKED_ARG_ANNOTATION = "optc.packed_arg"  # on the block that reads the packed weight: [position, nr]
CALL_TIR = "relax.call_tir"


def single_main(mod: IRModule) -> relax.Function | None:
    functions = [(gvar, func) for gvar, func in mod.functions_items() if isinstance(func, relax.Function)]
    if len(functions) != 1 or functions[0][0].name_hint != ENTRY:
        return None
    func = functions[0][1]
    if func.attrs is None or "num_input" not in func.attrs:
        return None
    return func


def _weight_vars(func: relax.Function) -> set[relax.Var]:
    """Vars of ``func`` that hold weights or values computed from weights and constants only."""
    inputs = int(func.attrs["num_input"])
    weights: set[relax.Var] = set(func.params[inputs:])
    for binding in _bindings(func):
        used = relax.analysis.free_vars(binding.value)
        if all(var in weights for var in used) and not _calls_impure(binding.value):
            weights.add(binding.var)
    return weights


def _bindings(func: relax.Function) -> list[relax.VarBinding]:
    """The variable bindings of ``func``'s body, in order."""
    body = func.body
    return [binding for block in (body.blocks if isinstance(body, relax.SeqExpr) else [])
            for binding in block.bindings if isinstance(binding, relax.VarBinding)]


def _calls_impure(expr: relax.Expr) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name.startswith("relax.print")


def _call_tir_calls(func: relax.Function) -> list[relax.Call]:
    return [binding.value for binding in _bindings(func) if isinstance(binding.value, relax.Call)
            and isinstance(binding.value.op, tvm.ir.Op) and binding.value.op.name == CALL_TIR]


@tvm.transform.module_pass(opt_level=0, name="optc.MarkWeightArgs")
class MarkWeightArgs:
    """Mark the PrimFunc arguments that are weights at every call site (``optc.weight_args``)."""

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        main = single_main(mod)
        if main is None:
            return mod
        weights = _weight_vars(main)
        positions: dict[str, set[int] | None] = {}
        for call in _call_tir_calls(main):
            name = call.args[0].name_hint
            args = list(call.args[1].fields) if isinstance(call.args[1], relax.Tuple) else []
            here = {index for index, arg in enumerate(args) if isinstance(arg, relax.Var) and arg in weights}
            previous = positions.get(name, here)
            positions[name] = here & previous if previous is not None else None
        for gvar, func in list(mod.functions_items()):
            marked = positions.get(gvar.name_hint)
            if isinstance(func, tirx.PrimFunc) and marked:
                mod[gvar] = func.with_attr(WEIGHT_ARGS_ATTR, sorted(marked))
        return mod


def with_packed_args(sch: s_tir.Schedule) -> tirx.PrimFunc:
    """The scheduled func with ``optc.packed_args`` collected from its blocks' ``optc.packed_arg``
    annotations (what ``pack_weight`` wrote)."""
    func = sch.mod["main"]
    packed: dict[int, int] = {}
    pending = list(sch.get_child_blocks(sch.get_sblock("root")))
    while pending:  # blocks nest (loop_partition wraps its parts in blocks)
        block_rv = pending.pop()
        annotations = sch.get(block_rv).annotations
        if PACKED_ARG_ANNOTATION in annotations:
            position, nr = annotations[PACKED_ARG_ANNOTATION]
            packed[int(position)] = int(nr)
        pending.extend(sch.get_child_blocks(block_rv))
    return func.with_attr(PACKED_ARGS_ATTR, packed) if packed else func


def weight_arg(func: tirx.PrimFunc, buffer: tirx.Buffer) -> int | None:
    """The parameter position of ``buffer`` in ``func`` when ``MarkWeightArgs`` marked it a weight."""
    marked = func.attrs.get(WEIGHT_ARGS_ATTR) if func.attrs is not None else None
    if not marked:
        return None
    for index, param in enumerate(func.params):
        # TVM 0.27: a PrimFunc's params are the buffers themselves (no buffer_map)
        if param.same_as(buffer) or param.data.same_as(buffer.data):
            return index if index in {int(value) for value in marked} else None
    return None


@relax.expr_functor.mutator
class _Packer(relax.PyExprMutator):
    def __init__(self, mod: IRModule, renamed: dict[str, relax.GlobalVar]) -> None:
        super().__init__(mod)
        self.mod_ = mod
        self.renamed = renamed
        self.packed = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # pylint: disable=arguments-renamed
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == CALL_TIR):
            return call
        func = self.mod_[call.args[0]]
        packed = func.attrs.get(PACKED_ARGS_ATTR) if func.attrs is not None else None
        if not packed:
            return call
        args = list(call.args[1].fields)
        for position, nr in packed.items():
            position, nr = int(position), int(nr)
            weight = args[position]
            rows, columns = (int(dim) for dim in weight.ty.shape.values)
            if columns % nr:  # the kernel's layout pads the last panel with zeros
                weight = self.builder_.emit(relax.op.nn.pad(weight, [0, 0, 0, nr - columns % nr]))
                columns += nr - columns % nr
            blocked = self.builder_.emit(relax.op.reshape(weight, (rows, columns // nr, nr)))
            args[position] = self.builder_.emit(relax.op.permute_dims(blocked, [1, 0, 2]))
            self.packed += 1
        callee = self.renamed[call.args[0].name_hint]
        return relax.Call(call.op, [callee, relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args)


@tvm.transform.module_pass(opt_level=0, name="optc.PackWeights")
class PackWeights:
    """Feed the packed layout the schedules chose (``optc.packed_args``) to their call sites."""

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        main = single_main(mod)
        if main is None:
            return mod
        # a packed PrimFunc's signature changed, but a GlobalVar keeps the type of the function it
        # was first added with (call_tir checks its arguments against it, and it cannot be updated):
        # packed functions get fresh GlobalVars of the new type
        renamed = {}
        for old_gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and func.attrs is not None and PACKED_ARGS_ATTR in func.attrs:
                renamed[old_gvar.name_hint] = relax.GlobalVar(old_gvar.name_hint)
                relax.expr._update_type(renamed[old_gvar.name_hint], func.ty)  # pylint: disable=protected-access
        if not renamed:
            return mod
        packer = _Packer(mod, renamed)
        gvar = mod.get_global_var(ENTRY)
        rewritten = packer.visit_expr(main)
        if not packer.packed:
            return mod
        functions = {renamed.get(old.name_hint, old): func for old, func in mod.functions_items()}
        functions[gvar] = rewritten
        mod = IRModule(functions, attrs=mod.attrs)
        return relax.transform.LegalizeOps()(mod)


@tvm.transform.module_pass(opt_level=0, name="optc.LiftWeights")
class LiftWeights:
    """TVM's ``LiftTransformParams`` on a single-``main`` module (others are left alone)."""

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        main = single_main(mod)
        if main is None or _returns_weights(main):
            return mod
        return relax.transform.LiftTransformParams()(mod)


def _returns_weights(func: relax.Function) -> bool:
    """Whether an output of ``func`` is computed from weights alone: ``LiftTransformParams`` then
    leaves ``main`` returning a variable it moved away (TVM 0.27: "Var gv is not defined")."""
    weights = _weight_vars(func)
    body = func.body
    result = body.body if isinstance(body, relax.SeqExpr) else body
    bound = {binding.var: binding.value for binding in _bindings(func)}
    while isinstance(result, relax.Var) and result in bound and result not in weights:
        result = bound[result]
    fields = result.fields if isinstance(result, relax.Tuple) else [result]
    return any(isinstance(field, relax.Var) and field in weights for field in fields)


def mark_passes() -> list[tvm.transform.Pass]:
    """What runs before the schedule rules."""
    return [MarkWeightArgs()]


def pack_passes() -> list[tvm.transform.Pass]:
    """What runs after them: the packings at the call sites, then everything weight-only lifted."""
    return [PackWeights(), LiftWeights()]
