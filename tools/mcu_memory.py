"""The memory planner's table for MobileNetV2 (width 0.35, 144x144, int8 activations).

    python -m optc.tools.mcu_memory [--width 0.35] [--size 144] [--sram 64] [--png memory.png]

MCUNetV2 publishes its figures for this family. The model is optc's zoo MobileNetV2 (plain
torch) captured and fused (conv + batch norm + ReLU6 per node); only shapes and element sizes
matter to the planner, and every activation counts as 1 byte (int8). The model input lives in
the caller's buffer (``model_run(const in*, out*)``), so the arena holds the intermediates.
Rows: TFLite Micro's greedy-by-size, optc's search, each without and with in-place depthwise
and residual aliasing, and the best patch-based plans under the SRAM budget.
"""

from __future__ import annotations

import argparse
import sys
import warnings

KB = 1024


def mobilenetv2_graph(width: float = 0.35, size: int = 144):
    """optc's zoo MobileNetV2 captured and fused (conv + batch norm + ReLU6 per node)."""
    import optc  # noqa: PLC0415
    from optc.passes import PassManager  # noqa: PLC0415
    from optc.tools import zoo  # noqa: PLC0415

    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    model, inputs = zoo.build("mobilenetv2", width_mult=width, image_size=size)
    graph = optc.capture(model, inputs)
    PassManager("cleanup,fuse", check_numerics=False).run(graph)
    return graph


def mobilenetv2_program(width: float = 0.35, size: int = 144, dtype: str = "int8"):
    """The planner's program of the fused MobileNetV2 with ``dtype`` activations."""
    from optc.backends.aot.from_graph import program_from_graph  # noqa: PLC0415

    return program_from_graph(mobilenetv2_graph(width, size), activation_dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.35)
    parser.add_argument("--size", type=int, default=144)
    parser.add_argument("--dtype", default="int8", help="activation dtype (int8: 1 byte per element)")
    parser.add_argument("--sram", type=int, default=64, help="SRAM budget in KB for the patch search")
    parser.add_argument("--png", help="also plot memory over time to this PNG")
    parser.add_argument("--layers", action="store_true", help="print the per-layer table too")
    args = parser.parse_args(argv)

    from optc.backends.aot.patching import search_patches  # noqa: PLC0415
    from optc.backends.aot.planner import plan_memory  # noqa: PLC0415
    from optc.backends.aot.report import format_table, plot_memory, step_table  # noqa: PLC0415

    program = mobilenetv2_program(args.width, args.size, args.dtype)
    print(f"MobileNetV2 width {args.width} at {args.size}x{args.size}, {args.dtype} activations: "
          f"{len(program.steps)} fused layers, {program.macs() / 1e6:.1f} M MACs")
    print(f"{'plan':<52} {'arena KB':>9} {'live-tensor bound KB':>21}")
    plans = {}
    for strategy, label in (("greedy", "TFLM greedy-by-size"), ("search", "optc search")):
        for inplace in (False, True):
            plan = plan_memory(program, strategy=strategy, inplace=inplace)
            name = f"{label}{', in-place depthwise + residual' if inplace else ', layer by layer'}"
            plans[name] = plan
            print(f"{name:<52} {plan.arena_size / KB:>9.1f} {plan.lower_bound / KB:>21.1f}")
    candidates = search_patches(program, args.sram * KB)
    fitting = [c for c in candidates if c.peak <= args.sram * KB]
    print(f"patch-based first stage, budget {args.sram} KB: {len(fitting)} of {len(candidates)} candidates fit; best:")
    for candidate in candidates[:5]:
        print(f"  {candidate.describe()}")
    if fitting:
        from optc.backends.aot.from_graph import program_from_graph  # noqa: PLC0415
        from optc.backends.aot.patch_graph import patch_graph  # noqa: PLC0415

        best = fitting[0]
        graph = mobilenetv2_graph(args.width, args.size)
        patched = program_from_graph(patch_graph(graph, best.split_tensor, best.grid), activation_dtype=args.dtype)
        for inplace in (False, True):
            plan = plan_memory(patched, inplace=inplace)
            name = f"patched graph as emitted, {'in-place' if inplace else 'layer by layer'}"
            print(f"{name:<52} {plan.arena_size / KB:>9.1f} {plan.lower_bound / KB:>21.1f}")
        print(f"  ({best.grid}x{best.grid} patches up to {best.split_tensor}: {len(patched.steps)} steps, "
              f"{patched.macs() / 1e6:.1f} M MACs, +{100 * (patched.macs() / program.macs() - 1):.1f}%)")
    if args.layers:
        print(format_table(step_table(program, plans["optc search, in-place depthwise + residual"])))
    if args.png:
        shown = {"layer by layer": plans["optc search, layer by layer"],
                 "in-place": plans["optc search, in-place depthwise + residual"]}
        plot_memory(program, shown, args.png, budget=args.sram * KB)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
