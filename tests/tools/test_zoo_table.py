"""The README's zoo table from bench JSON: GFLOP/s per system, ratios to ORT and to the best peer."""

from __future__ import annotations

import json

from optc.tools.zoo_table import rows


def test_table_rates_and_ratios(tmp_path):
    result = lambda name, ms: {"name": name, "median_ms": ms, "runs": 5}  # noqa: E731
    path = tmp_path / "zoo-gpt2_full.json"
    path.write_text(json.dumps({"model": "gpt2:full", "flops": 4_000_000_000, "results": [
        result("optc[cleanup,fuse]", 20.0), result("optc[cleanup,fuse tuned]", 16.0), result("ort", 32.0),
        result("torch", 80.0), result("torch-compile", 10.0), {"name": "torch-x", "median_ms": float("nan"), "runs": 0}]}))
    header, _, row = rows([path])
    assert "optc tuned" in header and "torch.compile" in header
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:3] == ["gpt2:full", "4.00", "20.00 (200)"]  # 4 GFLOP in 20 ms = 200 GFLOP/s
    assert cells[3] == "16.00 (250)" and cells[5] == "80.00 (50)"
    assert cells[-2:] == ["0.50x", "1.60x"]  # best optc (tuned, 16) / ORT 32; / torch.compile 10
