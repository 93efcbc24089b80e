"""The microcontroller table of the README: each model compiled for ``--target mcu``, run under QEMU.

    python -m optc.tools.mcu_report            # every row (about 2 minutes on 2 cores)
    python -m optc.tools.mcu_report --quick    # the small rows only

Each row: arena (planned), stack (``-fstack-usage``), flash (``arm-none-eabi-size``), instructions
(QEMU ``-icount shift=0`` read with SysTick) and the largest difference to optc's reference
interpreter (int8 rows compare every tensor bit for bit). Needs gcc-arm-none-eabi,
libnewlib-arm-none-eabi and qemu-system-arm.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

KB = 1024


class SmallCnn(nn.Module):
    """conv-bn-relu, depthwise, 1x1 with a residual add, max pool, linear: every kind of step."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.classifier = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.conv(x)))
        z = self.pointwise(torch.relu(self.depthwise(y))) + y
        return self.classifier(nn.functional.max_pool2d(z, 2).flatten(1))


def small_cnn():
    """The SmallCnn (seeded, batch-norm statistics set) captured and fused; input "image" 1x1x8x8."""
    import optc  # noqa: PLC0415
    from optc.passes import PassManager  # noqa: PLC0415

    torch.manual_seed(0)
    model = SmallCnn().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    graph = optc.capture(model, (torch.randn(1, 1, 8, 8),), input_names=["image"], output_names=["logits"])
    PassManager("cleanup,fuse").run(graph)
    return graph


def zoo_graph(name: str, **options):
    import optc  # noqa: PLC0415
    from optc.passes import PassManager  # noqa: PLC0415
    from optc.tools import zoo  # noqa: PLC0415

    model, inputs = zoo.build(name, **options)
    graph = optc.capture(model, inputs)
    PassManager("cleanup,fuse", check_numerics=False).run(graph)
    return graph


def quantized(graph, calibration: int = 4):
    """``graph`` through issue 4's static int8 pass, calibrated on seeded normal images."""
    from optc.passes import PassManager  # noqa: PLC0415
    from optc.passes.quant import Quantize  # noqa: PLC0415

    rng = np.random.default_rng(0)
    value = graph.inputs[0]
    feeds = [{value.name: rng.standard_normal(value.shape).astype(np.float32)} for _ in range(calibration)]
    result = graph.clone()
    PassManager([Quantize(feeds=feeds)], check_numerics=False).run(result)
    return result


def row(label: str, graph, mcpu: str = "cortex-m4", sram_kb: int | None = None) -> str:
    from optc.backends.targets import get_target  # noqa: PLC0415
    from optc.ir.interpret import interpret, sample_inputs  # noqa: PLC0415

    feeds = sample_inputs(graph, seed=0)
    expected = interpret(graph, feeds)
    compiled = get_target("mcu", mcpu=mcpu, sram_kb=sram_kb).compile_graph(graph)
    outputs, stats = compiled.run_qemu(feeds)
    exact = all(np.array_equal(outputs[name], expected[name]) for name in expected)
    error = max(float(np.abs(outputs[name].astype(np.float64) - expected[name]).max()) for name in expected)
    patches = compiled.memory.get("patch_plan") or {}
    patched = (f"{patches['grid']}x{patches['grid']} patches, +{100 * patches['extra_macs'] / patches['macs']:.1f}% MACs"
               if patches.get("emitted") else "-")
    return (f"| {label} | {mcpu} ({stats['board']}) | {compiled.memory['arena_bytes'] / KB:.1f} | "
            f"{(stats['stack_bytes'] or 0) / KB:.1f} | {stats['flash_bytes'] / KB:.0f} | {stats['instructions']:,} | "
            f"{'bit exact' if exact else f'{error:.1e}'} | {patched} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the small models")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    print("| model | core (QEMU board) | arena KB | stack KB | flash KB | instructions | max abs error | patches |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    cnn = small_cnn()
    rows = [("test CNN fp32", cnn, "cortex-m4", None), ("test CNN int8", quantized(cnn), "cortex-m4", None)]
    tiny = zoo_graph("mobilenetv2", size="tiny")
    rows += [("MobileNetV2 w0.25 32x32 fp32", tiny, mcpu, None) for mcpu in ("cortex-m4", "cortex-m7", "cortex-m55")]
    rows.append(("MobileNetV2 w0.25 32x32 fp32, --sram 40", tiny, "cortex-m4", 40))
    if not args.quick:
        big = zoo_graph("mobilenetv2", width_mult=0.35, image_size=144, classes=10)
        rows += [("MobileNetV2 w0.35 144x144 fp32", big, "cortex-m4", None),
                 ("MobileNetV2 w0.35 144x144 fp32, --sram 240", big, "cortex-m4", 240),
                 ("MobileNetV2 w0.35 144x144 int8", quantized(big), "cortex-m4", None)]
    for label, graph, mcpu, sram_kb in rows:
        started = time.perf_counter()
        print(row(label, graph, mcpu, sram_kb), flush=True)
        print(f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
