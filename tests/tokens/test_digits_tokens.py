"""The digits token experiment runs end to end on an untrained model (training is left to the tool)."""

from __future__ import annotations

import math

import torch

from optc.passes import available_passes
from optc.tools.digits import load_data
from optc.tools.digits_tokens import DigitsTokenViT, run_experiment, table


def test_tokens_is_a_listed_pass():
    assert "tokens" in available_passes()


def test_experiment_rows_report_schedules_flops_and_agreement():
    torch.manual_seed(0)
    data = load_data(0)
    rows = run_experiment((0.25,), ("tokens(merge, r=8)", "tokens(merge, flops={flops})", "tokens(merge, flops=0.99)"),
                          data=data, model=DigitsTokenViT().eval())
    merge_r8, merge_target, unreachable = rows
    assert merge_r8.tokens == [57, 49, 41, 33]
    assert merge_target.reduction >= 0.25
    assert 0.0 <= merge_target.agreement <= 1.0 and 0.0 <= merge_target.accuracy <= 1.0
    assert unreachable.error and math.isnan(unreachable.accuracy)  # reported, not raised
    text = table(rows)
    assert "57/49/41/33" in text and "not reachable" in text
