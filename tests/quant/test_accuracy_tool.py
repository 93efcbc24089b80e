"""tools/quant_accuracy.py on its language model, briefly trained: every scheme runs and reports."""

from __future__ import annotations

from optc.tools import quant_accuracy


def test_lm_rows_cover_every_scheme_with_the_expected_sizes() -> None:
    task = quant_accuracy.lm_task(seed=0, steps=40)
    rows = quant_accuracy.evaluate(task, group=128)
    by_scheme = {row.scheme: row for row in rows}
    assert list(by_scheme) == list(quant_accuracy.schemes(128))
    assert by_scheme["float"].output_error == 0.0
    # the LM is almost all linear weights: int8 ~4x, packed int4 ~7x smaller artifacts
    assert 3.5 < by_scheme["int8 static"].ratio < 4.0
    assert 6.5 < by_scheme["w4 RTN g128"].ratio < 7.5
    assert by_scheme["w4 GPTQ g128"].output_error < by_scheme["w4 RTN g128"].output_error
    for row in rows:
        assert row.metric < 1.5 * by_scheme["float"].metric  # perplexity stays near float's
    assert "perplexity" in quant_accuracy.table(rows)
