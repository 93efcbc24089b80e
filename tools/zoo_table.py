"""The README's zoo speed table from ``optc bench --json`` files (``tools/bench_zoo.sh``).

    python -m optc.tools.zoo_table bench/zoo-*.json

One row per model: median ms and effective GFLOP/s (the model's FLOPs / median) of every system,
optc's ratio to ONNX Runtime and to the fastest peer. Systems that were not measured show "-".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SYSTEMS = (("optc", "optc untuned"), ("optc tuned", "optc tuned"), ("ort", "ONNX Runtime"),
           ("torch", "torch eager"), ("torch-compile", "torch.compile"))


def _system(name: str) -> str:
    """bench names optc 'optc' alone, or 'optc[PIPELINE]' / 'optc[PIPELINE tuned]' next to a tuned build."""
    if name.startswith("optc"):
        return "optc tuned" if name.endswith(" tuned]") else "optc"
    return name


def rows(paths: list[Path]) -> list[str]:
    header = ["model", "GFLOP"] + [label for _, label in SYSTEMS] + ["optc / ORT", "optc / best peer"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for path in paths:
        data = json.loads(path.read_text())
        flops = data.get("flops") or 0
        medians = {_system(r["name"]): r["median_ms"] for r in data["results"] if r["runs"]}
        cells = [data["model"], f"{flops / 1e9:.2f}"]
        for key, _ in SYSTEMS:
            ms = medians.get(key)
            cells.append("-" if ms is None else f"{ms:.2f} ({flops / ms / 1e6:.0f})" if flops else f"{ms:.2f}")
        optc = min(ms for key, ms in medians.items() if key.startswith("optc")) if any(
            key.startswith("optc") for key in medians) else None
        peers = [ms for key, ms in medians.items() if not key.startswith("optc")]
        cells.append(f"{optc / medians['ort']:.2f}x" if optc and "ort" in medians else "-")
        cells.append(f"{optc / min(peers):.2f}x" if optc and peers else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optc.tools.zoo_table", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print("\n".join(rows(args.files)))
    print("\ncells: median ms (effective GFLOP/s); optc = the faster of its untuned and tuned builds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
