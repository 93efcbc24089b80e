"""The digits experiment, fast: a trained CNN, pruned, fine-tuned through ``to_torch`` and brought
back into optc, and a ViT through the same round trip with whole blocks dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optc.ir import verify
from optc.passes import available_passes
from optc.tools import digits

pytest.importorskip("sklearn")

NOISE = 0.02  # 7 of 360 test images


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_data(seed=0)


@pytest.fixture(scope="module")
def cnn(data) -> torch.nn.Module:
    return digits.train_model("cnn", data, seed=0, epochs=15)


def test_the_cnn_learns_digits(data, cnn):
    assert 10_000 <= sum(p.numel() for p in cnn.parameters()) <= 30_000
    graph = digits.capture_graph(cnn, data.train_images)
    verify(graph)
    predictions = digits.predict(graph, data.test_images)
    assert digits.accuracy(predictions, data.test_labels) > 0.90
    with torch.no_grad():
        from_torch = cnn(torch.from_numpy(data.test_images)).argmax(-1).numpy()
    assert np.mean(predictions == from_torch) > 0.995  # optc's graph is the torch model


@pytest.mark.skipif("slice" not in available_passes(), reason="the slice pass is not registered")
def test_sliced_cnn_fine_tunes_through_torch_and_comes_back(data, cnn):
    row, = digits.run_experiment("cnn", [0.3], method="slice", data=data, model=cnn, tune_epochs=3)
    assert row.reduction >= 0.25
    assert row.params < sum(p.numel() for p in cnn.parameters())
    assert row.accuracy_tuned >= row.accuracy_pruned - NOISE  # training never makes a pruned model worse
    assert row.accuracy_tuned > 0.8
    assert row.roundtrip_agreement == 1.0  # copied-back weights and the re-captured module agree
    assert "cnn" in digits.table([row]) and "30%" in digits.table([row])


def test_fine_tuning_an_unpruned_model_keeps_its_accuracy_and_round_trips_exactly(data, cnn):
    graph = digits.capture_graph(cnn, data.train_images)
    tuned, module = digits.fine_tune(graph, data, epochs=1, learning_rate=1e-4)
    verify(tuned)
    before = digits.accuracy(digits.predict(graph, data.test_images), data.test_labels)
    after = digits.accuracy(digits.predict(tuned, data.test_images), data.test_labels)
    assert after >= before - NOISE
    with torch.no_grad():
        logits = module(torch.from_numpy(data.test_images)).numpy()
    from optc.ir import interpret
    np.testing.assert_allclose(interpret(tuned, {"image": data.test_images})["logits"], logits, rtol=1e-4, atol=1e-4)
    assert any(not np.array_equal(tuned.params[v], graph.params[w]) for v, w in zip(tuned.params, graph.params))


def test_vit_with_blocks_dropped_fine_tunes_and_comes_back(data):
    vit = digits.train_model("vit", data, seed=0, epochs=8)
    row, = digits.run_experiment("vit", [0.3], method="drop_blocks", data=data, model=vit, tune_epochs=2)
    assert row.reduction >= 0.3
    assert row.accuracy_tuned >= row.accuracy_pruned - NOISE
    assert row.roundtrip_agreement == 1.0


def test_unknown_model_is_an_error_on_one_line(capsys):
    assert digits.main(["--model", "mlp", "--flops", "0"]) == 2
    assert "unknown digits model 'mlp'" in capsys.readouterr().err
